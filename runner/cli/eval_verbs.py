"""Verbs that use a trained run: eval (every candidate on the suite, then the report), generate (answers side by
side), report."""
from __future__ import annotations

import sys
from pathlib import Path

from runner.cli import targets
from runner.core import console, paths
from runner.core.errors import Problem, UserError
from runner.recipe import loading
from runner.runs import lookup


def cmd_eval(args) -> int:
    from runner.cli.followups import after_eval
    from runner.evaluate import run_suite, scoring
    from runner.recipe import suites
    from runner.report import markdown
    from runner.runs import rundir

    run = targets.run_of(args)
    current = targets.current_recipe(args, run)
    recipe_file = targets.names_recipe_file(args)
    where = paths.display(loading.find(recipe_file)) if recipe_file else paths.display(run.file(rundir.RESOLVED))
    recipe, changed = rundir.recipe_for_eval(run, current)
    if changed:
        print(f"note: {where} differs from the recipe run {run.run_id} was trained with "
              f"({', '.join(changed)}); evaluating with the run's recipe ({run.run_id}/recipe.resolved.yaml) and "
              "the current eval settings", file=sys.stderr)
    suite = (suites.load(args.suite, key="--suite") if args.suite
             else suites.for_recipe(recipe, where))
    log = run.log_path("eval")
    with console.third_party_to(log, args.verbose):  # lm-eval's and torch's messages go to the run's log
        result = run_suite.evaluate(run, recipe, suite)
        after_eval(run)  # the model cards take the results
        report = markdown.write_report(run)
    print(scoring.format_summary(result), end="")
    print(f"report: {paths.display(report)} (library messages: {paths.display(log)}; -v shows them here)")
    return 0


def cmd_generate(args) -> int:
    from runner.evaluate import generate
    from runner.runs import rundir

    name = lookup.parse(args.recipe, args.run)
    if name.recipe is not None and name.run_id is None:  # the recipe as it is now, on its latest run if it has one
        target, max_new_tokens = loading.load(name.recipe, args.overrides), args.max_new_tokens
    else:
        target = name.find()
        max_new_tokens = args.max_new_tokens or targets.run_recipe(args, target, "generate").eval.max_new_tokens
        targets.run_recipe(args, target, "generate")  # with --max-new-tokens too: a key against the run is exit 2
    prompts = list(args.prompt or [])
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(Problem(args.file, "--file", f"cannot read the prompts file: "
                                    f"{getattr(err, 'strerror', None) or err}")) from None
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError("generate: give --prompt TEXT (repeatable) or --file prompts.txt (one prompt a line)")
    log = (target.log_path("generate") if isinstance(target, rundir.RunDir)
           else paths.cache_dir() / "logs" / "generate.log")
    with console.third_party_to(log, args.verbose):
        answers = generate.generate(target, prompts, max_new_tokens)
    print(generate.format_side_by_side(answers), end="")
    return 0


def cmd_report(args) -> int:
    from runner.report import markdown

    run, _ = targets.finished_run(args, "report")
    print(f"wrote {paths.display(markdown.write_report(run))}")
    return 0


def register(verb, with_recipe) -> None:
    evaluate = targets.with_run(verb("eval", cmd_eval, "evaluate base and fine-tuned models on the recipe's eval "
                                     "suite (lm-evaluation-harness), then write the report"))
    evaluate.add_argument("--suite", default=None, help="eval suite name (default: the recipe's eval.suite)")
    generate = targets.with_run(verb("generate", cmd_generate, "answer prompts with the base and fine-tuned models, "
                                     "side by side, in the recipe's template"))
    generate.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    generate.add_argument("--file", help="a file of prompts, one a line")
    generate.add_argument("--max-new-tokens", type=int, default=None)
    targets.with_run(verb("report", cmd_report, "write report.md and plots/ for a run"))
