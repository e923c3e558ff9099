"""The report's candidate and judge tables, from eval/summary.json's `candidates` and `judges` sections.

Shown when the eval had candidates other than base and fine-tuned (few-shot, another run, another model), or a
judge that ranked or graded them; a plain base-vs-fine-tuned eval keeps its own table (markdown._evaluation).
"""
from __future__ import annotations

from runner.report.cells import cell, fmt, interval, is_number, table
from runner.runs.eval_summary import CandidateSummary, EvalSummary, JudgesSummary


def is_default(summary: EvalSummary) -> bool:
    """Only base and fine-tuned were evaluated."""
    return all(c.kind in ("base", "finetuned") for c in summary.candidates.values())


def _describe(label: str, c: CandidateSummary) -> str:
    what = {"base": "base model, zero-shot", "finetuned": "this run's model",
            "merged": "this run's adapter merged into its base (merged/)",
            "export": f"this run's export {c.source.rsplit('/', 1)[-1] if c.source else ''}",
            "endpoint": f"endpoint {c.source}",
            "fewshot": f"base model, {fmt(c.shots)} examples from the train split",
            "run": f"another run: {c.source}", "model": f"model {c.source}"}.get(c.kind, str(c.kind))
    engine = f"; run by {cell(c.engine, 0)}" if c.engine and c.engine != "transformers" else ""
    return f"{cell(label, 0)} ({cell(what, 0)}; template {cell(c.template, 0)}{engine})"


def _size(c: CandidateSummary) -> str:
    return "—" if c.size_bytes is None else f"{c.size_bytes / 1e6:,.1f} MB"


def candidates_section(summary: EvalSummary, lower: frozenset[str]) -> str:
    """Rows: candidates; per metric its value and the paired delta against the reference with its 95% CI."""
    found, reference = summary.candidates, summary.reference
    names = list(dict.fromkeys(n for c in found.values() for n in c.metrics))
    if not names:
        return "_No candidate metrics were computed._"
    headers = ["candidate"]
    for name in names:
        suffix = " (lower is better)" if name in lower else ""
        headers += [cell(name, 0) + suffix, f"Δ vs {cell(reference, 0)} (95% CI)"]
    measured = any(c.size_bytes is not None or c.answer_tokens_per_s is not None for c in found.values())
    if measured:
        headers += ["size on disk", "answer tokens/s"]
    rows = []
    for label, c in found.items():
        row = [_describe(label, c) + (" — **reference**" if label == reference else "")]
        for name in names:
            m = c.metrics.get(name)
            delta = "—" if m is None or label == reference or not is_number(m.delta) else \
                f"{m.delta:+.4f} {interval(m.ci95)}"
            row += [fmt(None if m is None else m.value, ".4f"), delta]
        if measured:
            row += [_size(c), fmt(c.answer_tokens_per_s, ",.1f")]
        rows.append(row)
    speed = (" Size on disk is the weights a candidate needs (an adapter with its base); answer tokens/s is measured "
             "on the machine that evaluated, over the generated answers." if measured else "")
    return (f"Every candidate answered the same {fmt(summary.n_items)} items with the same decoding settings. "
            f"Δ is candidate − {cell(reference, 0)} on the same items; the 95% CI is a paired bootstrap.{speed}\n\n" +
            table(headers, rows, numeric_from=1))


def judges_section(judges: JudgesSummary | None) -> str:
    """Pairwise tallies, the Bradley-Terry ranking and single-answer grades; empty when there are none. A version-1
    tally (no position bias recorded) is the fine-tuned-vs-base one, shown in the report's own judge table."""
    if judges is None or judges.skipped:
        return ""
    parts = []
    prompts = ", ".join(f"`{f}` {v}" for f, v in judges.prompts.items())
    pairs = [p for p in judges.pairs if p.position_bias is not None]
    if pairs:
        rows = [[f"{cell(p.a, 0)} vs {cell(p.b, 0)}"] + [fmt(getattr(p, k)) for k in ("wins", "ties", "losses", "n")] +
                [fmt(p.win_rate, ".1%"), fmt(p.position_bias), fmt(p.unparseable)] for p in pairs]
        parts.append(table(["pair (a vs b)", "a wins", "ties", "a losses", "n", "a's win rate (ties ½)",
                            "position-biased items", "unparseable replies"], rows, 1))
        parts.append("Each item is judged in both answer orders; a win needs both orders to agree, anything else is a "
                     "tie. A position-biased item got the same position in both orders (the verdict flipped with the "
                     "order); an unparseable reply had no [[A]]/[[B]]/[[C]] and counts as a tie.")
    if judges.ranking:
        rows = [[str(i), cell(r.candidate, 0), fmt(r.strength, "+.3f"), interval(r.ci95)]
                for i, r in enumerate(judges.ranking, 1)]
        parts += ["Bradley–Terry ranking (log-strength, mean 0; 95% bootstrap interval over items):",
                  table(["rank", "candidate", "strength", "95% CI"], rows, 2)]
    if judges.grades:
        guided = " against the reference answer" if judges.reference_guided else ""
        rows = [[cell(label, 0), fmt(g.mean, ".2f"), _plain_interval(g.ci95), fmt(g.n), fmt(g.unparseable)]
                for label, g in judges.grades.items()]
        parts += [f"Single-answer grades (1–10{guided}):",
                  table(["candidate", "mean grade", "95% CI", "graded", "unparseable"], rows, 1)]
    if prompts:
        parts.append(f"Judge {cell(judges.kind, 0)} {cell(judges.model, 0)}; prompts {prompts}.")
    return "\n\n".join(parts)


def _plain_interval(ci) -> str:
    if isinstance(ci, list) and len(ci) == 2 and all(is_number(x) for x in ci):
        return f"[{ci[0]:.2f}, {ci[1]:.2f}]"
    return "—"
