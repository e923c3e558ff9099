"""The plan and train stages: write a run directory's engine files, then launch axolotl and watch it.

plan:  recipe -> run dir with recipe.resolved.yaml, axolotl.yaml, deepspeed.json, accelerate.yaml, launch.sh
train: prepare (cached) + plan + `bash launch.sh`, streaming the log, recording the outcome in the manifest.
A process that dies leaves status `failed` with the log tail; a resumed run relaunches the same files
and axolotl continues from the newest checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from runner.recipe import loading
from runner.models import resolve
from runner.core import paths
from runner.train import engine
from runner.data import prepare
from runner.train import provenance
from runner.runs import rundir
from runner.core.errors import NO_SPACE, Problem, RunFailed, UserError, storage_error
from runner.recipe.loading import Loaded
from runner.core.atomic import write_text_atomic
from runner.core.yamlio import dump_yaml

LOG_TAIL_LINES = 40


def base_model_for(loaded: Loaded) -> str:
    """What axolotl loads: hub ids stay hub ids (resolved on the cluster); local files become local dirs."""
    spec = loaded.recipe.model
    local = spec.base.startswith(resolve.PKG) or paths.resolve_local(spec.base).exists() or spec.base.endswith(".gguf")
    return str(resolve.resolve_base(spec, paths.display(loaded.path))) if local else spec.base


def engine_files(loaded: Loaded, target: str, base_model: str, has_val: bool) -> dict[str, str]:
    recipe = loaded.recipe
    files = {"recipe.resolved.yaml": loading.resolved_yaml(recipe),
             "axolotl.yaml": dump_yaml(engine.axolotl_config(recipe, base_model, has_val=has_val)),
             "launch.sh": engine.launch_script(recipe, target)}
    deepspeed = engine.deepspeed_config(recipe)
    if deepspeed:
        files["deepspeed.json"] = json.dumps(deepspeed, indent=2, sort_keys=True) + "\n"
    if target == "accelerate":
        files["accelerate.yaml"] = dump_yaml(engine.accelerate_config(recipe))
    return files


def _write_plan(run: rundir.RunDir, loaded: Loaded, target: str, base_model: str, has_val: bool) -> None:
    for name, text in engine_files(loaded, target, base_model, has_val).items():
        write_text_atomic(run.file(name), text)
    run.file("launch.sh").chmod(0o755)
    run.file("logs").mkdir(exist_ok=True)  # sbatch opens --output=logs/slurm-%j.out before the script runs


def _link_data(run: rundir.RunDir, prepared: prepare.Prepared) -> None:
    """Hard-link the cached prepared files into run/data (copy across file systems)."""
    target = run.file("data")
    target.mkdir(exist_ok=True)
    for name in (*[f"{s}.jsonl" for s in prepare.SPLITS], prepare.DONE):
        destination = target / name
        destination.unlink(missing_ok=True)
        try:
            os.link(prepared.dir / name, destination)
        except OSError:
            shutil.copy2(prepared.dir / name, destination)


def _manifest_base(loaded: Loaded, run: rundir.RunDir, target: str, base_model: str) -> dict:
    recipe = loaded.recipe
    return {"run_id": run.run_id, "recipe": recipe.name, "recipe_version": recipe.version,
            "fingerprint": loaded.fingerprint, "recipe_file": paths.display(loaded.path),
            "extends": [paths.display(p) for p in loaded.chain[1:]], "target": target,
            "base_model": recipe.model.base, "base_model_dir": base_model, "model_dir": "model",
            "adapter": recipe.method.adapter is not None, "git_commit": provenance.git_commit(),
            "packages": provenance.package_versions(), "hardware": provenance.hardware(recipe),
            "seeds": {"train": recipe.train.seed, "split": recipe.data.split.seed},
            "batch": {"micro": recipe.train.micro_batch_size, "accumulation": recipe.gradient_accumulation,
                      "world_size": recipe.hardware.world_size, "global": recipe.global_batch,
                      "packing": recipe.data.packing},
            "command": engine.launch_command(target, paths.display(run.path)), "error": None, "timings": {}}


def plan_run(loaded: Loaded, target: str = "local") -> rundir.RunDir:
    """Write a run directory with every engine file; run nothing. Data is prepared by `train`."""
    base_model = base_model_for(loaded)
    run = rundir.create(loaded.recipe.name, loaded.fingerprint)
    _write_plan(run, loaded, target, base_model, has_val=True)
    run.update(**_manifest_base(loaded, run, target, base_model), status="planned")
    return run  # `latest` keeps pointing at the newest trained run, which eval and report default to


class Stopped(KeyboardInterrupt):
    """The runner was asked to stop (SIGTERM): its trainer is stopped with it, never left orphaned."""


def _stop(signum, frame):
    raise Stopped()


def _stream(run: rundir.RunDir, env: dict) -> tuple[int, list[str]]:
    """Run launch.sh, teeing its output to logs/train.log and stderr; returns (exit code, log tail).

    A log that stops taking writes (a full disk) is closed and the output still streams to stderr and the
    tail: the trainer's pipe must be drained to the end, or the trainer would block on it."""
    log_path = run.file("logs", "train.log")
    try:
        log_path.parent.mkdir(exist_ok=True)
        log = log_path.open("a", encoding="utf-8")
    except OSError as err:
        raise storage_error(err, log_path) from None
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    try:
        process = subprocess.Popen(["bash", "launch.sh"], cwd=run.path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
    except BaseException:
        _close_quietly(log)
        raise
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        run.update(train_pid=process.pid)  # launch.sh execs the trainer, so this is the training process
        for line in process.stdout:
            if log is not None:
                try:
                    log.write(line)
                except OSError as err:
                    log = _close_quietly(log)
                    line += f"recipe: logs/train.log stopped here: {err.strerror}\n"
            tail.append(line.rstrip("\n"))
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


def _record(run: rundir.RunDir, **fields) -> str:
    """Record a failure in the manifest; when even that cannot be written (a full disk), say so instead."""
    try:
        run.update(**fields)
        return ""
    except UserError as err:
        return f" (not recorded in manifest.json: {err.problems[0].message.split(';')[0]})"


def launch_env() -> dict:
    """The trainer's environment: this venv first on PATH, telemetry off, unbuffered output."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env |= {"AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("WANDB_MODE", "disabled")
    return env


def _padding_waste(manifest: dict, steps: int, tokens_seen: int) -> float | None:
    """Share of the tokens the trainer processed that were padding (estimated, not packed runs):
    1 - (rows consumed x mean real tokens per row) / tokens seen, where rows consumed = steps x global batch."""
    mean = manifest.get("data", {}).get("stats", {}).get("train", {}).get("tokens_per_row", {}).get("mean")
    batch = manifest.get("batch", {}).get("global")
    if manifest.get("batch", {}).get("packing") or not (mean and batch and tokens_seen):  # a packed row holds many
        return None
    return round(max(0.0, 1 - steps * batch * mean / tokens_seen), 4)


def _records(path: Path) -> list[dict]:
    """The JSON lines of a metrics file; a line cut off mid-write (a killed trainer, a full disk) is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if isinstance(r, dict)]


