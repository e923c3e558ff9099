"""The decision of `recipe sweep`: which variants are distinguishable from the best one, with training noise in view.

Each variant is a group of runs (one per seed), each evaluated on the same held-out items. A variant's value is the
metric over its seeds' per-item scores averaged per item (perplexity: from the summed log-likelihoods, as lm-eval
computes it). Against the best variant, the difference gets a 95% interval from a two-level paired bootstrap: each
iteration resamples the items (the same items for every variant: paired) and, within each variant, its seeds, so
the interval covers both the sampling of the eval items and the spread between training runs. A variant whose
interval excludes 0 on the worse side is "worse, interval excludes 0"; any other is "indistinguishable from best".
With one seed per variant only the items are resampled: the interval then knows nothing of training noise, and
sweep.md says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runner.decide import items as it
from runner.runs.eval_summary import BOOTSTRAP_ITERS, SEED
from runner.runs.sweep_file import Decision, SweepFile, VariantRow

BEST, SAME, WORSE, MISSING = "best", "indistinguishable from best", "worse, interval excludes 0", "not evaluated"


@dataclass
class Scores:
    """One variant's per-seed, per-item figures on the shared items: scores [seeds, items] (a generation metric), or
    log-likelihoods [seeds, items] with the items' token counts (perplexity)."""

    values: np.ndarray
    tokens: np.ndarray | None = None

    def value(self, seeds: np.ndarray | None = None, picked: np.ndarray | None = None) -> float:
        rows = self.values if seeds is None else self.values[seeds]
        rows = rows if picked is None else rows[:, picked]
        per_item = rows.mean(axis=0)
        if self.tokens is None:
            return float(per_item.mean())
        tokens = self.tokens if picked is None else self.tokens[picked]
        return math.exp(-float(per_item.sum()) / float(tokens.sum()))


def _rows(data: it.RunData, task: str) -> dict:
    return {r.doc_id: r for r in data.samples.get(task, [])}


def scores_of(groups: dict[str, list[it.RunData]], metric: str) -> tuple[dict[str, Scores], int]:
    """Every evaluated variant's Scores on the items all its runs and all other variants' runs answered with the
    same prompt; (scores by variant, number of items)."""
    task, key = it.task_and_key(metric)
    tables = {name: [_rows(d, task) for d in runs] for name, runs in groups.items() if runs}
    every = [t for group in tables.values() for t in group]
    if not every:
        return {}, 0
    shared = set(every[0]).intersection(*every[1:])
    prompt = {d: every[0][d].prompt for d in shared}
    ids = sorted((d for d in shared if all(t[d].prompt == prompt[d] for t in every)), key=lambda d: (str(type(d)), d))
    out = {}
    for name, group in tables.items():
        if metric == "perplexity":
            values = np.array([[t[d].loglikelihood for d in ids] for t in group], dtype=float)
            tokens = np.array([group[0][d].tokens for d in ids], dtype=float)
            out[name] = Scores(values, tokens)
        else:
            out[name] = Scores(np.array([[(t[d].scores or {}).get(key, np.nan) for d in ids] for t in group],
                                        dtype=float))
    return out, len(ids)


def two_level_intervals(scores: dict[str, Scores], best: str, iters: int = BOOTSTRAP_ITERS,
                        seed: int = SEED) -> dict[str, list[float]]:
    """95% interval of (variant - best) per variant: items resampled jointly (paired), seeds within each variant."""
    rng = np.random.default_rng(seed)
    n_items = next(iter(scores.values())).values.shape[1]
    names = list(scores)
    draws = {name: np.empty(iters) for name in names}
    for b in range(iters):
        picked = rng.integers(0, n_items, n_items)
        values = {name: s.value(rng.integers(0, s.values.shape[0], s.values.shape[0]), picked)
                  for name, s in scores.items()}
        for name in names:
            draws[name][b] = values[name] - values[best]
    return {name: [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))] for name, d in draws.items()}


def decide(sweep: SweepFile, groups: dict[str, list[it.RunData]]) -> Decision:
    """The decision table of a sweep whose evaluated runs are `groups` (variant name -> its runs' data)."""
    metric = sweep.metric
    every = [d for runs in groups.values() for d in runs]
    up = it.higher_is_better(metric, every) if every else True
    scores, n_items = scores_of(groups, metric)
    rows = []
    if not scores or n_items == 0:
        return Decision(metric=metric, higher_is_better=up, bootstrap_iters=BOOTSTRAP_ITERS,
                        rows=[VariantRow(variant=v.name, verdict=MISSING) for v in sweep.variants])
    means = {name: s.value() for name, s in scores.items()}
    best = (max if up else min)(means, key=lambda name: means[name])
    intervals = two_level_intervals(scores, best)
    for variant in sweep.variants:
        if variant.name not in scores:
            rows.append(VariantRow(variant=variant.name, verdict=MISSING))
            continue
        per_seed = [d.metrics[metric].value for d in groups[variant.name] if metric in d.metrics]
        spread, _ = it.seed_spread(per_seed)
        delta, ci = means[variant.name] - means[best], intervals[variant.name]
        worse = (ci[1] < 0) if up else (ci[0] > 0)
        verdict = BEST if variant.name == best else WORSE if worse else SAME
        rows.append(VariantRow(variant=variant.name, mean=means[variant.name], seed_sd=spread,
                               seeds=len(groups[variant.name]), n_items=n_items, delta=delta,
                               ci95=None if variant.name == best else ci, verdict=verdict))
    return Decision(metric=metric, higher_is_better=up, best=best, bootstrap_iters=BOOTSTRAP_ITERS, rows=rows)


