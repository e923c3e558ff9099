"""EvalSummary: eval/summary.json, per metric base vs fine-tuned on the same items (paired bootstrap interval of
the delta, sign test), skipped tasks and the judge's tally; how it is computed from per-item rows; how it prints."""
from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from runner.core.contracts import Contract, Record
from runner.evaluate import stats

GENERATE_TASK = "recipe_heldout_generate"
PERPLEXITY_TASK = "recipe_heldout_perplexity"
BOOTSTRAP_ITERS = 2000
SEED = 0


class MetricSummary(Record):
    base: float | None = None
    finetuned: float | None = None
    delta: float | None = None
    ci95: list[float] | None = None
    n: int
    p_sign: float | None = None
    higher_is_better: bool | None = None


class JudgeSummary(Record):
    kind: str | None = None
    model: str | None = None
    skipped: str | None = None
    wins: int | None = None
    ties: int | None = None
    losses: int | None = None
    n: int | None = None
    win_rate: float | None = None
    adjusted_win_rate: float | None = None


class CandidateMetric(Record):
    """One metric of one candidate; against the reference on the same items: delta = value - reference."""

    value: float | None = None
    reference: float | None = None
    delta: float | None = None
    ci95: list[float] | None = None
    n: int
    p_sign: float | None = None


class CandidateSummary(Record):
    kind: str  # base | finetuned | fewshot | run | model (runner.evaluate.candidates)
    slug: str  # its files: eval/samples-<slug>-<task>.jsonl, eval/results-<slug>.json
    source: str  # the model directory or run it answered with
    template: str
    shots: int = 0
    metrics: dict[str, CandidateMetric] = {}


class PairTally(Record):
    """Pairwise judge verdicts of a against b over the same items (both answer orders per item)."""

    a: str
    b: str
    wins: int  # a better in both orders
    ties: int  # an explicit tie, orders disagreeing, or a verdict missing
    losses: int
    n: int
    win_rate: float | None = None  # (wins + ties / 2) / n
    position_bias: int = 0  # items whose two verdicts named the same position (the verdict flipped with the order)
    unparseable: int = 0  # replies with no [[A]]/[[B]]/[[C]] (out of 2 n)


class RankEntry(Record):
    candidate: str
    strength: float  # Bradley-Terry log-strength, mean 0 over the candidates
    ci95: list[float] | None = None  # bootstrap over items


class GradeSummary(Record):
    mean: float | None = None  # 1-10 over the items with a parseable [[rating]]
    ci95: list[float] | None = None
    n: int
    unparseable: int = 0


class JudgesSummary(Record):
    """The suite's judge over every candidate: pairwise tallies and ranking, single-answer grades."""

    kind: str
    model: str
    prompts: dict[str, str] = {}  # prompt file -> its version
    skipped: str | None = None
    pairs: list[PairTally] = []
    ranking: list[RankEntry] | None = None  # with three or more candidates
    grades: dict[str, GradeSummary] | None = None
    reference_guided: bool = False


class EvalSummary(Contract):
    VERSION: ClassVar[int] = 2
    version: Literal[2] = 2
    suite: str
    suite_version: str
    n_items: int
    metrics: dict[str, MetricSummary]  # base vs fine-tuned, as in version 1
    skipped: dict[str, str] = {}
    judge: JudgeSummary | None = None  # the pairwise judge's fine-tuned-vs-base tally, as in version 1
    bootstrap_iters: int = BOOTSTRAP_ITERS
    seed: int = SEED
    reference: str = "finetuned"
    candidates: dict[str, CandidateSummary] = {}  # every candidate's metrics against the reference
    judges: JudgesSummary | None = None


EvalSummary.MIGRATIONS = {0: lambda data: data | {"suite_version": str(data.get("suite_version"))},
                          1: lambda data: data}  # version 2 only adds sections (candidates, judges, reference)


def _paired(base: list[dict] | None, ft: list[dict]) -> tuple[list[dict] | None, list[dict]]:
    if base is None:
        return None, ft
    keep = {r["doc_id"] for r in base} & {r["doc_id"] for r in ft}
    return [r for r in base if r["doc_id"] in keep], [r for r in ft if r["doc_id"] in keep]


def _one_sided(values: list[float]) -> dict:
    return {"base": None, "finetuned": round(float(np.mean(values)), 6), "delta": None, "ci95": None,
            "n": len(values), "p_sign": None}


def perplexity_summary(base: list[dict] | None, ft: list[dict]) -> dict:
    """Per-token perplexity of each model, bootstrap CI of the difference, sign test on per-item log-likelihood."""
    f_ll, f_n = (np.array([r[k] for r in ft], dtype=float) for k in ("loglikelihood", "tokens"))
    ppl = lambda ll, n: np.exp(-ll.sum(axis=-1) / n.sum(axis=-1))  # noqa: E731
    if base is None:
        return _one_sided([float(ppl(f_ll, f_n))]) | {"n": len(ft)}
    b_ll, b_n = (np.array([r[k] for r in base], dtype=float) for k in ("loglikelihood", "tokens"))
    lo, hi = stats.bootstrap_ci(lambda idx: ppl(f_ll[idx], f_n[idx]) - ppl(b_ll[idx], b_n[idx]), len(ft),
                                BOOTSTRAP_ITERS, SEED)
    sign = stats.sign_test(b_ll / b_n, f_ll / f_n)
    b, f = float(ppl(b_ll, b_n)), float(ppl(f_ll, f_n))
    return {"base": round(b, 6), "finetuned": round(f, 6), "delta": round(f - b, 6),
            "ci95": [round(lo, 6), round(hi, 6)], "n": len(ft), "p_sign": round(sign["p_value"], 6)}


