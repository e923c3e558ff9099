"""Bradley-Terry ranking of candidates from pairwise judge verdicts, with bootstrap intervals over items.

P(i beats j) = p_i / (p_i + p_j). Strengths are fitted by Hunter's MM algorithm (2004) on the score matrix
(a win counts 1, a tie 1/2 to each side) and reported as log-strengths with mean 0. `prior` adds that many
virtual games, tied, to every pair: it keeps a candidate that won (or lost) everything finite, which a bootstrap
resample of a few items makes common; fit(prior=0) is the plain maximum-likelihood estimate.
"""
from __future__ import annotations

import numpy as np

PRIOR = 1.0  # virtual tied games per pair (half a win each way)
ITERS = 500  # bootstrap resamples


def fit(scores: np.ndarray, prior: float = PRIOR, max_iter: int = 10_000, tol: float = 1e-10) -> np.ndarray:
    """Log-strengths (mean 0) from scores[i, j] = points i took from j (wins + ties / 2)."""
    w = np.asarray(scores, dtype=float).copy()
    m = len(w)
    w += (prior / 2) * (1 - np.eye(m))
    games = w + w.T
    total = w.sum(axis=1)
    if np.any(total <= 0):
        raise ValueError("a candidate scored no points; Bradley-Terry needs prior > 0 for it")
    p = np.ones(m)
    for _ in range(max_iter):
        denominator = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = total / denominator
        new /= np.exp(np.log(new).mean())  # geometric mean 1: the scale is not identified
        done = np.max(np.abs(new - p)) < tol
        p = new
        if done:
            break
    return np.log(p)


def per_item_scores(outcomes: list[tuple[int, int, int, float]], n_items: int, m: int) -> np.ndarray:
    """(n_items, m, m) points from (item, a, b, score of a) verdicts: score 1 win, 0.5 tie, 0 loss."""
    out = np.zeros((n_items, m, m))
    for item, a, b, score in outcomes:
        out[item, a, b] += score
        out[item, b, a] += 1 - score
    return out


def rank(names: list[str], item_scores: np.ndarray, iters: int = ITERS, seed: int = 0,
         prior: float = PRIOR) -> list[dict]:
    """[{candidate, strength, ci95}] best first; the interval resamples items (all their verdicts together)."""
    theta = fit(item_scores.sum(axis=0), prior)
    n = len(item_scores)
    ci = None
    if iters and n:
        rng = np.random.default_rng(seed)
        draws = np.array([fit(item_scores[rng.integers(0, n, n)].sum(axis=0), prior) for _ in range(iters)])
        ci = np.percentile(draws, [2.5, 97.5], axis=0).T
    entries = [{"candidate": name, "strength": round(float(theta[i]), 6),
                "ci95": None if ci is None else [round(float(x), 6) for x in ci[i]]} for i, name in enumerate(names)]
    return sorted(entries, key=lambda e: -e["strength"])
