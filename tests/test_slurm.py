"""A real one-node SLURM cluster on localhost runs the sbatch script `recipe` writes for tiny-cpu.

tests/slurm/cluster.sh starts slurmctld, slurmd and munge from a generated slurm.conf; `make test-slurm`
installs Debian's slurm-wlm and munge first when they are missing.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port

CLUSTER = Path(__file__).parent / "slurm" / "cluster.sh"
pytestmark = [pytest.mark.model, pytest.mark.slurm]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    ctld = free_port()
    ports = {"SLURMCTLD_PORT": str(ctld), "SLURMD_PORT": str(next(p for p in iter(free_port, None) if p != ctld))}
    # free ports, not 6817/6818: a cluster another checkout's test run left stopping must not fail this one
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=120,
                             env=os.environ | ports)
    assert started.returncode == 0, started.stdout + started.stderr
    yield {"SLURM_CONF": str(state / "slurm.conf")}
    subprocess.run(["bash", str(CLUSTER), "stop", str(state)], capture_output=True, timeout=120, env=os.environ | ports)


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def test_recipe_trains_through_sbatch_and_a_requeued_job_resumes(slurm_cluster, session_dirs, tiny_model_dir):
    """`recipe train tiny-cpu --target slurm` submits launch.sh with sbatch and follows the job; `scontrol requeue` it
    once it has saved its first checkpoint: SLURM kills it and starts launch.sh again (--requeue), and training goes
    on from the newest checkpoint instead of from step 1, then the runner records the trained run."""
    env = os.environ | slurm_cluster
    runs = session_dirs / "runs" / "tiny-cpu"
    before = set(runs.iterdir()) if runs.exists() else set()
    argv = [sys.executable, "-m", "runner", "train", "tiny-cpu", "train.max_steps=12", "train.save_steps=4",
            "train.seed=4", "--target", "slurm"]
    trainer = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, run = time.monotonic() + 600, None
        while time.monotonic() < deadline and trainer.poll() is None:
            run = run or next((p for p in (set(runs.iterdir()) if runs.exists() else set()) - before
                               if p.name != "latest"), None)
            if run is not None and (run / "model" / "checkpoint-4" / "trainer_state.json").is_file():
                break
            time.sleep(0.1)
        assert trainer.poll() is None and run is not None, "the job ended before its first checkpoint"
        job = json.loads((run / "manifest.json").read_text())["slurm_job_id"]
        requeued = subprocess.run(["scontrol", "requeue", job], env=env, capture_output=True, text=True, timeout=60)
        assert requeued.returncode == 0, requeued.stderr  # the job was still running: 8 steps were left
        out, err = trainer.communicate(timeout=900)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 0, err[-3000:]
    assert "PENDING" in err.split("RUNNING", 1)[1]  # the runner followed the job through its requeue

    shown = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True, timeout=60)
    assert "Restarts=1" in shown.stdout and "JobState=COMPLETED" in shown.stdout
    # --open-mode=append: both attempts; the requeue kills the first mid-write, which can cut a UTF-8 character of
    # the progress bar in two (the runner reads this log with errors="replace" too)
    log = (run / "logs" / f"slurm-{job}.out").read_text(errors="replace")
    resumed = re.findall(r"resume from checkpoint at model/checkpoint-(\d+)", log)
    assert len(resumed) == 1, log[-3000:]
    checkpoint = int(resumed[0])
    assert 4 <= checkpoint < 12 and "Training completed" in log
    # ranks/rank-0.jsonl has a line per optimizer step of both attempts: 1..k, then checkpoint+1..12
    # (no step goes back when the first attempt was stopped right at its checkpoint)
    steps = _steps(run / "ranks" / "rank-0.jsonl")
    restart = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), checkpoint)
    assert restart >= checkpoint and steps[:restart] == list(range(1, restart + 1)), steps
    assert steps[restart:] == list(range(checkpoint + 1, 13)), steps  # not 1..12 again
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "trained" and manifest["target"] == "slurm" and manifest["train"]["steps"] == 12
    assert manifest["train"]["ranks"]["rank-0"]["steps"] == 12
    assert (run / "model" / "adapter_model.safetensors").is_file()
    assert "#SBATCH --nodes=1" in (run / "launch.sh").read_text()


def test_a_sweep_runs_as_one_job_array_and_a_requeued_task_resumes(slurm_cluster, session_dirs, tiny_model_dir):
    """`recipe sweep --target slurm`: a 2 × 2 grid of tiny-cpu as one job array (a task per run, 2 at once); one task
    is requeued once its run has a checkpoint, and its run goes on from there. Then --status, and a second invocation
    that submits nothing."""
    env = os.environ | slurm_cluster
    runs = session_dirs / "runs" / "tiny-cpu"
    before = set(runs.iterdir()) if runs.exists() else set()
    argv = [sys.executable, "-m", "runner", "sweep", "tiny-cpu", "train.max_steps=12", "train.save_steps=4",
            "--grid", "train.learning_rate=1e-9,1e-3", "--seeds", "5,6", "--metric", "perplexity"]
    sweeper = subprocess.Popen([*argv, "--target", "slurm", "--parallel", "2"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline, requeued = time.monotonic() + 600, None
        while time.monotonic() < deadline and sweeper.poll() is None and requeued is None:
            for run in (set(runs.iterdir()) if runs.exists() else set()) - before:
                if run.name != "latest" and (run / "model" / "checkpoint-4" / "trainer_state.json").is_file():
                    task = json.loads((run / "manifest.json").read_text())["slurm_job_id"]
                    done = subprocess.run(["scontrol", "requeue", task], env=env, capture_output=True, text=True,
                                          timeout=60)
                    assert done.returncode == 0, done.stderr  # the task was still running: 8 steps were left
                    requeued = (run, task)
                    break
            time.sleep(0.1)
        assert requeued is not None, "no task reached its first checkpoint while the sweep ran"
        out, err = sweeper.communicate(timeout=900)
    finally:
        if sweeper.poll() is None:
            sweeper.kill()
    assert sweeper.returncode == 0, (out + err)[-3000:]
    folder = session_dirs / out.rsplit("sweep: ", 1)[1].split("sweep.md")[0].removeprefix(str(session_dirs) + "/")
    sweep = json.loads((folder / "sweep.json").read_text())
    array = sweep["array"]
    assert sweep["target"] == "slurm" and array["limit"] == 2 and len(sweep["tasks"]) == 4
    assert "#SBATCH --array=0-3%2" in (folder / "array.sh").read_text()
    assert all(r["status"] == "evaluated" for v in sweep["variants"] for r in v["runs"])
    assert sweep["decision"]["best"] == "train.learning_rate=1e-3"

    run, task = requeued
    assert task.startswith(array["job_id"] + "_")
    shown = subprocess.run(["scontrol", "show", "job", task], env=env, capture_output=True, text=True, timeout=60)
    assert "Restarts=1" in shown.stdout and "JobState=COMPLETED" in shown.stdout
    resumed = re.findall(r"resume from checkpoint at model/checkpoint-(\d+)", (run / "logs" / "train.log").read_text())
    assert len(resumed) == 1 and 4 <= int(resumed[0]) < 12
    steps = _steps(run / "ranks" / "rank-0.jsonl")
    assert steps[-1] == 12 and steps.count(12) == 1 and len(steps) < 24  # went on from the checkpoint
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "evaluated" and manifest["slurm_job_id"] == task

    status = subprocess.run([*argv, "--status"], env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and f"slurm array {array['job_id']}: 4 COMPLETED" in status.stdout
    assert status.stdout.count("| evaluated |") == 4 and f"| {task} COMPLETED |" in status.stdout

    made = set(runs.iterdir())
    again = subprocess.run([*argv, "--target", "slurm"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "submitted" not in again.stderr and set(runs.iterdir()) == made
    assert again.stderr.count("reusing") == 4


def test_an_optuna_search_shares_one_study_between_array_tasks(slurm_cluster, session_dirs, tiny_model_dir):
    """`--search optuna --trials 2 --target slurm --parallel 2`: two array tasks ask one study (its journal file in
    the sweep folder) for trials until it holds 2, then one decision over the trials' runs."""
    import optuna

    env = os.environ | slurm_cluster
    argv = [sys.executable, "-m", "runner", "sweep", "tiny-cpu", "train.max_steps=2", "eval.max_items=4",
            "--grid", "train.learning_rate=log:1e-3..1e-1", "--search", "optuna", "--trials", "2",
            "--metric", "perplexity", "--target", "slurm", "--parallel", "2"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    folder = Path(result.stdout.rsplit("sweep: ", 1)[1].split("sweep.md")[0])
    folder = folder if folder.is_absolute() else session_dirs / folder
    sweep = json.loads((folder / "sweep.json").read_text())
    assert sweep["search"] == "optuna" and sweep["trials"] == 2 and len(sweep["tasks"]) == 2
    assert "#SBATCH --array=0-1%2" in (folder / "array.sh").read_text()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal")))
    trials = optuna.load_study(study_name=sweep["key"], storage=storage).get_trials()
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)  # exactly the total, shared
    assert {t.user_attrs["worker"] for t in trials} <= {"task-0", "task-1"}
    assert len({t.params["train.learning_rate"] for t in trials}) == 2  # each worker samples with its own seed
    for index in (0, 1):  # both tasks ran as workers of the one study
        log = (folder / "logs" / f"task-{sweep['array']['job_id']}_{index}.out").read_text(errors="replace")
        assert f"task {index}: a search worker" in log
    values = {f"train.learning_rate={t.params['train.learning_rate']:.3g}": t.value for t in trials}
    rows = {r["variant"]: r for r in sweep["decision"]["rows"]}
    assert set(rows) == set(values) and sweep["decision"]["best"] == min(values, key=values.get)
    assert "2 distinct trials of an Optuna search (2 asked) over `train.learning_rate=log:1e-3..1e-1`" in (
        folder / "sweep.md").read_text()
    for name, row in rows.items():  # the study's value of a trial is its run's perplexity, which sweep.md shows
        assert row["mean"] == pytest.approx(values[name], rel=1e-6)

    status = subprocess.run([*argv, "--status"], env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "study: 2 of 2 trials asked, 2 complete" in status.stdout
    assert status.stdout.count("| evaluated |") == 2
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing to run" in again.stderr and "submitted" not in again.stderr
