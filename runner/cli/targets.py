"""One grammar for every verb: how a run is named (runner.runs.lookup) and which key=value overrides a verb that
acts on a finished run can still take."""
from __future__ import annotations

from runner.core import paths
from runner.core.errors import Problem, UserError
from runner.recipe import loading
from runner.recipe.schema import Recipe
from runner.runs import lookup, rundir
from runner.runs.rundir import RunDir

OVERRIDES_HELP = "overrides, e.g. train.learning_rate=1e-4 (anywhere on the line)"


def with_recipe(sub):
    """A verb on a recipe: RECIPE (a name or a path) then key=value overrides."""
    sub.add_argument("recipe", help="recipe name (recipes/**/<name>.yaml) or path")
    sub.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    return sub


# The sections a recipe may still change once its run is trained (as `recipe eval` and `recipe publish` read them).
AFTER_TRAINING = ("eval", "publish")


def with_run(sub):
    """A verb on a run: RECIPE, RECIPE@RUN, a run id or a run folder (and --run RUN), then key=value overrides."""
    sub.add_argument("recipe", metavar="RECIPE[@RUN]", help=f"which run: {lookup.SPELLINGS}")
    sub.add_argument("overrides", nargs="*", metavar="key=value",
                     help="overrides (anywhere on the line) of what can change after training: "
                     f"{', '.join(f'{s}.*' for s in AFTER_TRAINING)}; another key must be as the run was made")
    sub.add_argument("--run", default=None, metavar="RUN", help="a run id of RECIPE (the same as RECIPE@RUN; "
                     "default: its latest run)")
    return sub


def run_of(args) -> RunDir:
    """The run a verb's arguments name."""
    return lookup.find(args.recipe, args.run)


def names_recipe_file(args) -> str | None:
    """The recipe (name or path) the argument names, when it names one rather than a bare run id or folder."""
    return lookup.parse(args.recipe, args.run).recipe


def recipe_file_now(args) -> Recipe | None:
    """The recipe file the argument names, as it is now with the overrides (its eval and publish sections may have
    changed since training); None when the argument is a bare run id or folder."""
    recipe_file = names_recipe_file(args)
    return None if recipe_file is None else loading.load(recipe_file, args.overrides).recipe


def current_recipe(args, run: RunDir) -> Recipe:
    """The recipe as it is now, overrides applied: the recipe file when the argument names one, else the run's."""
    return recipe_file_now(args) or loading.with_overrides(run.recipe(), args.overrides,
                                                           paths.display(run.file(rundir.RESOLVED)))


def _key(text: str) -> str:
    return ".".join(loading.parse_override(text)[0])


def _after_training(key: str) -> bool:
    return key.split(".", 1)[0] in AFTER_TRAINING


def run_recipe(args, run: RunDir, verb: str) -> Recipe:
    """The finished run's own recipe with the overrides of what can change after training (AFTER_TRAINING). Any
    other override is exit 2 when it would change the run's recipe; one that repeats how the run was made (a shared
    `args=` of `make train eval report`) is accepted and changes nothing."""
    recipe, where = run.recipe(), paths.display(run.file(rundir.RESOLVED))
    problems = []
    trained = recipe.model_dump(mode="json", by_alias=True)
    for text in args.overrides:
        key = _key(text)
        if _after_training(key):
            continue
        if loading.with_overrides(recipe, [text], where).model_dump(mode="json", by_alias=True) == trained:
            continue
        problems.append(Problem(f"override {text!r}", key, f"`recipe {verb}` acts on the finished run "
                                f"{run.path.parent.name}@{run.run_id}, which was made with another {key}; only "
                                f"{', '.join(f'{s}.*' for s in AFTER_TRAINING)} can change after training. To "
                                f"change {key}, train a new run: recipe train {run.path.parent.name} {text}"))
    if problems:
        raise UserError(problems)
    return loading.with_overrides(recipe, [t for t in args.overrides if _after_training(_key(t))], where)


def finished_run(args, verb: str) -> tuple[RunDir, Recipe]:
    """The run a verb on a finished run names, and its recipe with the overrides it can take (run_recipe)."""
    run = run_of(args)
    return run, run_recipe(args, run, verb)
