"""Sweep files: sweeps/<name>.yaml, a sweep written down to be reviewed like a recipe and run again the same way.

    sweep: 1                                   # the sweep-file language version
    recipe: smollm2-135m-sql-chatml
    overrides: ["eval.candidates=[finetuned]"] # fixed for every run
    grid:                                      # one axis per key: values, or a range for --search optuna
      train.learning_rate: [3e-4, 1e-3]
    seeds: [1, 2, 3]
    metric: sql_execution

`recipe sweep sweeps/<name>.yaml` (or `recipe sweep <name>`) runs it; options given on the command line win over the
file's, --grid adds axes. The same sweep typed out on the command line gives the same sweep folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runner.core import paths
from runner.core.errors import Problem, UserError
from runner.core.validation import describe, line_of
from runner.core.yamlio import read_yaml

SWEEP_VERSION = 1
Value = str | int | float | bool


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sweep: Literal[1] = Field(description="sweep-file language version")
    recipe: str = Field(description="the recipe swept: a name (recipes/**/<name>.yaml) or a path")
    description: str = Field("", description="what the sweep asks, for its reviewers")
    overrides: list[str] = Field([], description="key=value overrides every run shares")
    grid: dict[str, list[Value] | str] = Field(description="one axis per recipe key: a list of values, or (with "
                                               "search: optuna) a range such as log:1e-5..1e-3 or int:4..32")
    seeds: list[int] | None = Field(None, description="train every variant once per seed")
    metric: str | None = Field(None, description="the metric that decides (default: the suite's first)")
    search: Literal["grid", "optuna"] = Field("grid", description="grid, or an Optuna search over the ranges")
    trials: int | None = Field(None, description="search: optuna: the study's total number of trials")
    target: Literal["local", "slurm"] = Field("local", description="where the runs train")
    parallel: int | None = Field(None, description="at most this many runs at once (processes here, array tasks "
                                 "on SLURM); a search: this many workers")


def _text(value: Value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def find(argument: str) -> Path | None:
    """The sweep file the argument names (a path to one under a sweeps/ folder, or a name in the workspace's
    sweeps/), or None when it names a recipe."""
    path = Path(argument)
    if path.suffix in (".yaml", ".yml"):
        return path if path.parent.name == "sweeps" and path.is_file() else None
    named = paths.sweeps_dir() / f"{argument}.yaml"
    if "/" in argument or not named.is_file():
        return None
    from runner.recipe import loading

    if argument in loading.recipe_files():
        raise UserError(Problem(paths.display(named), "", f"a recipe is named {argument!r} too; name the sweep file "
                                f"by its path (recipe sweep sweeps/{argument}.yaml) or rename one of them"))
    return named


def load(path: Path) -> SweepSpec:
    where = paths.display(path)
    data, lines = read_yaml(path, where)
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            key, message = describe(error, SweepSpec)
            problems.append(Problem(where, key, message, line_of(key, lines)))
        raise UserError(problems) from None


def apply(args, spec: SweepSpec) -> None:
    """Fill the parsed command line from the sweep file: what the command line gives wins; --grid adds axes."""
    given = {entry.partition("=")[0].strip() for entry in args.grid or []}
    grid = [f"{key}={values if isinstance(values, str) else ','.join(_text(v) for v in values)}"
            for key, values in spec.grid.items() if key not in given]
    args.recipe, args.overrides = spec.recipe, [*spec.overrides, *args.overrides]
    args.grid = [*grid, *(args.grid or [])]
    args.seeds = args.seeds if args.seeds is not None else (",".join(map(str, spec.seeds)) if spec.seeds else None)
    args.metric = args.metric or spec.metric
    args.trials = args.trials if args.trials is not None else spec.trials
    args.parallel = args.parallel if args.parallel is not None else spec.parallel
    args.search, args.target = args.search or spec.search, args.target or spec.target
