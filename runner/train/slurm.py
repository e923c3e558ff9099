"""Submitting a planned run to SLURM and following it: sbatch from the run directory, then squeue/scontrol."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from runner.core.errors import Problem, RunFailed, UserError
from runner.runs import rundir

POLL_S = 5


def _run(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError(Problem("hardware", "--target slurm", f"`{argv[0]}` is not on PATH: run this on a SLURM "
                                "login node (or install slurm-wlm; `make test-slurm` starts a local "
                                "cluster)")) from None
    except subprocess.TimeoutExpired:
        raise RunFailed(f"`{' '.join(argv)}` did not answer within 60 s: is slurmctld up? (`scontrol ping`)") from None


def submit(run_dir: Path, env: dict) -> str:
    """sbatch launch.sh from the run directory (so SLURM_SUBMIT_DIR is the run); returns the job id.

    The job inherits `env` (sbatch's default --export=ALL), so the runner's venv is on the job's PATH."""
    (run_dir / rundir.LOGS).mkdir(exist_ok=True)  # SLURM opens --output=logs/... before the script runs
    result = _run(["sbatch", "--parsable", rundir.LAUNCH], cwd=run_dir, env=env)
    if result.returncode != 0:
        raise RunFailed(f"sbatch refused the job: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip().split(";")[0]


def job_state(job_id: str) -> tuple[str, int | None]:
    """(state, exit code) of a job from scontrol; ('UNKNOWN', None) once SLURM has forgotten it."""
    result = _run(["scontrol", "show", "job", job_id])
    state = re.search(r"JobState=(\S+)", result.stdout)
    code = re.search(r"ExitCode=(\d+):\d+", result.stdout)
    return (state.group(1) if state else "UNKNOWN", int(code.group(1)) if code else None)


def wait(job_id: str) -> tuple[str, int | None]:
    """Poll until the job is finished; prints state changes (progress) to stderr."""
    last = None
    while True:
        state, code = job_state(job_id)
        if state != last:
            print(f"slurm job {job_id}: {state}", file=sys.stderr, flush=True)
            last = state
        if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"):
            return state, code
        time.sleep(POLL_S)


def log_path(run_dir: Path, job_id: str) -> Path:
    return rundir.RunDir(run_dir).log_path(f"slurm-{job_id}.out")
