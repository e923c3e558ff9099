"""A real 2-process data-parallel run of tiny-cpu on CPU (torchrun + gloo), with the evidence in the run."""
from __future__ import annotations

import json

import pytest

from runner import loading
from runner.train import train


@pytest.mark.slow
def test_two_processes_train_data_parallel_on_cpu(session_dirs, tiny_model_dir):
    loaded = loading.load("tiny-cpu", ["hardware.gpus=2", "train.max_steps=12", "train.save_steps=6"])
    assert loaded.recipe.global_batch == 8  # micro 4 x accumulation 1 x 2 processes
    run = train(loaded, target="torchrun")
    manifest = run.manifest()
    assert manifest["status"] == "trained" and manifest["batch"]["world_size"] == 2
    ranks = manifest["train"]["ranks"]
    assert set(ranks) == {"rank-0", "rank-1"}
    assert all(r["steps"] == 12 and r["world_size"] == 2 for r in ranks.values())  # both ranks stepped
    records = [json.loads(line) for line in run.file("metrics.jsonl").read_text().splitlines()]
    finals = [r for r in records if "train_loss" in r]
    assert len(finals) == 1  # only rank 0 reports: one process group, not two independent runs
    # The data is divided between the ranks: 12 steps x 8 rows cover twice the epoch one process would.
    single = 12 * 4 / manifest["data"]["counts"]["train"]
    assert records[-1]["epoch"] == pytest.approx(2 * single, rel=0.1)
    assert "torchrun --nproc_per_node=2 --nnodes=1 --standalone" in run.file("launch.sh").read_text()
