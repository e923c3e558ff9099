"""Which run a command-line argument names. Every verb that acts on a run reads it the same way:

  RECIPE         the recipe's latest run (RECIPE is a name, or a path to its YAML)
  RECIPE@RUN     that recipe's run RUN
  RUN            a run id, found among every recipe's runs
  FOLDER         a run folder (one holding manifest.json)
and `--run RUN` is an alias for the @RUN part. Seed groups (compare, gate) build on this in runner.decide.runs_select.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.core import paths
from runner.core.errors import Problem, UserError
from runner.runs import rundir
from runner.runs.rundir import RunDir

SPELLINGS = "RECIPE (its latest run), RECIPE@RUN, a run id, or a run folder"


@dataclass(frozen=True)
class RunName:
    """A command-line argument taken apart: the recipe it names (None for a bare run id or folder) and the run."""

    recipe: str | None  # a recipe name or a path to its YAML, as the user wrote it
    run_id: str | None  # None: the recipe's latest run
    folder: Path | None = None

    def find(self) -> RunDir:
        if self.folder is not None:
            return RunDir(self.folder.resolve())
        if self.recipe is not None:
            from runner.recipe import loading

            return rundir.find(loading.recipe_name(self.recipe), self.run_id)
        return by_id(self.run_id)


def parse(token: str, run_option: str | None = None, option: str = "--run") -> RunName:
    """The RunName of `token` (see the module docstring); `run_option` is the value of --run, if given."""
    if (Path(token) / rundir.MANIFEST).is_file():
        if run_option:
            raise UserError(Problem(option, run_option, f"{token!r} is already a run folder; drop {option}"))
        return RunName(None, Path(token).name, Path(token))
    recipe, at, run_id = token.rpartition("@") if "@" in token and not Path(token).exists() else (token, "", "")
    if at and not (recipe and run_id):
        raise UserError(Problem(token, "", f"write {SPELLINGS}; e.g. tiny-cpu@20261130-091500-3f2a9c1d"))
    if at and run_option and run_option != run_id:
        raise UserError(Problem(option, run_option, f"{token!r} already names run {run_id!r}; give one or the other"))
    run_id = run_id or run_option or None
    if not at and not run_option and _is_run_id(token):
        return RunName(None, token)
    return RunName(recipe, run_id)


def find(token: str, run_option: str | None = None) -> RunDir:
    """The run a verb's argument names (see the module docstring)."""
    return parse(token, run_option).find()


def _is_run_id(token: str) -> bool:
    """A token that is no recipe but a run folder's name somewhere under runs/ (recipe names win)."""
    from runner.recipe import loading

    if "/" in token or Path(token).suffix in (".yaml", ".yml"):
        return False
    try:
        loading.find(token)
        return False
    except UserError:
        return any(holders(token))


def holders(run_id: str) -> list[Path]:
    """The folders of every recipe's run with this id (normally one)."""
    runs = paths.runs_dir()
    if not runs.is_dir():
        return []
    return [p / run_id for p in sorted(runs.iterdir())
            if p.is_dir() and not p.name.startswith("_") and (p / run_id / rundir.MANIFEST).is_file()]


def by_id(run_id: str) -> RunDir:
    """The run with this id, in whichever recipe's runs it is; a UserError when none or several have it."""
    found = holders(run_id)
    if not found:
        raise UserError(Problem(paths.display(paths.runs_dir()), "", f"no run {run_id!r} under any recipe; write "
                                f"{SPELLINGS}"))
    if len(found) > 1:
        names = ", ".join(f"{p.parent.name}@{run_id}" for p in found)
        raise UserError(Problem(paths.display(paths.runs_dir()), "", f"run id {run_id!r} is in several recipes' "
                                f"runs; name one: {names}"))
    return RunDir(found[0].resolve())
