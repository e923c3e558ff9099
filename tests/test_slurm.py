"""A real one-node SLURM cluster on localhost runs the sbatch script `recipe` writes for tiny-cpu.

tests/slurm/cluster.sh starts slurmctld, slurmd and munge from a generated slurm.conf; `make test-slurm`
installs Debian's slurm-wlm and munge first when they are missing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLUSTER = Path(__file__).parent / "slurm" / "cluster.sh"
pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    yield {"SLURM_CONF": str(state / "slurm.conf")}
    subprocess.run(["bash", str(CLUSTER), "stop", str(state)], capture_output=True, timeout=120)


def test_recipe_trains_tiny_cpu_through_sbatch(slurm_cluster, session_dirs, tiny_model_dir):
    env = os.environ | slurm_cluster
    result = subprocess.run([sys.executable, "-m", "runner", "train", "tiny-cpu", "train.seed=3", "--target", "slurm"],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run = (session_dirs / "runs" / "tiny-cpu" / "latest").resolve()
    manifest = json.loads((run / "manifest.json").read_text())
    job = manifest["slurm_job_id"]
    assert manifest["status"] == "trained" and manifest["target"] == "slurm"
    assert manifest["train"]["steps"] == 30 and manifest["train"]["ranks"]["rank-0"]["steps"] == 30
    log = (run / "logs" / f"slurm-{job}.out").read_text()
    assert "Training completed" in log
    assert (run / "model" / "adapter_model.safetensors").is_file()
    assert "#SBATCH --nodes=1" in (run / "launch.sh").read_text()
    state = subprocess.run(["bash", str(CLUSTER), "wait", str(Path(slurm_cluster["SLURM_CONF"]).parent), job, "30"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert state.returncode == 0 and "COMPLETED" in state.stdout
