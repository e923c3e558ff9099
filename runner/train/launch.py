"""The train stage: prepare (cached) + plan + `bash launch.sh` (or sbatch), streaming the trainer's log into
logs/train.log and recording the outcome in the manifest.

A process that dies leaves status `failed` with the log tail; a resumed run relaunches the same files
and axolotl continues from the newest checkpoint.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from runner.core import paths
from runner.core.errors import NO_SPACE, Problem, RunFailed, UserError, storage_error
from runner.data import prepare
from runner.data.prepare import Prepared
from runner.recipe import precision
from runner.recipe.loading import Loaded
from runner.recipe.schema import Recipe
from runner.runs import rundir, tracking
from runner.runs.manifest import RunError, Status
from runner.train import plan, slurm, summary

LOG_TAIL_LINES = 40


class Stopped(KeyboardInterrupt):
    """The runner was asked to stop (SIGTERM): its trainer is stopped with it, never left orphaned."""


def _stop(signum, frame):
    raise Stopped()


# What the terminal shows of the trainer's output without -v: its progress bar and the metrics it logs.
_PROGRESS = re.compile(r"^\s*\d+%\|.*\d+/\d+ \[|^\{'(loss|eval_loss|train_runtime)'")


def _stream(run: rundir.RunDir, env: dict, verbose: bool = False,
            meanwhile: Callable[[], object] | None = None) -> tuple[int, list[str]]:
    """Run launch.sh, teeing its output to logs/train.log and (its progress, or all of it when verbose) stderr;
    returns (exit code, log tail). meanwhile() runs once the trainer has started (its first lines wait in the pipe).

    A log that stops taking writes (a full disk) is closed and the output still streams to stderr and the
    tail: the trainer's pipe must be drained to the end, or the trainer would block on it."""
    log_path = run.log_path("train")
    try:
        log_path.parent.mkdir(exist_ok=True)
        log = log_path.open("a", encoding="utf-8")
    except OSError as err:
        raise storage_error(err, log_path) from None
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    try:
        process = subprocess.Popen(["bash", rundir.LAUNCH], cwd=run.path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
    except BaseException:
        _close_quietly(log)
        raise
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        run.update(train_pid=process.pid)  # launch.sh execs the trainer, so this is the training process
        if meanwhile is not None:
            meanwhile()
        for line in process.stdout:
            if log is not None:
                try:
                    log.write(line)
                except OSError as err:
                    log = _close_quietly(log)
                    line += f"recipe: logs/train.log stopped here: {err.strerror}\n"
            tail.append(line.rstrip("\n"))
            if verbose or _PROGRESS.search(line):
                sys.stderr.write(line)
        return process.wait(), list(tail)
    except BaseException:  # Ctrl-C reached the trainer too; SIGTERM or a failure here did not, so pass it on
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        _close_quietly(log)


def _close_quietly(handle) -> None:
    if handle is not None:
        try:
            handle.close()
        except OSError:  # the buffered tail could not be flushed: the disk is full
            pass


def launch_env(recipe: Recipe | None = None) -> dict:
    """The trainer's environment: this venv first on PATH, telemetry off, unbuffered output.

    W&B runs only for a recipe with tracking.wandb, offline unless WANDB_MODE says otherwise (see tracking)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env |= {"AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
    env["WANDB_MODE"] = tracking.wandb_mode(recipe) if recipe is not None else env.get("WANDB_MODE") or "disabled"
    return env


def _via_slurm(run: rundir.RunDir, env: dict, detach: bool) -> tuple[int | None, list[str]]:
    """Submit launch.sh with sbatch (the job inherits this environment) and, unless detached, wait for it."""
    job_id = slurm.submit(run.path, env)
    run.update(slurm_job_id=job_id)
    print(f"submitted slurm job {job_id}; log: {paths.display(slurm.log_path(run.path, job_id))}", file=sys.stderr)
    if detach:
        return None, []
    state, code = slurm.wait(job_id)
    log = slurm.log_path(run.path, job_id)
    tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if log.exists() else []
    return (0 if state == "COMPLETED" else (code or 1)), tail


def _new_run(loaded: Loaded, target: str, prepared: Prepared) -> rundir.RunDir:
    base_model = plan.base_model_for(loaded)
    run = rundir.create(loaded.recipe.name, loaded.fingerprint)
    try:
        plan.link_data(run, prepared)
        plan.write_plan(run, loaded, target, base_model, has_val=prepared.info.counts["val"] > 0)
        plan.new_manifest(loaded, run, target, base_model, Status.TRAINING, data=prepared.info).write(run.manifest_path)
    except BaseException:  # a half-made run (a full disk) is removed, never left for `latest` or --resume
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    rundir.point_latest(run)
    return run


def _resumed_run(loaded: Loaded, resume: str | None) -> tuple[rundir.RunDir, Loaded]:
    run = rundir.find(loaded.recipe.name, resume or None)
    previous = run.manifest()
    loaded = plan.concrete(loaded, previous.target)
    if previous.fingerprint != loaded.fingerprint:
        raise UserError(Problem(paths.display(run.path), "fingerprint", "this run was made from a different "
                                f"resolved recipe ({previous.fingerprint[:12]} vs {loaded.fingerprint[:12]} now); "
                                "resume with the same recipe and overrides, or start a new run"))
    print(f"resuming {paths.display(run.path)} from its newest checkpoint ({previous.target})", file=sys.stderr)
    return run, loaded


def _failed(run: rundir.RunDir, code: int, tail: list[str], timings: dict) -> RunFailed:
    message = f"the training process exited with code {code}"
    if any(NO_SPACE in line for line in tail):
        message += (f" because the disk holding {paths.display(run.path)} is full; free space there (or set "
                    f"RECIPE_RUNS_DIR to a disk with room), then `recipe train {run.path.parent.name} --resume` goes "
                    "on from the newest complete checkpoint (from the start if none was saved)")
    unrecorded = ""
    try:
        manifest = run.manifest()
        run.update(status=Status.FAILED, timings=timings, train=summary.summarize(run, manifest),
                   error=RunError(stage="train", message=message, log_tail=tail))
    except UserError as err:  # even the manifest cannot be written (a full disk): say so instead
        unrecorded = f" (not recorded in manifest.json: {err.problems[0].message.split(';')[0]})"
    return RunFailed(f"{message}; see {paths.display(run.log_path('train'))}{unrecorded}. Last lines:"
                     "\n  " + "\n  ".join(tail[-12:]))


def train(loaded: Loaded, target: str = "local", resume: str | None | bool = False, detach: bool = False,
          verbose: bool = False, meanwhile: Callable[[], object] | None = None) -> rundir.RunDir:
    """Prepare, plan and launch a training run (or relaunch an earlier one); returns its run directory. What
    follows a run (its model card, a merge) is the caller's: runner.cli.followups.after_train.

    target slurm submits the run with sbatch and waits for the job (or returns at once when detach).
    A resumed run keeps the target its launch.sh was written for.
    meanwhile(), the caller's own work, runs once a local trainer has started, while it starts up (seconds of
    imports) instead of after the run: `recipe train` imports what writes the model card there."""
    run = None
    if resume is not False:
        run, loaded = _resumed_run(loaded, resume)
    else:
        loaded = plan.concrete(loaded, target)
    recipe = loaded.recipe
    if target != "slurm":  # a SLURM job runs on a node this machine cannot inspect
        precision.require_bf16(recipe, paths.display(loaded.path))
    started = time.monotonic()
    prepared = prepare.prepare(loaded)
    prepare_s = round(time.monotonic() - started, 2)
    run = run or _new_run(loaded, target, prepared)
    manifest = run.manifest()
    target = manifest.target
    timings = manifest.timings | {"prepare_s": prepare_s}
    run.update(status=Status.TRAINING, error=None, timings=timings)
    if target != "slurm" and (job := slurm.job_of_this_process()):  # trained inside a job (a sweep's array task)
        run.update(slurm_job_id=job)
    print(f"training {recipe.name} in {paths.display(run.path)} (log: logs/train.log)", file=sys.stderr)
    launched = time.monotonic()
    try:
        env = launch_env(recipe)
        tracking.announce(run, recipe, env["WANDB_MODE"])
        code, tail = _via_slurm(run, env, detach) if target == "slurm" else _stream(run, env, verbose, meanwhile)
        if code is None:
            run.update(status=Status.SUBMITTED)
            return run
    except KeyboardInterrupt as stop:
        run.update(status=Status.FAILED, error=RunError(
            stage="train", message="stopped" if isinstance(stop, Stopped) else "interrupted"))
        raise
    timings["train_s"] = round(time.monotonic() - launched, 2)
    if code != 0:
        raise _failed(run, code, tail, timings)
    run.update(status=Status.TRAINED, timings=timings, train=summary.summarize(run, run.manifest()),
               tracking=tracking.locate(run, recipe))
    return run
