"""The `recipe` command: one small function per verb, each wiring library calls. User errors exit 2."""
from __future__ import annotations

import argparse
import sys

from . import lock, loading, paths, templates
from .errors import RunFailed, UserError

EPILOG = """examples:
  recipe list
  recipe validate                       # every recipe and base under recipes/
  recipe show tiny-cpu train.learning_rate=1e-3 hardware.gpus=2
  recipe render tiny-cpu --n 2          # trained text shown between [[ and ]]
  recipe lock --check                   # CI: resolved snapshots are current
  recipe diff codellama7b-text-to-sql mistral7b-text-to-sql
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
        problems = loading.validate_all()
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
    print(lock.json_schema(), end="")
    return 0


def cmd_lock(args) -> int:
    if args.check:
        stale = lock.check()
        if stale:
            print("\n".join(stale), file=sys.stderr)
            print("resolved recipes are stale: run `make lock` and commit the result", file=sys.stderr)
            return 1
        print("ok: resolved recipes are current")
        return 0
    changed = lock.write()
    print("\n".join(f"wrote {paths.display(p)}" for p in changed) or "ok: nothing to change")
    return 0


def cmd_diff(args) -> int:
    print(lock.diff(args.a, args.b) or "no differences", end="")
    return 0


def cmd_render(args) -> int:
    from .preview import render_preview

    print(render_preview(loading.load(args.recipe, args.overrides), args.n))
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr) if len(err.problems) == 1 else print(
            "error: " + f"{len(err.problems)} problems:\n  " + "\n  ".join(str(p) for p in err.problems),
            file=sys.stderr)
        return err.exit_code
    except RunFailed as err:
        print(f"failed: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
