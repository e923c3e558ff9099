"""Verbs about recipes themselves: list, validate, init, show, schema, lock, diff, render."""
from __future__ import annotations

import sys
from pathlib import Path

from runner.core import paths
from runner.core.errors import UserError
from runner.recipe import loading, snapshots


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

    chain = [loaded.chain[0], *reversed(loaded.chain[1:])]  # the recipe, then its bases in the order they apply
    found = [("recipe" if index == 0 else "extends", path) for index, path in enumerate(chain)]
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


def register(verb, with_recipe) -> None:
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
