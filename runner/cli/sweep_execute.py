"""How the runs of `recipe sweep` get made: one after another here, as one SLURM job array (a task per run, or per
search worker), or as the trials of an Optuna study; and where they stand (--status).

Each run is an ordinary run of the recipe with its overrides (manifest, metrics, eval). A run that already exists for
the same resolved recipe (its fingerprint) is reused: evaluated, it is taken as it is; trained, it is evaluated;
interrupted or failed, it resumes from its newest checkpoint. That one rule makes a sweep re-runnable and an array
task requeue-safe.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from runner.core import console, paths
from runner.core.errors import Problem, RunFailed, UserError
from runner.recipe import loading


@dataclass
class Setup:
    """A sweep as its command line (or sweep file) defines it, validated."""

    recipe: str  # as given: a name or a path
    name: str
    fixed: list[str]
    axes: dict[str, list[str]]
    seeds: list[int] | None
    metric: str
    plans: list  # grid: (Variant, seed, Loaded) for every run
    space: dict | None = None  # optuna: {key: Space}
    trials: int | None = None

    def seed_overrides(self, seed: int | None) -> list[str]:
        return [f"train.seed={seed}"] if seed is not None else []

    def study(self, folder, key: str, worker: str = ""):
        """A search's Optuna study in the sweep folder, its direction the metric's."""
        from runner.metrics import registry
        from runner.runs import sweep_study

        return sweep_study.open_study(folder, key, registry.higher_is_better(self.metric), worker)


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
    """Train (or reuse, or resume) and evaluate one variant × seed; entry (a SeedRun) records what happened.
    One process at a time per resolved recipe: two workers that drew the same values share one run."""
    from runner.core.atomic import file_lock
    from runner.runs.sweep_file import lock_path

    lock = lock_path(name, loaded.fingerprint)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock):
        return _one_locked(name, loaded, entry, verbose)


def _one_locked(name: str, loaded, entry, verbose: bool):
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
        # one process, or one per GPU through torchrun (standalone: a free port of its own) on this one node
        target = "torchrun" if loaded.recipe.hardware.world_size > 1 else "local"
        run = after_train(train(loaded, target, resume, verbose=verbose))
    entry.run_id = run.run_id
    console.say(f"  evaluating {run.run_id}")
    _evaluate(run, loaded.recipe, verbose)
    entry.status = "evaluated"
    return run




def _label(variant: str | None, seed: int | None) -> str:
    return (variant or "") + (f" seed {seed}" if seed is not None else "")


def locally(setup: Setup, entries, sweep, folder, verbose: bool) -> int:
    """Each run of the grid in turn on this machine; returns how many failed."""
    from runner.runs.sweep_file import SWEEP_FILE, SeedRun

    failed = 0
    for index, (variant, seed, loaded) in enumerate(setup.plans, 1):
        entry = SeedRun(seed=seed)
        entries[variant.name].runs.append(entry)
        console.say(f"[{index}/{len(setup.plans)}] {_label(variant.name, seed)}")
        try:
            _one(setup.name, loaded, entry, verbose)
        except (UserError, RunFailed) as err:
            failed += 1
            entry.status, entry.error = "failed", str(err).splitlines()[0][:300]
            console.say(f"  failed: {entry.error}; the other variants go on")
        finally:
            sweep.write(folder / SWEEP_FILE)  # after every run: an interrupted sweep shows how far it got
    return failed


def estimate(setup: Setup, sweep):
    """`recipe fit`'s time for every run of the sweep (one estimate per variant, times its seeds)."""
    from runner.estimate import fit
    from runner.runs.sweep_file import FitEstimate

    total = FitEstimate(device="", runs=0, hours=0.0, gpu_hours=0.0)
    try:
        with console.third_party_to(paths.cache_dir() / "logs" / "fit.log", False):
            for variant in sweep.variants:
                loaded = loading.load(setup.recipe, [*setup.fixed, *variant.overrides,
                                                     *setup.seed_overrides(variant.runs[0].seed if variant.runs
                                                                           else None)])
                report = fit.fit(loaded, suggest=False)
                time = report.time
                total.device = report.device.name
                total.runs += len(variant.runs)
                if time is None or time.hours is None:
                    return FitEstimate(device=report.device.name, runs=total.runs, note="recipe fit gives no time "
                                       "for this profile")
                total.hours += time.hours * len(variant.runs)
                total.gpu_hours += (time.gpu_hours or 0.0) * len(variant.runs)
                if time.cost_usd is not None:
                    total.cost_usd = (total.cost_usd or 0.0) + time.cost_usd * len(variant.runs)
    except UserError as err:
        return FitEstimate(device=total.device or "unknown", runs=total.runs, note=str(err).splitlines()[0][:200])
    return total


