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


class EvalSummary(Contract):
    VERSION: ClassVar[int] = 1
    version: Literal[1] = 1
    suite: str
    suite_version: str
    n_items: int
    metrics: dict[str, MetricSummary]
    skipped: dict[str, str] = {}
    judge: JudgeSummary | None = None
    bootstrap_iters: int = BOOTSTRAP_ITERS
    seed: int = SEED


EvalSummary.MIGRATIONS = {0: lambda data: data | {"suite_version": str(data.get("suite_version"))}}


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
    metrics: dict[str, dict] = {}
    ft_rows, base_rows = rows["finetuned"], rows.get("base")
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
    lines += [f"skipped {task}: {reason}" for task, reason in summary.skipped.items()]
    judge = summary.judge
    if judge:
        lines.append(f"judge skipped: {judge.skipped}" if judge.skipped else
                     f"judge ({judge.kind} {judge.model}): fine-tuned {judge.wins} wins, {judge.ties} ties, "
                     f"{judge.losses} losses of {judge.n}")
    return "\n".join(lines) + "\n"