def markdown(sweep: SweepFile, plot: str | None) -> str:
    """sweep.md: the decision table, the overrides, the runs, the loss picture and the cost."""
    d = sweep.decision
    lines = [f"# Sweep of {sweep.recipe}", ""]
    fixed = f" with {' '.join(f'`{o}`' for o in sweep.fixed)}" if sweep.fixed else ""
    seeds = f"seeds {', '.join(map(str, sweep.seeds))}" if sweep.seeds else "the recipe's own seed"
    what = f"{len(sweep.variants)} variants" if sweep.search == "grid" else (
        f"{len(sweep.variants)} distinct trials of an Optuna search ({sweep.trials} asked) over "
        + ", ".join(f"`{key}={','.join(values)}`" for key, values in sweep.axes.items()))
    lines += [f"{what}{fixed}, each trained with {seeds}; metric `{sweep.metric}` "
              f"({'higher' if d is None or d.higher_is_better else 'lower'} is better).", ""]
    if d is not None and d.rows:
        lines += ["| variant | seeds | mean ± seed sd | Δ vs best (95% CI) | verdict |", "|---|---:|---:|---:|---|"]
        for r in d.rows:
            mean = "—" if r.mean is None else f"{r.mean:.4f}" + ("" if r.seed_sd is None else f" ± {r.seed_sd:.4f}")
            delta = "—" if r.ci95 is None else f"{r.delta:+.4f} [{r.ci95[0]:+.4f}, {r.ci95[1]:+.4f}]"
            lines.append(f"| `{r.variant}` | {r.seeds} | {mean} | {delta} | {r.verdict} |")
        n = max((r.n_items for r in d.rows), default=0)
        lines += ["", f"The interval is a two-level paired bootstrap ({d.bootstrap_iters} draws) over the {n} items "
                  "every run answered and over each variant's seeds, so it covers both the eval items and training "
                  "noise." + ("" if sweep.seeds and len(sweep.seeds) > 1 else " With one seed per variant it covers "
                              "the items only: train with `--seeds 1,2,3` to see the training noise.")]
    lines += ["", "## Runs", "", "| variant | seed | run | status |", "|---|---:|---|---|"]
    for v in sweep.variants:
        for r in v.runs:
            status = r.status + (f": {r.error}" if r.error else "")
            lines.append(f"| `{v.name}` | {'' if r.seed is None else r.seed} | {r.run_id or '—'} | {status} |")
    if plot:
        lines += ["", f"![Loss of every run]({plot})"]
    if sweep.cost_s is not None:
        lines += ["", f"Cost: {sweep.cost_s / 3600:.3f} device-hours of training and evaluation on this machine "
                  "(the runs' own timings)."]
    e = sweep.estimate
    if e is not None and e.hours is not None:
        money = f", ${e.cost_usd:,.2f}" if e.cost_usd is not None else ""
        gpu = f" ({e.gpu_hours:.3f} GPU-hours{money})" if e.gpu_hours else ""
        lines.append(f"`recipe fit` estimates {e.hours:.3f} h of training for these {e.runs} runs on the recipe's "
                     f"profile ({e.device}){gpu}.")
    elif e is not None:
        lines.append(f"`recipe fit` gives no estimate: {e.note}.")
    return "\n".join(lines) + "\n"


def evidence(sweep: SweepFile, chosen: str, where: str, today: str) -> list[str]:
    """The comment `--pick` writes above each value it changes: what was chosen, on what figures, where to look."""
    from runner.recipe.edit import CONTINUED, PICKED

    rows = {r.variant: r for r in sweep.decision.rows}
    row = rows[chosen]
    spread = "" if row.seed_sd is None else f" ± {row.seed_sd:.4f} seed sd"
    against = "" if row.ci95 is None else \
        f" ({row.delta:+.4f} [{row.ci95[0]:+.4f}, {row.ci95[1]:+.4f}] against the best)"
    lines = [f"{PICKED} on {today}: {chosen}, {sweep.metric} {row.mean:.4f}{spread} over {row.seeds} seed(s), "
             f"{row.verdict}{against}"]
    for other in sweep.decision.rows:
        if other.variant == chosen:
            continue
        if other.ci95 is None or other.delta is None:
            lines.append(f"{CONTINUED}{other.variant}: {other.verdict}")
        else:
            lines.append(f"{CONTINUED}{other.variant}: {other.delta:+.4f} [{other.ci95[0]:+.4f}, {other.ci95[1]:+.4f}] "
                         f"against the best, {other.verdict}")
    return [*lines, f"{CONTINUED}evidence: {where}"]
