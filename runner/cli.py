"""The `recipe` command: one small function per verb, each wiring library calls. User errors exit 2."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from runner.recipe import snapshots
from runner.recipe import loading
from runner.core import console, paths
from runner.train.engine import TARGETS
from runner.core.errors import STORAGE_ERRNOS, Problem, RunFailed, UserError, storage_error

EPILOG = """examples:
  recipe init my-repo                   # a starter workspace: recipes/my-model.yaml, data, README, .gitignore
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


def _origin(path: Path) -> str:
    """A file and where it came from: `recipes/x.yaml (workspace)`, `/.../x.yaml (library)`."""
    return f"{paths.display(path)} ({paths.origin(path)})"


def cmd_list(args) -> int:
    layers = loading.recipe_layers()
    first: dict[str, Path] = {}
    for index, (root, files) in enumerate(layers):
        if index == 0:
            also = " (the checkout: also the shipped library)" if root == paths.library_root() else ""
            print(f"workspace {root}{also}")
        else:
            print(f"library {root} (shipped with recipe-runner; runnable by name)")
        if not files:
            print("  (no recipes; `recipe init DIR` writes a starter workspace)")
        for name, path in sorted(files.items()):
            if name in first:
                description = f"(not used: the workspace's {paths.display(first[name])} has this name)"
            else:
                try:
                    description = loading.load(path).recipe.description
                except UserError:
                    description = "(invalid: run `recipe validate " + name + "`)"
                first[name] = path
            print(f"  {name:32} {description}  [{path.relative_to(root)}]")
    return 0


def _files_of(loaded: loading.Loaded) -> list[tuple[str, Path]]:
    """(role, file) for every file a recipe is made of: itself, its bases, its template and its eval suite."""
    from runner.recipe import suites, templates

    found = [("recipe" if index == 0 else "extends", path) for index, path in enumerate(loaded.chain)]
    template = templates.path_of(loaded.recipe.data.template)
    suite = suites.path_of(loaded.recipe.eval.suite or suites.DEFAULT_SUITE)
    return found + [(role, path) for role, path in (("template", template), ("suite", suite)) if path is not None]


def cmd_validate(args) -> int:
    from runner.recipe import suites

    if args.recipes:
        problems, done = [], []
        for name in args.recipes:
            try:
                done.append(loading.load(name))
            except UserError as err:
                problems += err.problems
        if problems:
            raise UserError(problems)
        for loaded in done:
            print(f"ok: {loaded.recipe.name}")
            for role, path in _files_of(loaded):
                print(f"  {role:9} {_origin(path)}")
        return 0
    problems = loading.validate_all() + suites.validate_all()
    if problems:
        raise UserError(problems)
    checked = [*loading.recipe_files(library=False).values(), *loading.base_files(),
               *sorted(paths.eval_suites_dir().glob("*.yaml"))]
    for path in checked:
        print(f"  {_origin(path)}")
    print(f"ok: {len(checked)} file(s) valid in the workspace {paths.workspace()}")
    if paths.library_root() != paths.workspace():
        print(f"(the shipped library {paths.library_root()} is not checked here; `recipe validate NAME` checks "
              "one of its recipes with every file it uses)")
    return 0


def cmd_init(args) -> int:
    from runner.recipe import starter

    written = starter.init(args.dir, args.name)
    for path in written:
        print(f"wrote {path}")
    print(f"next (about 5 minutes on 2 CPU cores):\n  cd {args.dir}\n  recipe validate {args.name}\n"
          f"  recipe train {args.name}\n  recipe eval {args.name}")
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
    print(f"  rows: {info.counts}  duplicates removed: {info.duplicates_removed}")
    for source, report in info.sources.items():
        print(f"  {source}: {report.rows} rows, {report.incomplete} incomplete")
    for split, stats in info.stats.items():
        per_row = stats.tokens_per_row.model_dump() if stats.tokens_per_row else {}
        print(f"  {split}: {stats.rows} rows, {stats.tokens} tokens, per row {per_row}, "
              f"{stats.over_max_seq_len} over max_seq_len ({stats.overlength_action})")
    return 0


def cmd_plan(args) -> int:
    from runner.train.plan import plan_run

    run = plan_run(loading.load(args.recipe, args.overrides), args.target)
    print(f"planned {paths.display(run.path)}:")
    for file in sorted(run.path.iterdir()):
        print(f"  {file.name}")
    print(f"start it with:\n  {run.manifest().command}")
    return 0


