"""Per-item scores of one side (a run, or a seed group averaged per item) and the statistics over them: a side's
value with the spread between seeds, the paired interval of one side against another over the items both answered
(same doc_id and the same prompt), the interval of one side's own value, and the items that flipped.

Only what every evaluated run has is read: eval/summary.json and the fine-tuned model's eval/samples-finetuned-*.jsonl.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runner.decide.runs_select import Side
from runner.evaluate import scoring, stats
from runner.metrics import registry
from runner.runs.eval_summary import BOOTSTRAP_ITERS, SEED, CandidateMetric, EvalSummary
from runner.runs.manifest import Manifest
from runner.runs.records import SampleRow, read_rows
from runner.runs.rundir import RunDir

GENERATE_TASK, PERPLEXITY_TASK = scoring.GENERATE_TASK, scoring.PERPLEXITY_TASK
SIDE = "finetuned"  # each run is represented by its own fine-tuned model's answers


@dataclass
class RunData:
    run: RunDir
    manifest: Manifest
    summary: EvalSummary
    samples: dict[str, list[SampleRow]] = field(default_factory=dict)  # task -> rows of the fine-tuned model
    side: str = SIDE  # the candidate whose answers these are (a gate may name another: export:gguf-q8_0)

    @property
    def metrics(self) -> dict[str, CandidateMetric]:
        """The run's own metrics: its fine-tuned model's (value), as summary.json's finetuned candidate holds them
        (or the named side's)."""
        own = self.summary.candidates.get(self.side)
        return own.metrics if own is not None else {}


def load_run(run: RunDir, side: str = SIDE) -> RunData:
    """A run's summary and the per-item rows of one of its candidates (by label; default its fine-tuned model)."""
    summary = EvalSummary.read(run.summary_path)
    data = RunData(run, run.manifest(), summary, side=side)
    slug = summary.candidates[side].slug if side in summary.candidates else SIDE
    if side in summary.candidates or side == SIDE:
        for task, path in run.samples_files(slug).items():
            data.samples[task] = read_rows(path, SampleRow, strict=False)[0]
    return data


def task_and_key(metric: str) -> tuple[str, str]:
    """Where a summary.json metric's per-item scores are: (samples task, score key)."""
    if metric == "perplexity":
        return PERPLEXITY_TASK, "perplexity"
    if "/" in metric:
        task, key = metric.split("/", 1)
        return task, key
    return GENERATE_TASK, metric


def higher_is_better(metric: str, runs: list[RunData]) -> bool:
    recorded = next((m.higher_is_better for data in runs if (m := data.metrics.get(metric)) is not None
                     and m.higher_is_better is not None), None)
    return registry.higher_is_better(metric, recorded)


@dataclass
class Items:
    """One side's items for one task: per doc_id the prompt, reference, the first run's answer, and the scores
    (averaged over the side's runs; items not answered by every run of the side are left out)."""

    prompt: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    answer: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)  # doc_id -> {key: mean score}
    loglikelihood: dict = field(default_factory=dict)  # perplexity task: doc_id -> (mean loglikelihood, tokens)


def side_items(runs: list[RunData], task: str) -> Items:
    items = Items()
    tables = [{r.doc_id: r for r in data.samples.get(task, [])} for data in runs]
    if not tables or not tables[0]:
        return items
    common = set(tables[0]).intersection(*tables[1:])
    for doc_id in sorted(common, key=lambda d: (str(type(d)), d)):
        rows = [t[doc_id] for t in tables]
        if any(r.prompt != rows[0].prompt for r in rows):
            continue  # the seeds of a group answered different prompts for this id: not one item
        first = rows[0]
        items.prompt[doc_id], items.reference[doc_id] = first.prompt, first.reference
        items.answer[doc_id] = first.answer
        keys = set.intersection(*(set(r.scores or {}) for r in rows))
        items.scores[doc_id] = {k: float(np.mean([r.scores[k] for r in rows])) for k in keys}
        if all(r.loglikelihood is not None and r.tokens is not None for r in rows):
            items.loglikelihood[doc_id] = (float(np.mean([r.loglikelihood for r in rows])), first.tokens)
    return items