def summarize(rows: dict[str, dict[str, list[dict]]]) -> dict[str, dict]:
    """Per metric {"base","finetuned","delta","ci95","n","p_sign"}; standard tasks as "<task>/<metric>"."""
    return paired_metrics(rows.get("base"), rows["finetuned"])


def candidate_metrics(rows: dict[str, dict[str, list[dict]]], reference: str) -> dict[str, dict[str, dict]]:
    """Per candidate, per metric: its value and, beside the reference's on the same items, the paired delta."""
    out = {}
    for label, own in rows.items():
        paired = paired_metrics(None if label == reference else rows[reference], own)
        out[label] = {name: {"value": m["finetuned"], "reference": m["base"], "delta": m["delta"], "ci95": m["ci95"],
                             "n": m["n"], "p_sign": m["p_sign"]} for name, m in paired.items()}
    return out


def paired_metrics(base_rows: dict[str, list[dict]] | None, ft_rows: dict[str, list[dict]]) -> dict[str, dict]:
    """Per metric of ft_rows' tasks, against base_rows' on the items both answered (one-sided without them)."""
    metrics: dict[str, dict] = {}
    for task, ft in ft_rows.items():
        base, ft = _paired(base_rows.get(task) if base_rows is not None else None, ft)
        if not ft:
            continue
        if task == PERPLEXITY_TASK:
            metrics["perplexity"] = perplexity_summary(base, ft)
            continue
        names = sorted(ft[0]["scores"])
        label = (lambda m: m) if task == GENERATE_TASK else (lambda m, task=task: f"{task}/{m}")
        if base is None:
            metrics |= {label(m): _one_sided([r["scores"][m] for r in ft]) for m in names}
            continue
        summary = stats.summarize({m: [r["scores"][m] for r in base] for m in names},
                                  {m: [r["scores"][m] for r in ft] for m in names}, iters=BOOTSTRAP_ITERS, seed=SEED)
        metrics |= {label(m): value for m, value in summary.items()}
    return metrics


def format_summary(summary: EvalSummary) -> str:
    """summary.json as a terminal table: base, fine-tuned, delta, 95% CI, sign-test p, n; then skips and judge."""
    def num(x, signed=False):
        return "-" if x is None else (f"{x:+.4f}" if signed else f"{x:.4f}")

    lines = [f"suite {summary.suite} {summary.suite_version}, {summary.n_items} held-out items",
             f"{'metric':28} {'base':>10} {'fine-tuned':>10} {'delta':>10} {'95% CI':>21} {'p(sign)':>8} {'n':>5}"]
    for name, m in summary.metrics.items():
        ci = "-" if m.ci95 is None else f"[{num(m.ci95[0], True)}, {num(m.ci95[1], True)}]"
        lines.append(f"{name:28} {num(m.base):>10} {num(m.finetuned):>10} {num(m.delta, True):>10} "
                     f"{ci:>21} {num(m.p_sign):>8} {m.n:>5}")
    lines += _candidate_lines(summary, num)
    lines += [f"skipped {task}: {reason}" for task, reason in summary.skipped.items()]
    lines += _judges_lines(summary.judges)
    judge = summary.judge
    if judge:
        lines.append(f"judge skipped: {judge.skipped}" if judge.skipped else
                     f"judge ({judge.kind} {judge.model}): fine-tuned {judge.wins} wins, {judge.ties} ties, "
                     f"{judge.losses} losses of {judge.n}")
    return "\n".join(lines) + "\n"


def _candidate_lines(summary: EvalSummary, num) -> list[str]:
    """Every candidate beside the reference, when there are candidates other than base and fine-tuned."""
    if all(c.kind in ("base", "finetuned") for c in summary.candidates.values()):
        return []
    lines = ["", f"candidates against {summary.reference} (delta = candidate - {summary.reference}, paired 95% CI):"]
    for label, c in summary.candidates.items():
        for name, m in c.metrics.items():
            ci = "-" if m.ci95 is None else f"[{num(m.ci95[0], True)}, {num(m.ci95[1], True)}]"
            lines.append(f"  {label:24} {name:24} {num(m.value):>10} {num(m.delta, True):>10} {ci:>21} {m.n:>5}")
    return lines


def _judges_lines(judges: JudgesSummary | None) -> list[str]:
    if judges is None or judges.skipped:
        return []
    lines = [f"judge ({judges.kind} {judges.model}): {p.a} vs {p.b}: {p.wins} wins, {p.ties} ties, {p.losses} "
             f"losses of {p.n}; win rate {p.win_rate:.3f}; position bias {p.position_bias}; unparseable "
             f"{p.unparseable}" for p in judges.pairs if p.win_rate is not None]
    lines += [f"  rank {i}: {r.candidate} {r.strength:+.3f}" + (f" [{r.ci95[0]:+.3f}, {r.ci95[1]:+.3f}]" if r.ci95
                                                               else "") for i, r in enumerate(judges.ranking or [], 1)]
    for label, g in (judges.grades or {}).items():
        mean = "-" if g.mean is None else f"{g.mean:.2f}"
        lines.append(f"judge grade {label}: {mean} of 10 over {g.n} items; unparseable {g.unparseable}")
    return lines