# ---------------------------------------------------------------- search (Optuna)


def _value(run, metric: str) -> float:
    from runner.decide import items as it

    data = it.load_run(run)
    if metric not in data.metrics:
        raise RunFailed(f"{run.run_id}: its evaluation has no {metric}")
    return data.metrics[metric].value


def search_worker(setup: Setup, folder, key: str, worker: str, verbose: bool) -> int:
    """Ask the study for trials and run them (each once per seed, valued by the metric's mean) until the study
    holds setup.trials; returns how many of this worker's trials failed."""
    from runner.runs import sweep_study
    from runner.runs.sweep_file import SeedRun

    study = setup.study(folder, key, worker)
    failed = 0
    while (trial := sweep_study.next_trial(study, folder, setup.space, setup.trials, worker)) is not None:
        console.say(f"trial {trial.number + 1} of {setup.trials}: {trial.name}")
        values = []
        try:
            for seed in setup.seeds or [None]:
                loaded = loading.load(setup.recipe, [*setup.fixed, *trial.overrides, *setup.seed_overrides(seed)])
                if seed is not None:
                    console.say(f"  seed {seed}")
                values.append(_value(_one(setup.name, loaded, SeedRun(seed=seed), verbose), setup.metric))
        except (UserError, RunFailed) as err:
            failed += 1
            sweep_study.finish(study, trial, None)
            console.say(f"  failed: {str(err).splitlines()[0][:300]}; the study goes on")
            continue
        sweep_study.finish(study, trial, sum(values) / len(values))
    return failed


def from_study(setup: Setup, sweep, folder, key: str) -> int:
    """sweep.variants from the study's trials (their runs found by fingerprint); returns how many failed."""
    from runner.runs import sweep_study
    from runner.runs.sweep_file import SeedRun, VariantEntry

    study = setup.study(folder, key)
    sweep.variants, failed = [], 0
    for trial, state in sweep_study.trials(study, setup.space):
        if any(v.name == trial.name for v in sweep.variants):
            continue  # two trials rounded to the same values share their runs
        entry = VariantEntry(name=trial.name, overrides=list(trial.overrides))
        for seed in setup.seeds or [None]:
            loaded = loading.load(setup.recipe, [*setup.fixed, *trial.overrides, *setup.seed_overrides(seed)])
            run = _existing(setup.name, loaded.fingerprint)
            status = run.manifest().status.value if run is not None else "failed"
            ok = status == "evaluated"
            entry.runs.append(SeedRun(seed=seed, run_id=run.run_id if run else None,
                                      status="evaluated" if ok else "failed",
                                      error=None if ok else f"trial {trial.number + 1} is {state.lower()}"))
            failed += not ok
        sweep.variants.append(entry)
    return failed


# ---------------------------------------------------------------- tasks: SLURM array tasks or local processes


def _task_command(setup: Setup, search: str) -> list[str]:
    """The sweep's own command line, as each task runs it (with --task i)."""
    grid = [a for key, values in setup.axes.items() for a in ("--grid", f"{key}={','.join(values)}")]
    recipe = str(loading.find(setup.recipe).resolve())  # tasks run from the workspace, and a name may be a sweep file's
    return [sys.executable, "-m", "runner", "sweep", recipe, *setup.fixed, *grid,
            *(["--seeds", ",".join(map(str, setup.seeds))] if setup.seeds else []), "--metric", setup.metric,
            *(["--search", search, "--trials", str(setup.trials)] if search != "grid" else [])]