def summarize_metrics(run: rundir.RunDir) -> dict:
    """Steps, tokens, throughput and final losses from metrics.jsonl."""
    path = run.file("metrics.jsonl")
    if not path.is_file():
        return {}
    records = _records(path)
    losses = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    tokens = max((r.get("tokens_seen", 0) for r in records), default=0)
    elapsed = max((r.get("elapsed_s", 0) for r in records), default=0)
    ranks = {}
    for rank_file in sorted(run.file("ranks").glob("rank-*.jsonl")):
        lines = _records(rank_file)
        engine_file = rank_file.with_suffix(".engine.json")
        if lines:
            ranks[rank_file.stem] = {"steps": len(lines), "last_step": lines[-1]["step"],
                                     "world_size": lines[-1]["world_size"],
                                     "engine": json.loads(engine_file.read_text()) if engine_file.exists() else None}
    steps = max((r["step"] for r in records), default=0)
    return {"steps": steps, "tokens": tokens, "ranks": ranks,
            "padding_waste": _padding_waste(run.manifest(), steps, tokens),
            "tokens_per_s": round(tokens / elapsed, 2) if elapsed else None,
            "first_loss": losses[0]["loss"] if losses else None, "final_loss": losses[-1]["loss"] if losses else None,
            "final_eval_loss": evals[-1]["eval_loss"] if evals else None, "logged_steps": len(losses)}


