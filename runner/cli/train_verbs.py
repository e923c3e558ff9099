"""Verbs that make runs: tiny-model, prepare (the data), plan, train (one run, a resumed one, or one per seed),
merge."""
from __future__ import annotations

from pathlib import Path

from runner.cli import targets
from runner.core import console, paths
from runner.core.errors import Problem, UserError
from runner.recipe import loading
from runner.runs import lookup
from runner.train.engine import TARGETS


def cmd_tiny_model(args) -> int:
    from runner.models import tiny

    log = paths.cache_dir() / "logs" / "tiny-model.log"  # torch's and transformers' warnings, not the terminal
    with console.third_party_to(log, args.verbose):
        built = tiny.build(args.out)  # None: models/tiny-llama
    console.result(paths.display(built) + "\n")
    return 0


def cmd_prepare(args) -> int:
    from runner.data.prepare import prepare

    prepared = prepare(loading.load(args.recipe, args.overrides))
    info = prepared.info
    print(f"prepared {paths.display(prepared.dir)}")
    unit = {"pairs": "pairs", "kto": "labeled rows"}.get(info.rows, "rows")
    print(f"  {unit}: {info.counts}  duplicates removed: {info.duplicates_removed}")
    for source, report in info.sources.items():
        identical = f", {report.identical_pairs} identical pairs dropped" if info.rows == "pairs" else ""
        print(f"  {source}: {report.rows} rows, {report.incomplete} incomplete{identical}")
    for split, stats in info.stats.items():
        per_row = stats.tokens_per_row.model_dump() if stats.tokens_per_row else {}
        print(f"  {split}: {stats.rows} rows, {stats.tokens} tokens, per row {per_row}, "
              f"{stats.over_max_seq_len} over max_seq_len ({stats.overlength_action})")
    return 0


def cmd_plan(args) -> int:
    from runner.cli.fit_verbs import plan_section
    from runner.train.plan import plan_run

    loaded = loading.load(args.recipe, args.overrides)
    run = plan_run(loaded, args.target)
    print(f"planned {paths.display(run.path)}:")
    for file in sorted(run.path.iterdir()):
        print(f"  {file.name}")
    print(f"start it with:\n  {run.manifest().command}")
    print(plan_section(loaded, args.overrides, args.verbose), end="")  # the memory fit, as `recipe fit` shows it
    return 0


def cmd_train_seeds(args) -> int:
    """One run per seed (train.seed overridden), all tagged with one group id for compare and gate."""
    import time

    from runner.cli.followups import after_train, warm_up
    from runner.recipe.sweep_grid import parse_seeds
    from runner.train.launch import train

    seeds = parse_seeds(args.seeds)
    if args.resume is not None or args.target == "slurm":
        raise UserError(Problem("--seeds", "", "trains new runs one after another; it cannot be combined with "
                                "--resume or --target slurm (submit one job per seed instead)"))
    if any(o.split("=", 1)[0] == "train.seed" for o in args.overrides):
        raise UserError(Problem("--seeds", "", "also given train.seed=...; use one or the other"))
    name = loading.recipe_name(args.recipe)
    group = f"seeds-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{'-'.join(map(str, seeds))}"
    for seed in seeds:
        run = after_train(train(loading.load(args.recipe, [*args.overrides, f"train.seed={seed}"]), args.target,
                                verbose=args.verbose, meanwhile=warm_up))
        manifest = run.update(group=group)
        summary = manifest.train
        loss = f"loss {_figure(summary.first_loss)} -> {_figure(summary.final_loss)}" if summary else "no metrics"
        print(f"trained {paths.display(run.path)} (seed {seed}, group {group}): {loss}")
    print(f"seed group {group}: evaluate each run (`recipe eval {name} --run RUN_ID`), then "
          f"`recipe compare {name}@{group} OTHER` or `recipe gate {name} --run {group} --baseline RUN`")
    return 0


def cmd_train(args) -> int:
    from runner.cli.followups import after_train, warm_up
    from runner.train.launch import train

    if args.seeds is not None:
        return cmd_train_seeds(args)
    recipe, resume = _train_target(args)
    run = after_train(train(loading.load(recipe, args.overrides), args.target, resume, detach=args.detach,
                            verbose=args.verbose, meanwhile=warm_up))  # the card; publish.merge_adapter's merge
    manifest = run.manifest()
    if manifest.status.value == "submitted":
        print(f"submitted {paths.display(run.path)} as slurm job {manifest.slurm_job_id}")
        return 0
    summary = manifest.train
    loss = f"loss {_figure(summary.first_loss)} -> {_figure(summary.final_loss)}" if summary else "no metrics logged"
    print(f"trained {paths.display(run.path)}: {summary.steps if summary else 0} steps, {loss}")
    return 0


def _train_target(args) -> tuple[str, str | bool]:
    """(recipe, resume) for `recipe train`: RECIPE@RUN, a run id or a run folder name the run --resume continues."""
    resume = False if args.resume is None else args.resume
    name = lookup.parse(args.recipe, args.resume or None, option="--resume")
    if name.recipe is not None and name.run_id is None:
        return name.recipe, resume
    if args.resume is None:
        raise UserError(Problem(args.recipe, "", "names a run; `recipe train` starts a new run of a recipe, or with "
                                f"--resume continues this one: recipe train {args.recipe} --resume"))
    run = name.find()
    return name.recipe or run.manifest().recipe, run.run_id


def _figure(value: float | None) -> str:
    """A figure for people: four significant digits."""
    return "-" if value is None else f"{value:.4g}"


def cmd_merge(args) -> int:
    from runner.cli.followups import merge_with_card

    run, _ = targets.finished_run(args, "merge")
    print(f"merged model: {paths.display(merge_with_card(run))}")
    return 0


def register(verb, with_recipe) -> None:
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
                       help="continue a run (the latest, or RUN; RECIPE@RUN, a run id or a run folder also name it) "
                       "from its newest checkpoint")
    train.add_argument("--seeds", default=None, metavar="1,2,3",
                       help="train one run per seed (train.seed), tagged with one seed group id for compare and gate")
    targets.with_run(verb("merge", cmd_merge, "merge a run's LoRA adapter into the base model -> run/merged/"))
