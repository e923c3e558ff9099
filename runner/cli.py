"""The `recipe` command: one small function per verb, each wiring library calls. User errors exit 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.recipe import snapshots
from runner.recipe import loading
from runner.core import paths
from runner.train.engine import TARGETS
from runner.core.errors import STORAGE_ERRNOS, Problem, RunFailed, UserError, storage_error

EPILOG = """examples:
  recipe list
  recipe validate                       # every recipe and base under recipes/
  recipe show tiny-cpu train.learning_rate=1e-3 hardware.gpus=2
  recipe render tiny-cpu --n 2          # trained text shown between [[ and ]]
  recipe lock --check                   # CI: resolved snapshots are current
  recipe diff codellama7b-text-to-sql mistral7b-text-to-sql
  recipe plan gemma7b-dolly-chatml --target slurm
  recipe train tiny-cpu train.max_steps=10
  recipe train tiny-cpu --resume        # continue the latest run from its newest checkpoint
  recipe eval tiny-cpu                  # base vs fine-tuned on the recipe's eval suite, then report.md
  recipe generate smollm2-135m-sql-chatml --prompt "How many customers live in Paris?"
"""


def cmd_list(args) -> int:
    for name, path in sorted(loading.recipe_files().items()):
        try:
            description = loading.load(path).recipe.description
        except UserError:
            description = "(invalid: run `recipe validate " + name + "`)"
        print(f"{name:34} {description}")
    return 0


def cmd_validate(args) -> int:
    if args.recipes:
        problems = []
        for name in args.recipes:
            try:
                loading.load(name)
            except UserError as err:
                problems += err.problems
    else:
        from runner.recipe import suites

        problems = loading.validate_all() + suites.validate_all()
    if problems:
        raise UserError(problems)
    count = len(args.recipes) or len(loading.recipe_files()) + len(loading.base_files())
    print(f"ok: {count} file(s) valid")
    return 0


def cmd_show(args) -> int:
    loaded = loading.load(args.recipe, args.overrides)
    print(f"# {paths.display(loaded.path)}  fingerprint {loaded.fingerprint}")
    print(loading.resolved_yaml(loaded.recipe), end="")
    return 0


def cmd_schema(args) -> int:
    print(snapshots.json_schema(), end="")
    return 0


def cmd_lock(args) -> int:
    if args.check:
        stale = snapshots.check()
        if stale:
            print("\n".join(stale), file=sys.stderr)
            print("resolved recipes are stale: run `make lock` and commit the result", file=sys.stderr)
            return 1
        print("ok: resolved recipes are current")
        return 0
    changed = snapshots.write()
    print("\n".join(f"wrote {paths.display(p)}" for p in changed) or "ok: nothing to change")
    return 0


def cmd_diff(args) -> int:
    print(snapshots.diff(args.a, args.b) or "no differences", end="")
    return 0


def cmd_render(args) -> int:
    from runner.data.render import render_preview

    print(render_preview(loading.load(args.recipe, args.overrides), args.n))
    return 0


def cmd_tiny_model(args) -> int:
    from runner.models import tiny

    print(paths.display(tiny.build(args.out)))  # None: models/tiny-llama
    return 0


def cmd_prepare(args) -> int:
    from runner.data.prepare import prepare

    prepared = prepare(loading.load(args.recipe, args.overrides))
    info = prepared.info
    print(f"prepared {paths.display(prepared.dir)}")
    print(f"  rows: {info['counts']}  duplicates removed: {info['duplicates_removed']}")
    for source, report in info["sources"].items():
        print(f"  {source}: {report['rows']} rows, {report['incomplete']} incomplete")
    for split, stats in info["stats"].items():
        print(f"  {split}: {stats['rows']} rows, {stats['tokens']} tokens, per row {stats['tokens_per_row']}, "
              f"{stats['over_max_seq_len']} over max_seq_len ({stats['overlength_action']})")
    return 0


def cmd_plan(args) -> int:
    from runner.train.launch import plan_run

    run = plan_run(loading.load(args.recipe, args.overrides), args.target)
    print(f"planned {paths.display(run.path)}:")
    for file in sorted(run.path.iterdir()):
        print(f"  {file.name}")
    print(f"start it with:\n  {run.manifest()['command']}")
    return 0


def cmd_train(args) -> int:
    from runner.train.launch import train

    resume = False if args.resume is None else args.resume
    run = train(loading.load(args.recipe, args.overrides), args.target, resume, detach=args.detach)
    if run.manifest()["status"] == "submitted":
        print(f"submitted {paths.display(run.path)} as slurm job {run.manifest()['slurm_job_id']}")
        return 0
    summary = run.manifest().get("train", {})
    print(f"trained {paths.display(run.path)}: {summary.get('steps')} steps, loss {summary.get('first_loss')} -> "
          f"{summary.get('final_loss')}")
    return 0


def cmd_merge(args) -> int:
    from runner.runs import rundir
    from runner.train.merge import merge

    print(f"merged model: {paths.display(merge(rundir.find(args.recipe, args.run)))}")
    return 0


def cmd_eval(args) -> int:
    from runner.evaluate import evaluation
    from runner.report import markdown
    from runner.runs import rundir
    from runner.recipe import suites

    loaded = loading.load(args.recipe, args.overrides)
    run = rundir.find(loaded.recipe.name, args.run)
    suite = (suites.load(args.suite, key="--suite") if args.suite
             else suites.for_recipe(loaded.recipe, paths.display(loaded.path)))
    print(evaluation.format_summary(evaluation.evaluate(run, loaded.recipe, suite)), end="")
    print(f"report: {paths.display(markdown.write_report(run))}")
    return 0


def cmd_generate(args) -> int:
    from runner.evaluate import generate
    from runner.runs import rundir

    loaded = loading.load(args.recipe, args.overrides)
    target = rundir.find(loaded.recipe.name, args.run) if args.run else loaded
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
    print(generate.format_side_by_side(generate.generate(target, prompts, args.max_new_tokens)), end="")
    return 0


def cmd_report(args) -> int:
    from runner.report import markdown
    from runner.runs import rundir

    print(f"wrote {paths.display(markdown.write_report(rundir.find(args.recipe, args.run)))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recipe", description="Declarative fine-tuning recipes.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name, func, help_text):
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=func)
        return sub

    def with_recipe(sub):
        sub.add_argument("recipe", help="recipe name (recipes/**/<name>.yaml) or path")
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. train.learning_rate=1e-4")
        return sub

    verb("list", cmd_list, "list recipes")
    verb("validate", cmd_validate, "validate recipes (all under recipes/ when none named)").add_argument(
        "recipes", nargs="*", metavar="NAME|PATH")
    with_recipe(verb("show", cmd_show, "print the resolved recipe as canonical YAML"))
    verb("schema", cmd_schema, "print the recipe JSON Schema")
    verb("lock", cmd_lock, "write recipes/resolved/ snapshots").add_argument(
        "--check", action="store_true", help="fail (exit 1) if any snapshot is stale")
    diff = verb("diff", cmd_diff, "show how two resolved recipes differ")
    diff.add_argument("a")
    diff.add_argument("b")
    render = with_recipe(verb("render", cmd_render, "print rendered examples, trained text between [[ ]]"))
    render.add_argument("--n", type=int, default=3, help="examples to show")
    tiny = verb("tiny-model", cmd_tiny_model, "build the tiny random-init Llama the tests and tiny-cpu use")
    tiny.add_argument("--out", type=Path, default=None, help="folder (default models/tiny-llama)")
    with_recipe(verb("prepare", cmd_prepare, "prepare a recipe's data (cached by content) and show stats"))
    plan = with_recipe(verb("plan", cmd_plan, "write axolotl/DeepSpeed/launch files into a new run dir; run nothing"))
    plan.add_argument("--target", choices=TARGETS, default="local", help="launcher (default local)")
    train = with_recipe(verb("train", cmd_train, "prepare + plan + train; writes runs/<recipe>/<run-id>/"))
    train.add_argument("--target", choices=TARGETS, default="local",
                       help="local (one process), accelerate, torchrun, or slurm (sbatch, then wait for the job)")
    train.add_argument("--detach", action="store_true", help="with --target slurm: submit and return at once")
    train.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                       help="continue a run (the latest, or RUN) from its newest checkpoint")
    merge = verb("merge", cmd_merge, "merge a run's LoRA adapter into the base model -> run/merged/")
    merge.add_argument("recipe")
    merge.add_argument("--run", default=None, help="run id (default: latest)")
    evaluate = with_recipe(verb("eval", cmd_eval, "evaluate base and fine-tuned models on the recipe's eval suite "
                                "(lm-evaluation-harness), then write the report"))
    evaluate.add_argument("--run", default=None, help="run id (default: latest)")
    evaluate.add_argument("--suite", default=None, help="eval suite name (default: the recipe's eval.suite)")
    generate = with_recipe(verb("generate", cmd_generate, "answer prompts with the base and fine-tuned models, "
                                "side by side, in the recipe's template"))
    generate.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    generate.add_argument("--file", help="a file of prompts, one a line")
    generate.add_argument("--run", default=None, help="run id (default: latest)")
    generate.add_argument("--max-new-tokens", type=int, default=None)
    report = verb("report", cmd_report, "write report.md and plots/ for a run")
    report.add_argument("recipe")
    report.add_argument("--run", default=None, help="run id (default: latest)")
    return parser


def _report(err: UserError) -> int:
    print(f"error: {err}", file=sys.stderr) if len(err.problems) == 1 else print(
        "error: " + f"{len(err.problems)} problems:\n  " + "\n  ".join(str(p) for p in err.problems),
        file=sys.stderr)
    return err.exit_code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        return _report(err)
    except OSError as err:  # a write deep in a stage (a copy, a log) on a full or read-only disk
        if err.errno not in STORAGE_ERRNOS:
            raise
        return _report(storage_error(err))
    except RunFailed as err:
        print(f"failed: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
