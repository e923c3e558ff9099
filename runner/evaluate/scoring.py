"""How eval/summary.json's figures (runner.runs.eval_summary.EvalSummary) are computed from per-item rows: per
metric a candidate against another on the same items (paired bootstrap interval of the delta, sign test); and how
the summary prints."""
from __future__ import annotations

import numpy as np

from runner.evaluate import stats
from runner.runs.eval_summary import BOOTSTRAP_ITERS, SEED, EvalSummary, JudgesSummary

GENERATE_TASK = "recipe_heldout_generate"
PERPLEXITY_TASK = "recipe_heldout_perplexity"


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
    for name, m in summary.versus_base().items():
        ci = "-" if m.ci95 is None else f"[{num(m.ci95[0], True)}, {num(m.ci95[1], True)}]"
        lines.append(f"{name:28} {num(m.reference):>10} {num(m.value):>10} {num(m.delta, True):>10} "
                     f"{ci:>21} {num(m.p_sign):>8} {m.n:>5}")
    lines += _candidate_lines(summary, num)
    lines += [f"skipped {task}: {reason}" for task, reason in summary.skipped.items()]
    lines += _judges_lines(summary.judges)
    judge = summary.judge_versus_base()
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