def _tasks(setup: Setup, workers: int, entries, sweep, folder) -> tuple[list, list]:
    """(tasks, todo): a grid's runs not yet evaluated, one task each (the evaluated ones are reused now), or a
    search's workers (none when the study is done); todo pairs each grid task with its plan and entry."""
    from runner.runs.sweep_file import ArrayTask, SeedRun

    if setup.space is not None:
        from runner.runs import sweep_study

        study = setup.study(folder, sweep.key)
        if not sweep_study.unfinished(study, setup.trials):
            console.say(f"the study holds its {setup.trials} trials: nothing to run")
            return [], []
        return [ArrayTask(index=i) for i in range(min(workers, setup.trials))], []
    todo = []
    for variant, seed, loaded in setup.plans:
        entry = SeedRun(seed=seed)
        entries[variant.name].runs.append(entry)
        run = _existing(setup.name, loaded.fingerprint)
        if run is not None and run.manifest().status.value == "evaluated":
            entry.status, entry.run_id = "reused", run.run_id
            console.say(f"{_label(variant.name, seed)}: reusing {run.run_id} (evaluated)")
        else:
            todo.append((variant, seed, loaded, entry))
    return [ArrayTask(index=i, variant=v.name, seed=seed) for i, (v, seed, _, _) in enumerate(todo)], todo


def _collect(setup: Setup, tasks, todo, why) -> int:
    """After the tasks: each grid entry from its run folder; returns how many failed (why(task): how its task
    ended). A search's workers have no entries: its trials are read from the study afterwards."""
    if setup.space is not None:
        return 0
    index = {(t.variant, t.seed): t for t in tasks}
    failed = 0
    for variant, seed, loaded, entry in todo:
        run = _existing(setup.name, loaded.fingerprint)
        entry.run_id = run.run_id if run is not None else None
        manifest = run.manifest() if run is not None else None
        if manifest is not None and manifest.status.value == "evaluated":
            entry.status = "evaluated"
            continue
        failed += 1
        task = index.get((variant.name, seed))
        reason = manifest.error.message if manifest is not None and manifest.error else \
            why(task) if task is not None else "no task ran it"
        entry.status, entry.error = "failed", reason[:300]
        console.say(f"{_label(variant.name, seed)}: failed: {entry.error}")
    return failed


