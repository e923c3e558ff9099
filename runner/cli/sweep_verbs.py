"""`recipe sweep`: a grid of overrides × seeds (or an Optuna search over ranges) trained and evaluated as ordinary
runs, here or as a SLURM job array, then one decision with training noise in view, and --pick to write the chosen
variant back into the recipe. How the runs get made is sweep_execute's; the decision is runner.decide.sweep's; the
files are runs/_sweep/<recipe>-<key>/sweep.json, sweep.md and sweep-loss.png (and optuna.journal for a search).
"""
from __future__ import annotations

import time

from runner.cli import sweep_execute as execute
from runner.cli.sweep_execute import Setup
from runner.core import console, paths
from runner.core.errors import Problem, UserError
from runner.recipe import loading


def _metric(suite, asked: str | None) -> str:
    computed = list(suite.metrics) + [f"{t}/" for t in suite.lm_eval_tasks]
    if asked is None:
        if not suite.metrics:
            raise UserError(Problem("--metric", "", f"suite {suite.name} has no held-out metric; name one, e.g. "
                                    "--metric arc_easy/acc"))
        return suite.metrics[0]
    if asked in suite.metrics or any(asked.startswith(c) for c in computed if c.endswith("/")):
        return asked
    raise UserError(Problem("--metric", "", f"suite {suite.name} does not compute {asked!r}; it computes "
                            f"{', '.join(suite.metrics)}"))




def _setup(args) -> Setup:
    """Every variant × seed (a grid) or every key of the space (a search) loaded and validated before anything
    trains."""
    from runner.recipe import suites, sweep_grid

    name = loading.recipe_name(args.recipe)
    axes = sweep_grid.parse_axes(args.grid or [])
    if not axes:
        raise UserError(Problem("--grid", "", "a sweep needs at least one axis, e.g. --grid "
                                "train.learning_rate=1e-4,1e-3"))
    seeds = sweep_grid.parse_seeds(args.seeds)
    if seeds and ("train.seed" in axes or any(o.startswith("train.seed=") for o in args.overrides)):
        raise UserError(Problem("--seeds", "", "train.seed is also set by --grid or an override; use one or the "
                                "other"))
    base = loading.load(args.recipe, args.overrides)
    metric = _metric(suites.for_recipe(base.recipe), args.metric)
    setup = Setup(recipe=args.recipe, name=name, fixed=list(args.overrides), axes=axes, seeds=seeds, metric=metric,
                  plans=[])
    if args.search == "optuna":
        if not args.trials or args.trials < 1:
            raise UserError(Problem("--trials", str(args.trials), "a search needs --trials N (the study's total), "
                                    "N at least 1"))
        setup.space, setup.trials = sweep_grid.parse_space(axes), args.trials
        for key, space in setup.space.items():  # each key and both ends of its range must make a valid recipe
            for value in space.choices or (space.low, space.high):
                loading.load(args.recipe, [*args.overrides, f"{key}={space.format(value)}"])
        return setup
    if sweep_grid.has_ranges(axes):
        raise UserError(Problem("--grid", "", "a range (LOW..HIGH) is sampled by a search: add --search optuna "
                                "--trials N, or list the values"))
    setup.plans = [(v, seed, loading.load(args.recipe, [*args.overrides, *v.overrides, *setup.seed_overrides(seed)]))
                   for v in sweep_grid.variants(axes) for seed in (seeds or [None])]
    return setup


def _decide(sweep, folder) -> str:
    from runner.decide import items as it
    from runner.decide import loss_plot
    from runner.decide import sweep as decision
    from runner.runs import rundir
    from runner.runs.sweep_file import SWEEP_FILE, SWEEP_MD, SWEEP_PLOT

    groups, cost = {}, 0.0
    for variant in sweep.variants:
        runs = []
        for entry in variant.runs:
            if entry.run_id and entry.status in ("reused", "evaluated"):
                data = it.load_run(rundir.RunDir(rundir.recipe_runs(sweep.recipe) / entry.run_id))
                runs.append(data)
                cost += sum(v for k, v in data.manifest.timings.items() if k in ("train_s", "eval_s"))
        groups[variant.name] = runs
    sweep.decision = decision.decide(sweep, groups)
    sweep.cost_s = round(cost, 1)
    plot = loss_plot.write(folder / SWEEP_PLOT, [(name, runs) for name, runs in groups.items() if runs],
                           title="Loss: every run of the sweep")
    sweep.write(folder / SWEEP_FILE)
    markdown = decision.markdown(sweep, plot)
    (folder / SWEEP_MD).write_text(markdown, encoding="utf-8")
    return markdown