def _via_slurm(run: rundir.RunDir, env: dict, detach: bool) -> tuple[int | None, list[str]]:
    """Submit launch.sh with sbatch (the job inherits this environment) and, unless detached, wait for it."""
    from runner.train import slurm

    job_id = slurm.submit(run.path, env)
    run.update(slurm_job_id=job_id)
    print(f"submitted slurm job {job_id}; log: {paths.display(slurm.log_path(run.path, job_id))}", file=sys.stderr)
    if detach:
        return None, []
    state, code = slurm.wait(job_id)
    log = slurm.log_path(run.path, job_id)
    tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if log.exists() else []
    return (0 if state == "COMPLETED" else (code or 1)), tail


def train(loaded: Loaded, target: str = "local", resume: str | None | bool = False,
          detach: bool = False) -> rundir.RunDir:
    """Prepare, plan and launch a training run (or relaunch an earlier one); returns its run directory.

    target slurm submits the run with sbatch and waits for the job (or returns at once when detach)."""
    recipe = loaded.recipe
    started = time.monotonic()
    prepared = prepare.prepare(loaded)
    prepare_s = round(time.monotonic() - started, 2)
    if resume is not False:
        run = rundir.find(recipe.name, resume or None)
        previous = run.manifest()
        if previous.get("fingerprint") != loaded.fingerprint:
            raise UserError(Problem(paths.display(run.path), "fingerprint", "this run was made from a different "
                                    f"resolved recipe ({previous.get('fingerprint', '?')[:12]} vs "
                                    f"{loaded.fingerprint[:12]} now); resume with the same recipe and overrides, "
                                    "or start a new run"))
        target = previous.get("target", target)  # its launch.sh was written for that target and is reused
        print(f"resuming {paths.display(run.path)} from its newest checkpoint ({target})", file=sys.stderr)
    else:
        base_model = base_model_for(loaded)
        run = rundir.create(recipe.name, loaded.fingerprint)
        try:
            _link_data(run, prepared)
            _write_plan(run, loaded, target, base_model, has_val=prepared.info["counts"]["val"] > 0)
            run.update(**_manifest_base(loaded, run, target, base_model),
                       data={k: prepared.info[k] for k in ("key", "counts", "fingerprints", "duplicates_removed",
                                                            "stats", "rows_by_source", "sources")},
                       stop=prepared.info["stop"])
        except BaseException:  # a half-made run (a full disk) is removed, never left for `latest` or --resume
            shutil.rmtree(run.path, ignore_errors=True)
            raise
        rundir.point_latest(run)
    timings = run.manifest().get("timings", {}) | {"prepare_s": prepare_s}
    run.update(status="training", error=None, timings=timings)
    print(f"training {recipe.name} in {paths.display(run.path)} (log: logs/train.log)", file=sys.stderr)
    launched = time.monotonic()
    try:
        code, tail = _via_slurm(run, launch_env(), detach) if target == "slurm" else _stream(run, launch_env())
        if code is None:
            run.update(status="submitted")
            return run
    except KeyboardInterrupt as stop:
        run.update(status="failed", error={"stage": "train", "message": "stopped" if isinstance(stop, Stopped)
                                           else "interrupted", "log_tail": []})
        raise
    timings["train_s"] = round(time.monotonic() - launched, 2)
    if code != 0:
        message = f"the training process exited with code {code}"
        if any(NO_SPACE in line for line in tail):
            message += (f" because the disk holding {paths.display(run.path)} is full; free space there (or set "
                        f"RECIPE_RUNS_DIR to a disk with room), then `recipe train {recipe.name} --resume` goes on "
                        "from the newest complete checkpoint (from the start if none was saved)")
        unrecorded = _record(run, status="failed", timings=timings, train=summarize_metrics(run),
                             error={"stage": "train", "message": message, "log_tail": tail})
        raise RunFailed(f"{message}; see {paths.display(run.file('logs', 'train.log'))}{unrecorded}. Last lines:"
                        "\n  " + "\n  ".join(tail[-12:]))
    run.update(status="trained", timings=timings, train=summarize_metrics(run))
    return run
