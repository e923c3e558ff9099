"""Paired statistics for base-vs-fine-tuned comparisons on the same items: bootstrap CI, sign test, summary."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

_CHUNK_CELLS = 4_000_000  # resample index cells generated at once (bounds memory for big n * iters)


def _paired(base: Sequence[float], finetuned: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(base, dtype=float)
    f = np.asarray(finetuned, dtype=float)
    if b.ndim != 1 or f.ndim != 1:
        raise ValueError("scores must be flat lists of numbers")
    if len(b) != len(f):
        raise ValueError(f"paired scores differ in length: base has {len(b)}, finetuned has {len(f)}")
    if len(b) == 0:
        raise ValueError("no items to compare")
    return b, f


def paired_bootstrap(base: Sequence[float], finetuned: Sequence[float], iters: int = 10000, seed: int = 0) -> dict:
    """Means, delta (finetuned - base) and a 95% percentile CI of the mean delta, resampling items jointly."""
    b, f = _paired(base, finetuned)
    diff = f - b
    out = {"base": float(b.mean()), "finetuned": float(f.mean()), "delta": float(diff.mean()), "n": len(diff),
           "ci95": None}
    if iters < 0:
        raise ValueError("iters must be >= 0")
    if iters == 0:
        return out
    out["ci95"] = bootstrap_ci(lambda idx: diff[idx].mean(axis=1), len(diff), iters, seed)
    return out


def bootstrap_ci(statistic: Callable[[np.ndarray], np.ndarray], n: int, iters: int = 10000,
                 seed: int = 0) -> list[float]:
    """95% percentile interval of statistic over `iters` resamples of n items with replacement.

    statistic maps a (k, n) array of item indices (the same indices for every side: paired) to k values."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_CELLS // n)
    values = np.empty(iters)
    for start in range(0, iters, rows):
        k = min(rows, iters - start)
        values[start:start + k] = statistic(rng.integers(0, n, size=(k, n)))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _binom_two_sided_exact(k: int, n: int) -> float:
    """Exact two-sided binomial p-value for k successes in n trials at p=0.5 (math.comb)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1))
    return min(1.0, 2 * tail / 2**n)


def _binom_two_sided(k: int, n: int) -> float:
    """Two-sided binomial p-value at p=0.5: scipy.stats.binomtest when available, else exact math.comb."""
    if n == 0:
        return 1.0
    try:
        from scipy.stats import binomtest
    except ImportError:  # pragma: no cover - scipy is installed in the project venv
        return _binom_two_sided_exact(k, n)
    return float(min(1.0, binomtest(k, n, 0.5, alternative="two-sided").pvalue))


def sign_test(base: Sequence[float], finetuned: Sequence[float]) -> dict:
    """Per-item wins/losses/ties for finetuned vs base and the exact two-sided sign-test p-value (ties dropped)."""
    b, f = _paired(base, finetuned)
    wins = int(np.sum(f > b))
    losses = int(np.sum(f < b))
    ties = len(b) - wins - losses
    return {"wins": wins, "losses": losses, "ties": ties, "p_value": _binom_two_sided(wins, wins + losses)}


def summarize(base_scores: dict[str, list[float]], ft_scores: dict[str, list[float]],
              iters: int = 10000, seed: int = 0) -> dict[str, dict]:
    """Per metric: {"base", "finetuned", "delta", "ci95", "n", "p_sign"}, floats rounded to 6 decimals."""
    if set(base_scores) != set(ft_scores):
        raise ValueError(f"metric names differ: base has {sorted(base_scores)}, finetuned has {sorted(ft_scores)}")
    summary: dict[str, dict] = {}
    for name in sorted(base_scores):
        base, ft = base_scores[name], ft_scores[name]
        if len(base) != len(ft):
            raise ValueError(f"metric {name!r}: base has {len(base)} items, finetuned has {len(ft)}")
        boot = paired_bootstrap(base, ft, iters=iters, seed=seed)
        sign = sign_test(base, ft)
        summary[name] = {
            "base": _r(boot["base"]),
            "finetuned": _r(boot["finetuned"]),
            "delta": _r(boot["delta"]),
            "ci95": None if boot["ci95"] is None else [_r(x) for x in boot["ci95"]],
            "n": boot["n"],
            "p_sign": _r(sign["p_value"]),
        }
    return summary


def _r(x: float) -> float:
    value = round(float(x), 6)
    return 0.0 if value == 0 else value  # no "-0.0" in JSON
