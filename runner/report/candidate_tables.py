"""The report's candidate and judge tables, from eval/summary.json's `candidates` and `judges` sections.

Shown when the eval had candidates other than base and fine-tuned (few-shot, another run, another model), or a
judge that ranked or graded them; a plain base-vs-fine-tuned eval keeps its own table (markdown._evaluation).
"""
from __future__ import annotations

from runner.report.cells import cell, fmt, interval, is_number, table


def is_default(summary: dict) -> bool:
    """Only base and fine-tuned were evaluated."""
    found = summary.get("candidates") or {}
    return all(isinstance(c, dict) and c.get("kind") in ("base", "finetuned") for c in found.values())


def _describe(label: str, c: dict) -> str:
    kind = c.get("kind")
    what = {"base": "base model, zero-shot", "finetuned": "this run's model",
            "fewshot": f"base model, {fmt(c.get('shots'))} examples from the train split",
            "run": f"another run: {c.get('source')}", "model": f"model {c.get('source')}"}.get(kind, str(kind))
    return f"{cell(label, 0)} ({cell(what, 0)}; template {cell(c.get('template'), 0)})"


def candidates_section(summary: dict, lower: frozenset[str]) -> str:
    """Rows: candidates; per metric its value and the paired delta against the reference with its 95% CI."""
    found = summary.get("candidates") or {}
    reference = summary.get("reference") or "finetuned"
    names = list(dict.fromkeys(n for c in found.values() for n in (c.get("metrics") or {})))
    if not names:
        return "_No candidate metrics were computed._"
    headers = ["candidate"]
    for name in names:
        suffix = " (lower is better)" if name in lower else ""
        headers += [cell(name, 0) + suffix, f"Δ vs {cell(reference, 0)} (95% CI)"]
    rows = []
    for label, c in found.items():
        row = [_describe(label, c) + (" — **reference**" if label == reference else "")]
        for name in names:
            m = (c.get("metrics") or {}).get(name) or {}
            delta = "—" if label == reference or not is_number(m.get("delta")) else \
                f"{m['delta']:+.4f} {interval(m.get('ci95'))}"
            row += [fmt(m.get("value"), ".4f"), delta]
        rows.append(row)
    return (f"Every candidate answered the same {fmt(summary.get('n_items'))} items with the same decoding settings. "
            f"Δ is candidate − {cell(reference, 0)} on the same items; the 95% CI is a paired bootstrap.\n\n" +
            table(headers, rows, numeric_from=1))


def judges_section(judges) -> str:
    """Pairwise tallies, the Bradley-Terry ranking and single-answer grades; empty when there are none."""
    if not isinstance(judges, dict) or judges.get("skipped"):
        return ""
    parts = []
    prompts = ", ".join(f"`{f}` {v}" for f, v in (judges.get("prompts") or {}).items())
    if judges.get("pairs"):
        rows = [[f"{cell(p['a'], 0)} vs {cell(p['b'], 0)}"] + [fmt(p.get(k)) for k in ("wins", "ties", "losses", "n")] +
                [fmt(p.get("win_rate"), ".1%"), fmt(p.get("position_bias")), fmt(p.get("unparseable"))]
                for p in judges["pairs"]]
        parts.append(table(["pair (a vs b)", "a wins", "ties", "a losses", "n", "a's win rate (ties ½)",
                            "position-biased items", "unparseable replies"], rows, 1))
        parts.append("Each item is judged in both answer orders; a win needs both orders to agree, anything else is a "
                     "tie. A position-biased item got the same position in both orders (the verdict flipped with the "
                     "order); an unparseable reply had no [[A]]/[[B]]/[[C]] and counts as a tie.")
    if judges.get("ranking"):
        rows = [[str(i), cell(r["candidate"], 0), fmt(r.get("strength"), "+.3f"), interval(r.get("ci95"))]
                for i, r in enumerate(judges["ranking"], 1)]
        parts += ["Bradley–Terry ranking (log-strength, mean 0; 95% bootstrap interval over items):",
                  table(["rank", "candidate", "strength", "95% CI"], rows, 2)]
    if judges.get("grades"):
        guided = " against the reference answer" if judges.get("reference_guided") else ""
        rows = [[cell(label, 0), fmt(g.get("mean"), ".2f"), _plain_interval(g.get("ci95")), fmt(g.get("n")),
                 fmt(g.get("unparseable"))] for label, g in judges["grades"].items()]
        parts += [f"Single-answer grades (1–10{guided}):",
                  table(["candidate", "mean grade", "95% CI", "graded", "unparseable"], rows, 1)]
    if prompts:
        parts.append(f"Judge {cell(judges.get('kind'), 0)} {cell(judges.get('model'), 0)}; prompts {prompts}.")
    return "\n\n".join(parts)


def _plain_interval(ci) -> str:
    if isinstance(ci, list) and len(ci) == 2 and all(is_number(x) for x in ci):
        return f"[{ci[0]:.2f}, {ci[1]:.2f}]"
    return "—"
