"""Verbs that decide between runs: compare (runs or seed groups side by side) and gate (the suite's gates as an exit
code: 0 pass, 1 fail, 2 bad input)."""
from __future__ import annotations

import argparse
from pathlib import Path

from runner.core import paths

RUN_FORMS = ("a recipe (its latest run, or the seed group that run belongs to), RECIPE@ID (a run or seed group of "
             "it), a run id, a seed group id, or a run folder")


def cmd_compare(args) -> int:
    from runner.decide import compare, runs_select

    if len(args.runs) < 2:
        from runner.core.errors import UserError

        raise UserError(f"compare: give two or more runs to set side by side ({RUN_FORMS})")
    sides = runs_select.sides(args.runs)
    folder, comparison = compare.write(sides, Path(args.out) if args.out else None)
    for note in comparison.notes:
        print(f"note: {note}")
    for row in comparison.metrics:
        values = "  ".join(f"{chr(ord('A') + i)} {v:.4f}" if v is not None else f"{chr(ord('A') + i)} -"
                           for i, v in enumerate(row.values))
        deltas = "  ".join(f"{chr(ord('A') + i)}-A {p.delta:+.4f} [{p.ci95[0]:+.4f}, {p.ci95[1]:+.4f}]"
                           for i, p in enumerate(row.paired) if p is not None and p.ci95 is not None)
        print(f"{row.name:24} {values}  {deltas}")
    print(f"wrote {paths.display(folder / 'compare.md')} and compare.json"
          + (f", {comparison.loss_plot}" if comparison.loss_plot else ""))
    return 0


def cmd_gate(args) -> int:
    from runner.cli import targets
    from runner.decide import gate, runs_select
    from runner.report import markdown

    candidate = runs_select.resolve(f"{args.recipe}@{args.run}" if args.run else args.recipe)
    for run in candidate.runs:  # a key that would change how a run was made is exit 2
        targets.run_recipe(args, run, "gate")
    candidate = runs_select.require_evaluated(candidate)
    baseline = runs_select.require_evaluated(runs_select.resolve(args.baseline)) if args.baseline else None
    if baseline is not None and {r.path for r in baseline.runs} & {r.path for r in candidate.runs}:
        from runner.core.errors import UserError

        raise UserError(f"--baseline {args.baseline}: the baseline is the run being gated; name another run")
    result = gate.judge(candidate, baseline)
    gate.record(candidate, result)
    for run in candidate.runs:  # the report shows the verdict
        markdown.write_report(run)
    print(gate.format_table(result), end="")
    return 0 if result.passed else 1


def register(verb, with_recipe) -> None:
    compare = verb("compare", cmd_compare, "set runs side by side: recipe diff, data fingerprints, loss curves, "
                   "metrics with paired intervals (side A is the reference), judge verdicts, flipped items; writes "
                   "compare.md and compare.json")
    compare.add_argument("runs", nargs="+", metavar="RUN", help=f"two or more: {RUN_FORMS}")
    compare.add_argument("-o", "--out", default=None, help="output folder (default runs/_compare/<names>-<hash>/)")
    compare.formatter_class = argparse.RawDescriptionHelpFormatter
    compare.epilog = ("examples:\n  recipe compare tiny-cpu@20261130-091500-3f2a9c1d tiny-cpu\n"
                      "  recipe compare smollm2-lr1e-3 smollm2-lr3e-4 -o review/")
    gate = verb("gate", cmd_gate, "judge a run on its eval suite's gates (on 95% intervals): exit 0 pass, 1 fail")
    gate.add_argument("recipe", metavar="RECIPE[@RUN]", help=RUN_FORMS)
    gate.add_argument("overrides", nargs="*", metavar="key=value", help="overrides (anywhere on the line) of what "
                      "can change after training (eval.*, publish.*); the gates judge the eval the run has")
    gate.add_argument("--run", default=None, help="run id or seed group id of RECIPE (the same as RECIPE@RUN; "
                      "default: latest)")
    gate.add_argument("--baseline", default=None, metavar="RUN", help=f"for max_drop gates: {RUN_FORMS}")