BEST = "best"


def _pick(args, sweep, folder) -> None:
    """Write the chosen variant's overrides into the recipe file (comments and `extends` kept, minor version bumped,
    the evidence quoted above each value), check that the file now resolves to that variant, and lock it."""
    import datetime

    from runner.core.atomic import write_text_atomic
    from runner.decide import sweep as decision
    from runner.recipe import edit, snapshots
    from runner.runs.sweep_file import SWEEP_MD

    rows = {r.variant: r for r in sweep.decision.rows} if sweep.decision else {}
    chosen = sweep.decision.best if args.pick == BEST and sweep.decision else args.pick
    evaluated = [name for name, row in rows.items() if row.mean is not None]
    if chosen not in evaluated:
        raise UserError(Problem("--pick", args.pick, "names no evaluated variant of this sweep; pick one of: "
                                + (", ".join(repr(v) for v in evaluated) or "(none evaluated)")))
    variant = next(v for v in sweep.variants if v.name == chosen)
    settings = [o for o in variant.overrides if not o.startswith("train.seed=")]
    if not settings:
        raise UserError(Problem("--pick", chosen, "differs from the others only in its seed, which is no setting to "
                                "keep; sweep a setting with --grid"))
    path = loading.find(args.recipe)
    where = paths.display(path)
    before_text = path.read_text(encoding="utf-8")
    before = loading.load(path)
    comment = decision.evidence(sweep, chosen, paths.display(folder / SWEEP_MD),
                                datetime.date.today().isoformat())
    text = before_text
    for override in settings:
        keys, _ = loading.parse_override(override)
        text = edit.set_value(text, keys, override.partition("=")[2].strip(), where, comment)
    version = edit.bump_minor(before.recipe.version)
    text = edit.set_value(text, ["version"], version, where)
    write_text_atomic(path, text)
    try:
        after = loading.load(path)
        expected = loading.with_overrides(before.recipe, [*settings, f"version={version}"], where)
        if after.recipe != expected:
            raise UserError(Problem(where, "", "does not resolve to the picked variant after the edit; the file is "
                                    "left as it was, set " + " ".join(settings) + " by hand"))
    except UserError:
        write_text_atomic(path, before_text)
        raise
    locked = ""
    if path in loading.recipe_files(library=False).values():
        lock = paths.resolved_dir() / f"{after.recipe.name}.yaml"
        write_text_atomic(lock, snapshots.snapshot(after))
        locked = f", locked in {paths.display(lock)}"
    fixed = (f"; the sweep's fixed overrides ({' '.join(sweep.fixed)}) are not written" if sweep.fixed else "")
    console.say(f"picked {chosen} into {where} (version {before.recipe.version} -> {version}{locked}){fixed}; "
                "review it as a diff, e.g. `git diff recipes/`")


