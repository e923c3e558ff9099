"""`recipe sweep`: a grid of overrides × seeds trained and evaluated as ordinary runs, then one decision.

Each variant × seed is an ordinary run of the recipe with its overrides (manifest, metrics, eval). A run that
already exists for the same resolved recipe (its fingerprint) is reused: evaluated, it is taken as it is; trained,
it is evaluated; interrupted or failed, it resumes from its newest checkpoint. A variant that fails is reported and
the others go on; Ctrl-C stops cleanly, with sweep.json saying how far the sweep got. The decision is
runner.decide.sweep's; the files are runs/_sweep/<recipe>-<key>/sweep.json, sweep.md and sweep-loss.png.
"""
from __future__ import annotations

import time

from runner.core import console, paths
from runner.core.errors import Problem, RunFailed, UserError
from runner.recipe import loading


def _existing(name: str, fingerprint: str):
    """The run of `name` trained from this resolved recipe, the most finished first (evaluated, trained, other)."""
    from runner.runs import rundir

    found = []
    for run in rundir.runs_in(rundir.recipe_runs(name)):
        try:
            manifest = run.manifest()
        except UserError:
            continue
        if manifest.fingerprint == fingerprint:
            rank = {"evaluated": 0, "trained": 1}.get(manifest.status.value, 2)
            found.append((rank, -run.path.stat().st_mtime, run))
    return min(found, key=lambda f: f[:2])[2] if found else None


def _evaluate(run, recipe, verbose: bool) -> None:
    from runner.cli.followups import after_eval
    from runner.evaluate import run_suite

    with console.third_party_to(run.log_path("eval"), verbose):
        run_suite.evaluate(run, recipe)
        after_eval(run)


def _one(name: str, loaded, entry, verbose: bool):
    """Train (or reuse, or resume) and evaluate one variant × seed; entry (a SeedRun) records what happened."""
    from runner.cli.followups import after_train
    from runner.train.launch import train

    run = _existing(name, loaded.fingerprint)
    status = run.manifest().status.value if run else None
    if status == "evaluated":
        entry.status, entry.run_id = "reused", run.run_id
        console.say(f"  reusing {run.run_id} (evaluated)")
        return run
    if status != "trained":
        resume = run.run_id if run is not None else False
        console.say(f"  {'resuming ' + run.run_id if run else 'training'}")
        run = after_train(train(loaded, "local", resume, verbose=verbose))
    entry.run_id = run.run_id
    console.say(f"  evaluating {run.run_id}")
    _evaluate(run, loaded.recipe, verbose)
    entry.status = "evaluated"
    return run


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


def cmd_sweep(args) -> int:
    from runner.recipe import suites, sweep_grid
    from runner.runs.sweep_file import SWEEP_FILE, SWEEP_MD, SeedRun, SweepFile, VariantEntry, sweep_dir

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
    variants = sweep_grid.variants(axes)
    plans = [(v, seed, loading.load(args.recipe, [*args.overrides, *v.overrides,
                                                  *([f"train.seed={seed}"] if seed is not None else [])]))
             for v in variants for seed in (seeds or [None])]  # every variant validates before anything trains
    key = sweep_grid.sweep_key(name, list(args.overrides), axes, seeds)
    folder = sweep_dir(name, key)
    folder.mkdir(parents=True, exist_ok=True)
    sweep = SweepFile(recipe=name, key=key, fixed=list(args.overrides), axes=axes, seeds=seeds, metric=metric,
                      variants=[VariantEntry(name=v.name, overrides=list(v.overrides)) for v in variants])
    entries = {v.name: entry for v, entry in zip(variants, sweep.variants, strict=True)}
    console.say(f"sweep {paths.display(folder)}: {len(variants)} variants × {len(seeds or [None])} seeds = "
                f"{len(plans)} runs, metric {metric}")
    failed = 0
    started = time.monotonic()
    for index, (variant, seed, loaded) in enumerate(plans, 1):
        entry = SeedRun(seed=seed)
        entries[variant.name].runs.append(entry)
        console.say(f"[{index}/{len(plans)}] {variant.name}" + (f" seed {seed}" if seed is not None else ""))
        try:
            _one(name, loaded, entry, args.verbose)
        except (UserError, RunFailed) as err:
            failed += 1
            entry.status, entry.error = "failed", str(err).splitlines()[0][:300]
            console.say(f"  failed: {entry.error}; the other variants go on")
        finally:
            sweep.write(folder / SWEEP_FILE)  # after every run: an interrupted sweep shows how far it got
    markdown = _decide(sweep, folder)
    print(markdown, end="")
    print(f"sweep: {paths.display(folder / SWEEP_MD)} ({len(plans) - failed} of {len(plans)} runs evaluated, "
          f"{time.monotonic() - started:.0f} s)")
    return 1 if failed else 0


def register(verb, with_recipe) -> None:
    sweep = with_recipe(verb("sweep", cmd_sweep, "train and evaluate a grid of overrides × seeds as ordinary runs "
                             "(reusing finished ones), then decide with training noise in view: sweep.md"))
    sweep.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="one axis of the grid (repeatable)")
    sweep.add_argument("--seeds", default=None, metavar="1,2,3", help="train every variant once per seed "
                       "(default: the recipe's train.seed)")
    sweep.add_argument("--metric", default=None, help="the metric that decides (default: the suite's first)")

