"""What a `recipe compare` / `recipe gate` argument means, as one side of a comparison: a run or a seed group.

  RECIPE         its latest run; when that run was trained in a seed group (`recipe train --seeds`), the whole group
  RECIPE@ID      that recipe's run ID, or its seed group ID
  ID             a run id or a group id, found in any recipe's runs
  PATH           a run directory
Every run of a side must be evaluated (eval/summary.json); anything else is a UserError naming the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.core import paths
from runner.core.errors import Problem, UserError, unknown_name
from runner.recipe import loading
from runner.runs import lookup, rundir
from runner.runs.rundir import SUMMARY, RunDir


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the runs it stands for (one, or one per seed) and how the user named it."""

    label: str
    runs: tuple[RunDir, ...]
    group: str | None = None


def _group(runs: list[RunDir], group: str) -> list[RunDir]:
    return [run for run in runs if run.manifest().group == group]


def _whole_group(run: RunDir, label: str) -> Side:
    group = run.manifest().group
    if group is None:
        return Side(label, (run,))
    return Side(label, tuple(_group(rundir.runs_in(run.path.parent), group)), group)


def _in_recipe(recipe: str, ident: str, label: str) -> Side:
    parent = rundir.recipe_runs(recipe)
    runs = rundir.runs_in(parent) if parent.is_dir() else []
    if (parent / ident).is_dir():
        return Side(label, (RunDir((parent / ident).resolve()),))
    members = _group(runs, ident)
    if members:
        return Side(label, tuple(members), ident)
    names = [r.run_id for r in runs] + sorted({g for r in runs if (g := r.manifest().group)})
    raise UserError(Problem(paths.display(parent), label, unknown_name("run or seed group", ident, names)))


def resolve(token: str) -> Side:
    """The side a command-line argument names (see the module docstring)."""
    as_path = Path(token)
    if (as_path / rundir.MANIFEST).is_file():  # a folder: named by its recipe and run id (paths are long)
        run = RunDir(as_path.resolve())
        return Side(f"{run.manifest().recipe}@{run.run_id}", (run,))
    if "@" in token:
        recipe, ident = token.rsplit("@", 1)
        return _in_recipe(loading.recipe_name(recipe), ident, token)
    runs_dir = paths.runs_dir()
    if (runs_dir / loading.recipe_name(token) / rundir.LATEST).exists():  # a recipe's name or its file
        return _whole_group(rundir.find(loading.recipe_name(token)), token)
    recipes = sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith("_")) \
        if runs_dir.is_dir() else []
    if lookup.holders(token):
        return Side(token, (lookup.by_id(token),))
    for recipe_dir in recipes:
        members = _group(rundir.runs_in(recipe_dir), token)
        if members:
            return Side(token, tuple(members), token)
    try:
        loading.find(token)
    except UserError:
        raise UserError(Problem(paths.display(runs_dir), token, "not a run id, seed group id, run folder or recipe "
                                "with runs; " + unknown_name("recipe", token, [p.name for p in recipes]))) from None
    raise UserError(Problem(paths.display(runs_dir), token, f"recipe {token!r} has no runs yet; run "
                            f"`recipe train {token}` and `recipe eval {token}` first"))


def require_evaluated(side: Side) -> Side:
    """The side, when every run in it has eval/summary.json; else a UserError naming the `recipe eval` to run."""
    problems = []
    for run in side.runs:
        if not run.summary_path.is_file():
            manifest = run.manifest()
            problems.append(Problem(paths.display(run.path), side.label, f"not evaluated (status: "
                                    f"{manifest.status.value}; no {SUMMARY}); run `recipe eval {manifest.recipe} "
                                    f"--run {run.run_id}` first"))
    if problems:
        raise UserError(problems)
    return side


def sides(tokens: list[str]) -> list[Side]:
    """Resolve and check every argument; the same run twice is an error (it would be compared with itself)."""
    resolved = [require_evaluated(resolve(t)) for t in tokens]
    seen: dict[Path, str] = {}
    for side in resolved:
        for run in side.runs:
            if run.path in seen and seen[run.path] != side.label:
                raise UserError(Problem(paths.display(run.path), side.label, f"also named by {seen[run.path]!r}; "
                                        "each run may stand on one side only"))
            seen[run.path] = side.label
    return resolved