def cmd_sweep(args) -> int:
    from runner.recipe import sweep_grid, sweep_spec
    from runner.runs.sweep_file import SWEEP_FILE, SWEEP_MD, SweepFile, VariantEntry, sweep_dir

    spec = sweep_spec.find(args.recipe)
    if spec is not None:
        sweep_spec.apply(args, sweep_spec.load(spec))
    args.search, args.target = args.search or "grid", args.target or "local"
    setup = _setup(args)
    key = sweep_grid.sweep_key(setup.name, setup.fixed, setup.axes, setup.seeds,
                               ("optuna", setup.trials, setup.metric) if setup.space is not None else None)
    folder = sweep_dir(setup.name, key)
    if args.task is not None:
        return execute.task(setup, args.task, folder, key, args.verbose)
    if args.status:
        return execute.status(setup, folder)
    if loading.load(args.recipe, args.overrides).recipe.hardware.nodes > 1:
        raise UserError(Problem("hardware.nodes", "", "a sweep trains each run on one node (an array task, or this "
                                "machine), and this recipe asks for several; sweep it one node wide "
                                "(hardware.nodes=1), or train its variants with `recipe train --target slurm` one by "
                                "one"))
    if args.parallel is not None and args.parallel < 1:
        raise UserError(Problem("--parallel", str(args.parallel), "must be at least 1"))
    folder.mkdir(parents=True, exist_ok=True)
    previous = SweepFile.read(folder / SWEEP_FILE) if (folder / SWEEP_FILE).is_file() else None
    variants = sweep_grid.variants(setup.axes) if setup.space is None else []
    sweep = SweepFile(recipe=setup.name, key=key, fixed=setup.fixed, axes=setup.axes, seeds=setup.seeds,
                      metric=setup.metric, search=args.search, trials=setup.trials, target=args.target,
                      parallel=args.parallel or 1,
                      variants=[VariantEntry(name=v.name, overrides=list(v.overrides)) for v in variants])
    entries = {v.name: entry for v, entry in zip(variants, sweep.variants, strict=True)}
    runs = (f"{setup.trials} trials" if setup.space is not None else
            f"{len(variants)} variants × {len(setup.seeds or [None])} seeds = {len(setup.plans)} runs")
    console.say(f"sweep {paths.display(folder)}: {runs}, metric {setup.metric}"
                + (" (on SLURM)" if args.target == "slurm" else ""))
    started = time.monotonic()
    if args.target == "slurm":
        failed = execute.on_slurm(setup, args.parallel, entries, sweep, folder, previous)
    elif args.parallel and args.parallel > 1:
        execute.fits_in_parallel(setup, args.parallel)
        failed = execute.in_parallel(setup, args.parallel, entries, sweep, folder)
    elif setup.space is not None:
        failed = execute.search_worker(setup, folder, key, "local", args.verbose)
    else:
        failed = execute.locally(setup, entries, sweep, folder, args.verbose)
    if setup.space is not None:
        failed = execute.from_study(setup, sweep, folder, key)
    sweep.estimate = execute.estimate(setup, sweep)
    markdown = _decide(sweep, folder)
    print(markdown, end="")
    if args.pick:
        _pick(args, sweep, folder)
    evaluated = sum(r.status in ("reused", "evaluated") for v in sweep.variants for r in v.runs)
    print(f"sweep: {paths.display(folder / SWEEP_MD)} ({evaluated} of {evaluated + failed} runs evaluated, "
          f"{time.monotonic() - started:.0f} s)")
    return 1 if failed else 0


def register(verb, with_recipe) -> None:
    sweep = with_recipe(verb("sweep", cmd_sweep, "train and evaluate a grid of overrides × seeds as ordinary runs "
                             "(reusing finished ones), here or as a SLURM array, or an Optuna search; then decide "
                             "with training noise in view: sweep.md. RECIPE may also be a sweep file, "
                             "sweeps/<name>.yaml"))
    sweep.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="one axis of the grid (repeatable)")
    sweep.add_argument("--seeds", default=None, metavar="1,2,3", help="train every variant once per seed "
                       "(default: the recipe's train.seed)")
    sweep.add_argument("--metric", default=None, help="the metric that decides (default: the suite's first)")
    sweep.add_argument("--pick", default=None, metavar="VARIANT",
                       help="write a variant into the recipe file: `best`, or one by name, e.g. "
                       "'train.learning_rate=1e-4' (comments and extends kept, minor version bumped, the evidence in a "
                       "comment)")
    sweep.add_argument("--search", choices=("grid", "optuna"), default=None,
                       help="grid (the default): every combination of the --grid values; optuna: --trials N "
                       "samples from ranges such as train.learning_rate=log:1e-5..1e-3 or "
                       "method.lora.r=int:4..32 (a study in the sweep folder that every worker shares)")
    sweep.add_argument("--trials", type=int, default=None, metavar="N", help="--search optuna: the study's total")
    sweep.add_argument("--target", choices=("local", "slurm"), default=None,
                       help="local (the default): the runs on this machine; slurm: one job array, a task per run "
                       "(a search: per worker), requeue-safe (a requeued task resumes its run from its "
                       "checkpoint), waited for")
    sweep.add_argument("--parallel", type=int, default=None, metavar="N",
                       help="at most N runs at once: here, N processes sharing the cores (checked against `recipe "
                       "fit`'s memory estimate); on SLURM, the array's task limit (a grid's default: all). A search "
                       "runs N workers sharing the study (default 1)")
    sweep.add_argument("--status", action="store_true", help="show where each run of the sweep stands (run folders, "
                       "and the SLURM array's tasks from scontrol) without starting anything")
    sweep.add_argument("--task", type=int, default=None, metavar="I", help="run the I-th task of the sweep (what "
                       "each SLURM array task, or each --parallel process, runs)")
