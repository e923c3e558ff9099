"""DeepSpeed ZeRO-2 and ZeRO-3 really running across 2 CPU processes through axolotl (gloo)."""
from __future__ import annotations

import pytest

from runner.recipe import loading
from runner.train.launch import train

pytestmark = pytest.mark.model


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_zero_runs_on_two_cpu_processes(session_dirs, tiny_model_dir, stage):
    loaded = loading.load("tiny-cpu", ["hardware.gpus=2", f"hardware.deepspeed={stage}", "train.max_steps=6",
                                       "train.save_steps=6"])
    run = train(loaded, target="torchrun")
    manifest = run.manifest().to_json()
    assert manifest["status"] == "trained"
    for rank in ("rank-0", "rank-1"):
        evidence = manifest["train"]["ranks"][rank]
        assert evidence["steps"] == 6
        # what accelerate set up inside each training process: DeepSpeed over gloo, 2 processes, this stage
        engine = {k: evidence["engine"][k] for k in ("backend", "distributed_type", "rank", "world_size", "zero_stage")}
        assert engine == {"backend": "gloo", "distributed_type": "DEEPSPEED", "rank": int(rank[-1]), "world_size": 2,
                          "zero_stage": int(stage[-1])}
        # ZeRO-3 partitions each parameter; the counts still report the full model (ds_numel), the same on every rank
        assert 0 < evidence["engine"]["params_trainable"] < evidence["engine"]["params_total"] == 282432
    assert "ACCELERATE_USE_CPU" not in run.file("launch.sh").read_text()