def shared_ids(a: Items, b: Items) -> tuple[list, int]:
    """doc_ids both sides answered with the same prompt, and how many ids they share whose prompts differ."""
    common = [d for d in a.prompt if d in b.prompt]
    same = [d for d in common if a.prompt[d] == b.prompt[d]]
    return same, len(common) - len(same)


def seed_spread(values: list[float | None]) -> tuple[float | None, list[float] | None]:
    """Standard deviation (n-1) and [min, max] of a side's per-run values; None for a single run."""
    numbers = [v for v in values if v is not None]
    if len(numbers) < 2:
        return None, None
    return rounded(float(np.std(numbers, ddof=1))), [rounded(min(numbers)), rounded(max(numbers))]


def paired(metric: str, ref: Items, other: Items, ids: list) -> dict | None:
    """{delta, ci95, n, p_sign} of (other - ref) over the shared ids; None when they share none."""
    if not ids:
        return None
    _, key = task_and_key(metric)
    if metric == "perplexity":
        ids = [d for d in ids if d in ref.loglikelihood and d in other.loglikelihood]
        if not ids:
            return None
        rows = [[{"loglikelihood": side.loglikelihood[d][0], "tokens": side.loglikelihood[d][1]} for d in ids]
                for side in (ref, other)]
        out = scoring.perplexity_summary(*rows)
        return {k: out[k] for k in ("delta", "ci95", "n", "p_sign")}
    ids = [d for d in ids if key in ref.scores[d] and key in other.scores[d]]
    if not ids:
        return None
    out = stats.summarize({key: [ref.scores[d][key] for d in ids]}, {key: [other.scores[d][key] for d in ids]},
                          iters=BOOTSTRAP_ITERS, seed=SEED)[key]
    return {k: out[k] for k in ("delta", "ci95", "n", "p_sign")}


def own_interval(metric: str, items: Items) -> tuple[float | None, list[float] | None, int]:
    """A side's value over its items with a 95% bootstrap interval (for absolute floors and ceilings)."""
    _, key = task_and_key(metric)
    if metric == "perplexity":
        pairs = list(items.loglikelihood.values())
        if not pairs:
            return None, None, 0
        ll, n = (np.array(x, dtype=float) for x in zip(*pairs, strict=True))
        value = float(np.exp(-ll.sum() / n.sum()))
        ci = stats.bootstrap_ci(lambda idx: np.exp(-ll[idx].sum(axis=-1) / n[idx].sum(axis=-1)), len(ll),
                                BOOTSTRAP_ITERS, SEED)
    else:
        x = np.array([s[key] for s in items.scores.values() if key in s], dtype=float)
        if not len(x):
            return None, None, 0
        value = float(x.mean())
        ci = stats.bootstrap_ci(lambda idx: x[idx].mean(axis=1), len(x), BOOTSTRAP_ITERS, SEED)
    return rounded(value), [rounded(c) for c in ci], len(items.loglikelihood if metric == "perplexity" else x)


def binary_key(items: list[Items], keys: list[str]) -> str | None:
    """The first score key whose per-item scores are all 0 or 1 on every side (right or wrong): for flips."""
    for key in keys:
        values = [s[key] for side in items for s in side.scores.values() if key in s]
        if values and all(v in (0.0, 1.0) for v in values):
            return key
    return None


def flips(key: str, ref: Items, other: Items, ids: list) -> list[tuple]:
    """(doc_id, right_in_other) for items right in one side and wrong in the other (a group: on all its seeds)."""
    out = []
    for d in ids:
        a, b = ref.scores[d].get(key), other.scores[d].get(key)
        if a in (0.0, 1.0) and b in (0.0, 1.0) and a != b:
            out.append((d, b == 1.0))
    return out


def side_runs(side: Side) -> list[RunData]:
    return [load_run(run) for run in side.runs]


def rounded(x: float) -> float:
    value = round(float(x), 6)
    return 0.0 if value == 0 else value