def cmd_train(args) -> int:
    from runner.train.launch import train

    resume = False if args.resume is None else args.resume
    run = train(loading.load(args.recipe, args.overrides), args.target, resume, detach=args.detach,
                verbose=args.verbose)
    manifest = run.manifest()
    if manifest.status.value == "submitted":
        print(f"submitted {paths.display(run.path)} as slurm job {manifest.slurm_job_id}")
        return 0
    summary = manifest.train
    loss = f"loss {_figure(summary.first_loss)} -> {_figure(summary.final_loss)}" if summary else "no metrics logged"
    print(f"trained {paths.display(run.path)}: {summary.steps if summary else 0} steps, {loss}")
    return 0


def _figure(value: float | None) -> str:
    """A figure for people: four significant digits."""
    return "-" if value is None else f"{value:.4g}"


def cmd_merge(args) -> int:
    from runner.runs import rundir
    from runner.train.merge import merge

    print(f"merged model: {paths.display(merge(rundir.find(loading.recipe_name(args.recipe), args.run)))}")
    return 0


def cmd_eval(args) -> int:
    from runner.evaluate import evaluation, summary
    from runner.report import markdown
    from runner.runs import rundir
    from runner.recipe import suites

    loaded = loading.load(args.recipe, args.overrides)
    run = rundir.find(loaded.recipe.name, args.run)
    recipe, changed = rundir.recipe_for_eval(run, loaded.recipe)
    if changed:
        print(f"note: {paths.display(loaded.path)} differs from the recipe run {run.run_id} was trained with "
              f"({', '.join(changed)}); evaluating with the run's recipe ({run.run_id}/recipe.resolved.yaml) and "
              "the current eval settings", file=sys.stderr)
    suite = (suites.load(args.suite, key="--suite") if args.suite
             else suites.for_recipe(recipe, paths.display(loaded.path)))
    log = run.file("logs", "eval.log")
    with console.third_party_to(log, args.verbose):  # lm-eval's and torch's messages go to the run's log
        result = evaluation.evaluate(run, recipe, suite)
        report = markdown.write_report(run)
    print(summary.format_summary(result), end="")
    print(f"report: {paths.display(report)} (library messages: {paths.display(log)}; -v shows them here)")
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
    log = (target.file("logs", "generate.log") if isinstance(target, rundir.RunDir)
           else paths.cache_dir() / "logs" / "generate.log")
    with console.third_party_to(log, args.verbose):
        answers = generate.generate(target, prompts, args.max_new_tokens)
    print(generate.format_side_by_side(answers), end="")
    return 0


def cmd_report(args) -> int:
    from runner.report import markdown
    from runner.runs import rundir

    print(f"wrote {paths.display(markdown.write_report(rundir.find(loading.recipe_name(args.recipe), args.run)))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recipe", description="Declarative fine-tuning recipes.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="show the libraries' own messages on the terminal too (they always go to the log)")

    def verb(name, func, help_text):
        sub = verbs.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.set_defaults(func=func)
        return sub

    def with_recipe(sub):
        sub.add_argument("recipe", help="recipe name (recipes/**/<name>.yaml) or path")
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. train.learning_rate=1e-4")
        return sub

    verb("list", cmd_list, "list recipes: the workspace's, then the shipped library's, each with its file")
    verb("validate", cmd_validate, "validate recipes (all of the workspace's when none named), saying where each "
         "file came from").add_argument("recipes", nargs="*", metavar="NAME|PATH")
    init = verb("init", cmd_init, "write a starter workspace (a recipe extending the shipped bases, small data, "
                "README, .gitignore) that trains and evaluates on CPU as it is; never overwrites a file")
    init.add_argument("dir", type=Path, help="the folder (made if missing)")
    init.add_argument("--name", default="my-model", help="the recipe's name (default my-model)")
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


OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


def _overrides_after_recipe(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Move `key=value` overrides written after an option (`plan X --target slurm hardware.nodes=2`) to just after
    the recipe, where argparse takes them; an option's own value (`--prompt a=b`) stays where it is."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if not argv or argv[0] not in subparsers.choices:
        return argv
    sub = subparsers.choices[argv[0]]
    if not any(a.dest == "overrides" for a in sub._actions):
        return argv
    takes_value = {s for a in sub._actions if a.option_strings and a.nargs != 0 and a.nargs != "?"
                   for s in a.option_strings}
    rest, overrides, recipe_at, skip = [], [], None, False
    for token in argv[1:]:
        if skip:
            rest.append(token)
            skip = False
        elif token in takes_value:
            rest.append(token)
            skip = True
        elif recipe_at is not None and OVERRIDE.match(token):
            overrides.append(token)
        else:
            if recipe_at is None and not token.startswith("-"):
                recipe_at = len(rest)
            rest.append(token)
    if recipe_at is None:
        return argv
    return [argv[0], *rest[:recipe_at + 1], *overrides, *rest[recipe_at + 1:]]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_overrides_after_recipe(parser, argv))
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