def fits_in_parallel(setup: Setup, n: int) -> None:
    """--parallel N here: N runs at once must fit the memory of the recipe's device by `recipe fit`'s estimate (the
    host's RAM for a CPU profile, the profile's GPU otherwise), judged by the hungriest variant (exit 2)."""
    from runner.estimate import fit

    plans = [p[2] for p in setup.plans] or [loading.load(setup.recipe, setup.fixed)]
    try:
        with console.third_party_to(paths.cache_dir() / "logs" / "fit.log", False):
            reports = [fit.fit(loaded, timing=False, suggest=False) for loaded in plans]
    except UserError as err:
        console.say(f"--parallel {n}: memory not checked, `recipe fit` cannot estimate it: "
                    f"{str(err).splitlines()[0][:200]}")
        return
    report = max(reports, key=lambda r: r.memory.peak_gib)
    limit = report.device.memory_gib
    if limit is None or report.memory.peak_gib * n <= limit:
        return
    most = max(int(limit // report.memory.peak_gib), 1)
    raise UserError(Problem("--parallel", str(n), f"{n} runs at once need about {report.memory.peak_gib * n:.1f} GiB "
                            f"({report.memory.peak_gib:.2f} GiB each by `recipe fit`), more than the "
                            f"{limit:.1f} GiB of {report.device.name}; use --parallel {most} or less"))


def in_parallel(setup: Setup, n: int, entries, sweep, folder) -> int:
    """The sweep's tasks as up to n processes at once on this machine (`recipe sweep ... --task i`, each with its
    share of the cores, its output in logs/task-local_<i>.out); returns how many grid runs failed."""
    import os
    import subprocess
    import time

    from runner.runs.sweep_file import SWEEP_FILE

    tasks, todo = _tasks(setup, n, entries, sweep, folder)
    if not tasks:
        return 0
    sweep.tasks = tasks
    sweep.write(folder / SWEEP_FILE)  # the tasks read their run from sweep.json
    threads = str(max(1, (os.cpu_count() or 1) // min(n, len(tasks))))
    env = os.environ | {"RECIPE_RUNNER_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    (folder / "logs").mkdir(exist_ok=True)
    pending, running, codes = list(tasks), {}, {}
    command = _task_command(setup, sweep.search)
    try:
        while pending or running:
            while pending and len(running) < n:
                task = pending.pop(0)
                log = folder / "logs" / f"task-local_{task.index}.out"
                with log.open("a") as out:
                    running[task.index] = subprocess.Popen([*command, "--task", str(task.index)], env=env,
                                                           cwd=paths.workspace(), stdout=out, stderr=subprocess.STDOUT)
                console.say(f"[{task.index + 1}/{len(tasks)}] {_label(task.variant, task.seed) or 'worker'}: started "
                            f"(log: {paths.display(log)})")
            for index, process in list(running.items()):
                if process.poll() is not None:
                    codes[index] = running.pop(index).returncode
                    console.say(f"[{index + 1}/{len(tasks)}] {'done' if codes[index] == 0 else 'failed'}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        for process in running.values():
            process.terminate()  # each stops its trainer and marks its run failed, to resume next time
        for process in running.values():
            process.wait()
        raise
    return _collect(setup, tasks, todo, lambda task: f"its process exited with code {codes.get(task.index)}; see "
                    f"{paths.display(folder / 'logs' / f'task-local_{task.index}.out')}")


def on_slurm(setup: Setup, parallel: int | None, entries, sweep, folder, previous) -> int:
    """The sweep's tasks as one SLURM job array (a grid: one task per run; a search: `parallel` workers sharing the
    study), waited for; returns how many grid runs failed. An array this sweep submitted before that is still
    running is waited for again, not submitted twice."""
    from runner.core.atomic import write_text_atomic
    from runner.data import prepare
    from runner.runs.sweep_file import SWEEP_FILE, ArrayJob
    from runner.train import slurm
    from runner.train.launch import launch_env

    tasks, todo = _tasks(setup, parallel or 1, entries, sweep, folder)
    if not tasks:
        return 0
    first = todo[0][2] if todo else loading.load(setup.recipe, setup.fixed)
    array = previous.array if previous is not None else None
    if array is not None and any(s in slurm.ACTIVE for s in (slurm.array_states(array.job_id) or {}).values()):
        # its tasks read sweep.json's task list: it stays as it was, and nothing is submitted twice
        tasks = previous.tasks
        console.say(f"slurm array {array.job_id} of this sweep is still running: waiting for it")
    else:
        for _, _, loaded, _ in todo:
            prepare.prepare(loaded)  # once, here: the tasks find the data prepared (and a data error stops us now)
        limit = min(parallel or len(tasks), len(tasks))
        hardware = first.recipe.hardware
        script = folder / "array.sh"
        write_text_atomic(script, slurm.array_script(
            setup.name, len(tasks), limit, hardware.gpus if hardware.device == "cuda" else 0, folder / "logs",
            paths.workspace(), _task_command(setup, sweep.search)))
        (folder / "logs").mkdir(exist_ok=True)  # SLURM opens --output before the script runs
        sweep.tasks = tasks  # the tasks read their run from sweep.json: written before sbatch
        sweep.write(folder / SWEEP_FILE)
        array = ArrayJob(job_id=slurm.submit_script(script, folder, launch_env(first.recipe)), script=script.name,
                         limit=limit)
        console.say(f"submitted slurm array {array.job_id}: {len(tasks)} tasks, at most {limit} at once; logs: "
                    f"{paths.display(folder / 'logs')}/task-{array.job_id}_<task>.out")
    sweep.tasks, sweep.array = tasks, array
    sweep.write(folder / SWEEP_FILE)
    try:
        states = slurm.wait_array(array.job_id, len(tasks))
    except KeyboardInterrupt:
        console.say(f"stopped waiting; slurm array {array.job_id} goes on. `recipe sweep ... --status` shows it; "
                    "the same command again waits for it and decides")
        raise
    return _collect(setup, tasks, todo, lambda task: f"task {array.job_id}_{task.index} ended "
                    f"{states.get(task.index, 'UNKNOWN')}; see "
                    f"{paths.display(folder / 'logs' / f'task-{array.job_id}_{task.index}.out')}")


def task(setup: Setup, index: int, folder, key: str, verbose: bool) -> int:
    """One task of the sweep: a grid's run (train or resume, evaluate), or a search worker."""
    from runner.runs.sweep_file import SWEEP_FILE, SeedRun, SweepFile

    tasks = SweepFile.read(folder / SWEEP_FILE).tasks
    if not 0 <= index < len(tasks):
        raise UserError(Problem("--task", str(index), f"this sweep has {len(tasks)} tasks"))
    this = tasks[index]
    if setup.space is not None:
        console.say(f"task {index}: a search worker")
        return 1 if search_worker(setup, folder, key, f"task-{index}", verbose) else 0
    loaded = next(p[2] for p in setup.plans if p[0].name == this.variant and p[1] == this.seed)
    console.say(f"task {index}: {_label(this.variant, this.seed)}")
    _one(setup.name, loaded, SeedRun(seed=this.seed), verbose)
    return 0


def status(setup: Setup, folder) -> int:
    """Where each run of the sweep stands: its run folder's status and, on SLURM, its array task's state."""
    from runner.runs.sweep_file import SWEEP_FILE, SweepFile
    from runner.train import slurm

    if not (folder / SWEEP_FILE).is_file():
        raise UserError(Problem(paths.display(folder), "", "no such sweep yet: run the same command without "
                                "--status to start it"))
    sweep = SweepFile.read(folder / SWEEP_FILE)
    states = (slurm.array_states(sweep.array.job_id) or {}) if sweep.array else {}
    tasks = {(t.variant, t.seed): t.index for t in sweep.tasks}
    if sweep.array:
        print(f"slurm array {sweep.array.job_id}: {slurm.summary(states, len(sweep.tasks))}")
    if setup.space is not None:  # the study's trials so far, each once per seed
        from runner.runs import sweep_study

        study = setup.study(folder, sweep.key)
        trials = sweep_study.trials(study, setup.space)
        print(f"study: {len(trials)} of {setup.trials} trials asked, "
              f"{sum(state == 'COMPLETE' for _, state in trials)} complete")
        rows = [(t.name, t.overrides, seed) for t, _ in trials for seed in setup.seeds or [None]]
    else:
        rows = [(v.name, v.overrides, seed) for v, seed, _ in setup.plans]
    print("| variant | seed | run | status | array task |\n|---|---:|---|---|---|")
    for variant, overrides, seed in rows:
        loaded = loading.load(setup.recipe, [*setup.fixed, *overrides, *setup.seed_overrides(seed)])
        run = _existing(setup.name, loaded.fingerprint)
        state = run.manifest().status.value if run is not None else "not started"
        if run is not None and state in ("training", "failed"):
            steps = [int(p.name.split("-")[1]) for p in (run.path / "model").glob("checkpoint-*")
                     if p.name.split("-")[1].isdigit()]
            state += f" (checkpoint {max(steps)})" if steps else ""
        index = tasks.get((variant, seed))
        where = "" if index is None or not sweep.array else \
            f"{sweep.array.job_id}_{index} {states.get(index, 'UNKNOWN')}"
        print(f"| `{variant}` | {'' if seed is None else seed} | {run.run_id if run else '—'} | {state} | {where} |")
    return 0
