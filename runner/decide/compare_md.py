"""compare.md from a Comparison: runs, notes, recipe and data changes, loss curves, metrics side by side with paired
intervals and the spread between seeds, judge tallies, flipped items with their answers. Pure: same input, same text."""
from __future__ import annotations

from runner.decide.compare import Comparison, MetricRow, Paired
from runner.report.cells import cell, code, fmt, interval, table

FLIPS_SHOWN = 10  # per side and direction; compare.json has all of them


def render(c: Comparison) -> str:
    parts = [_head(c), _runs(c), _notes(c), _changes("Recipe changes", c, c.recipe_changes,
                                                     "The resolved recipes are identical."),
             _changes("Data", c, c.data_changes, "Same prepared data (sources, template, splits)."),
             _loss(c), _metrics(c), _judges(c), _flips(c)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _name(c: Comparison, i: int) -> str:
    return f"{chr(ord('A') + i)} ({cell(c.sides[i].label, 60)})"


def _head(c: Comparison) -> str:
    names = " vs ".join(_name(c, i) for i in range(len(c.sides)))
    return (f"# Compare: {names}\n\nSide A is the reference. Δ is (side − A) on the items both answered (same id and "
            "prompt), each run represented by its fine-tuned model; the 95% CI is a paired bootstrap over those items "
            f"({c.bootstrap_iters} resamples, seed {c.seed}). A seed group's value is the mean over its seeds, its "
            "items scored by their mean over the seeds, and **seed sd** is the spread between the seeds' own values: "
            "training noise that the item interval does not cover.")


def _runs(c: Comparison) -> str:
    rows = []
    for i, side in enumerate(c.sides):
        for run in side.runs:
            rows.append([_name(c, i), code(run.run_id), cell(f"{run.recipe} {run.recipe_version}", 80),
                         code(run.fingerprint[:12]), fmt(run.seed), cell(f"{run.suite} {run.suite_version}", 60),
                         fmt(run.n_items), f"{fmt(run.first_loss, '.4f')} → {fmt(run.final_loss, '.4f')}"])
    groups = [f"{_name(c, i)} is seed group {code(s.group)}" for i, s in enumerate(c.sides) if s.group]
    text = "## Runs\n\n" + table(["side", "run", "recipe", "fingerprint", "seed", "suite", "items", "loss"], rows)
    return text + ("\n\n" + "; ".join(groups) + "." if groups else "")


def _notes(c: Comparison) -> str:
    return "\n".join(f"> **Note:** {cell(n, 0)}" for n in c.notes)


def _value(v) -> str:
    if isinstance(v, dict) and "varies" in v:
        return "varies: " + ", ".join(cell(x, 40) for x in v["varies"])
    return cell(v, 80) if v is not None else "—"


def _changes(title: str, c: Comparison, changes, same: str) -> str:
    if not changes:
        return f"## {title}\n\n{same}"
    rows = [[code(ch.key)] + [_value(v) for v in ch.values] for ch in changes]
    return f"## {title}\n\n" + table(["key"] + [_name(c, i) for i in range(len(c.sides))], rows)


def _loss(c: Comparison) -> str:
    if not c.loss_plot:
        return "## Loss\n\n_No run logged a loss._"
    return f"## Loss\n\n![Loss curves of every compared run]({c.loss_plot})"


def _side_value(m: MetricRow, i: int) -> str:
    text = fmt(m.values[i], ".4f")
    if m.seed_sd[i] is not None:
        text += f" ± {m.seed_sd[i]:.4f} seed sd"
    return text


def verdict(p: Paired | None, higher_is_better: bool) -> str:
    if p is None:
        return "no shared items"
    if p.ci95 is None:
        return "no interval"
    low, high = p.ci95
    if low > 0 or high < 0:
        return ("better" if (low > 0) == higher_is_better else "worse") + ", interval excludes 0"
    return "within noise"


def _delta(p: Paired | None) -> str:
    if p is None:
        return "—"
    return f"{p.delta:+.4f} {interval(p.ci95)} n={p.n}"


def _metrics(c: Comparison) -> str:
    if not c.metrics:
        return "## Metrics\n\n_No metrics._"
    others = range(1, len(c.sides))
    headers = ["metric"] + [_name(c, i) for i in range(len(c.sides))] + \
        [h for i in others for h in (f"Δ {chr(ord('A') + i)} − A [95% CI]", "verdict")]
    rows = []
    for m in c.metrics:
        name = cell(m.name, 0) + ("" if m.higher_is_better else " (lower is better)")
        rows.append([name] + [_side_value(m, i) for i in range(len(c.sides))] +
                    [x for i in others for x in (_delta(m.paired[i]), verdict(m.paired[i], m.higher_is_better))])
    return "## Metrics\n\n" + table(headers, rows, numeric_from=1, numeric_to=len(c.sides) + 1)


def _judges(c: Comparison) -> str:
    if not c.judges:
        return ""
    rows = [[_name(c, j.side), code(j.run_id), cell(f"{j.kind} {j.model}", 60)] +
            ([f"skipped: {cell(j.skipped, 120)}", "", "", "", ""] if j.skipped else
             [fmt(j.wins), fmt(j.ties), fmt(j.losses), fmt(j.n), fmt(j.win_rate, ".1%")]) for j in c.judges]
    return ("## Judge\n\nEach run's fine-tuned model against its own base model, judged in both answer orders.\n\n" +
            table(["side", "run", "judge", "wins", "ties", "losses", "n", "win rate"], rows))


def _flips(c: Comparison) -> str:
    if not c.flips:
        return "## Flipped items\n\n_No item is right in one side and wrong in the other (exact-match kind metrics)._"
    parts = ["## Flipped items"]
    for i in range(1, len(c.sides)):
        for direction, title in (("side", f"right in {chr(ord('A') + i)}, wrong in A"),
                                 ("reference", f"right in A, wrong in {chr(ord('A') + i)}")):
            chosen = [f for f in c.flips if f.side == i and f.right_in == direction]
            if not chosen:
                continue
            rows = [[fmt(f.doc_id), cell(f.prompt, 200), cell(f.reference, 200), cell(f.answers[0], 200),
                     cell(f.answers[1], 200)] for f in chosen[:FLIPS_SHOWN]]
            more = f"\n\n…and {len(chosen) - FLIPS_SHOWN} more in compare.json." if len(chosen) > FLIPS_SHOWN else ""
            parts.append(f"### {title} ({len(chosen)}, by {code(chosen[0].metric)})\n\n" +
                         table(["id", "prompt", "reference", "A's answer", f"{chr(ord('A') + i)}'s answer"], rows)
                         + more)
    return "\n\n".join(parts)
