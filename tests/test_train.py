"""Training for real: tiny-cpu through axolotl on CPU, a killed trainer and its resume, merge."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from runner.recipe import loading
from runner.runs import rundir
from runner.runs.data_info import DataInfo, SplitStats, TokenPercentiles
from runner.runs.manifest import Batch, Hardware, Manifest, Status
from runner.train import summary


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in run.file("metrics.jsonl").read_text().splitlines()]


@pytest.mark.model
def test_tiny_cpu_trains_end_to_end(trained_tiny_run):
    run = trained_tiny_run
    manifest = run.manifest().to_json()
    assert manifest["status"] == "trained" and manifest["error"] is None
    losses = [m["loss"] for m in _metrics(run) if "loss" in m]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # loss falls
    assert (run.file("model", "adapter_model.safetensors")).is_file()
    assert (run.file("model", "adapter_config.json")).is_file()
    recipe = loading.load("tiny-cpu")
    assert manifest["fingerprint"] == recipe.fingerprint and manifest["recipe_version"] == "1.0.0"
    assert {"torch", "transformers", "axolotl", "peft"} <= set(manifest["packages"])
    assert manifest["git_commit"] and manifest["seeds"] == {"train": 42, "split": 42}
    assert manifest["data"]["fingerprints"]["data/samples/alpaca-sample.jsonl"] and manifest["data"]["counts"]["train"]
    assert manifest["hardware"]["device"] == "cpu" and manifest["batch"]["global"] == 4
    assert manifest["timings"]["train_s"] > 0 and manifest["train"]["steps"] == 30
    assert 0 <= manifest["train"]["padding_waste"] < 1  # rows are padded to the longest in their batch
    # parameter counts from the trainer's own model (the plugin), so FLOP/s are measured, not guessed
    assert 0 < manifest["train"]["params_trainable"] < manifest["train"]["params_total"]
    assert manifest["train"]["tflops"] > 0 and manifest["train"]["mfu"] is None  # a CPU has no peak on record
    assert rundir.find("tiny-cpu", run.run_id).path == run.path  # `latest` is checked where no test trains between
    ranks = run.file("ranks", "rank-0.jsonl").read_text().splitlines()
    assert len(ranks) == 30 and json.loads(ranks[-1])["world_size"] == 1


@pytest.mark.model
def test_killed_trainer_fails_cleanly_then_resumes_to_the_same_final_step(session_dirs, tiny_model_dir):
    """SIGKILL the training process after its first checkpoint; the run is `failed` with the log tail, exit
    non-zero, checkpoints intact; `--resume` continues from the checkpoint to the same final step."""
    env = dict(os.environ)
    argv = [sys.executable, "-m", "runner", "train", "tiny-cpu", "train.max_steps=40", "train.save_steps=10"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    run = None
    while time.monotonic() < deadline:
        latest = session_dirs / "runs" / "tiny-cpu" / "latest"
        if latest.exists():
            candidate = rundir.RunDir(latest.resolve())
            manifest = candidate.manifest().to_json()
            complete = candidate.file("model", "checkpoint-10", "trainer_state.json").is_file()
            if manifest.get("status") == "training" and complete \
                    and manifest["fingerprint"] == loading.load("tiny-cpu", argv[5:]).fingerprint:
                run = candidate
                os.kill(manifest["train_pid"], signal.SIGKILL)
                break
        time.sleep(0.2)
    out, err = process.communicate(timeout=120)
    assert run is not None, f"no checkpoint appeared: {err[-2000:]}"
    assert process.returncode == 1 and "Traceback (most recent call last)" not in err.split("failed:")[-1]
    assert "the training process exited with code -9" in err
    manifest = run.manifest().to_json()
    assert manifest["status"] == "failed" and manifest["error"]["log_tail"]
    assert run.file("data", "train.jsonl").is_file() and run.file("model", "checkpoint-10").is_dir()

    resumed = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    manifest = run.manifest().to_json()
    assert manifest["status"] == "trained" and manifest["train"]["steps"] == 40
    steps = [m["step"] for m in _metrics(run) if "loss" in m]
    assert steps[-1] == 40 and min(s for s in steps if s > 10) >= 11  # continued, not restarted from 1
    assert "Resuming" in run.file("logs", "train.log").read_text() or steps.count(1) == 1


def test_launch_sets_aside_checkpoints_cut_off_mid_write(tmp_path):
    from runner.train.engine import CHECKPOINT_GUARD

    for name, complete in (("checkpoint-10", True), ("checkpoint-20", False)):
        (tmp_path / "model" / name).mkdir(parents=True)
        if complete:
            (tmp_path / "model" / name / "trainer_state.json").write_text("{}")
    subprocess.run(["bash", "-euo", "pipefail", "-c", CHECKPOINT_GUARD], cwd=tmp_path, check=True)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["checkpoint-10", "checkpoint-20.incomplete"]
    empty = tmp_path / "empty"
    empty.mkdir()
    subprocess.run(["bash", "-euo", "pipefail", "-c", CHECKPOINT_GUARD], cwd=empty, check=True)  # no checkpoints


@pytest.mark.model
def test_resume_uses_the_target_the_run_was_planned_for(own_trained_run):
    from runner.train.launch import train

    run = train(loading.load("tiny-cpu"), target="slurm", resume=own_trained_run.run_id)  # a local run
    assert run.path == own_trained_run.path and run.manifest().status == "trained"
    assert run.manifest().target == "local" and run.manifest().slurm_job_id is None


@pytest.mark.model
def test_resume_refuses_a_changed_recipe(trained_tiny_run, run_cli):
    code, out, err = run_cli("train", "tiny-cpu", "train.seed=7", "--resume")
    assert code == 2 and "made from a different resolved recipe" in err


@pytest.mark.model
def test_merge_gives_the_same_logits_as_base_plus_adapter(own_trained_run, trained_tiny_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.models.merge import merge

    run = own_trained_run  # merge writes merged/ into the run
    merged_dir = merge(run)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    inputs = tokenizer("### Instruction:\nName a colour.\n\n### Response:\n", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(run.manifest().base_model_dir, dtype=torch.float32)
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(base, run.file("model")).eval()(**inputs).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()(**inputs).logits
        plain = AutoModelForCausalLM.from_pretrained(run.manifest().base_model_dir).eval()(**inputs).logits
    assert torch.allclose(adapted, merged, atol=1e-4)
    assert not torch.allclose(plain, merged, atol=1e-4)  # the adapter changed something
    assert merged_dir.is_relative_to(run.path)
    assert not (trained_tiny_run.path / merged_dir.relative_to(run.path)).exists()  # the shared run is untouched


@pytest.mark.model
def test_publish_merge_adapter_merges_after_training(session_dirs, tiny_model_dir):
    from runner.cli.followups import after_train
    from runner.train.launch import train

    meanwhile = []  # what `recipe train` does while the trainer starts: the trainer is already there
    run = after_train(train(loading.load("tiny-cpu", ["publish.merge_adapter=true", "train.max_steps=2",
                                                      "train.seed=11"]),
                            meanwhile=lambda: meanwhile.append(rundir.find("tiny-cpu").manifest().train_pid)))
    assert len(meanwhile) == 1 and meanwhile[0] == run.manifest().train_pid
    assert run.manifest().merged_dir == "merged" and (run.path / "merged" / "config.json").is_file()
    assert (run.path / "model" / "README.md").is_file() and (run.path / "merged" / "README.md").is_file()  # cards
    assert not list(run.path.glob(".merged*"))  # staged, then published whole
    assert rundir.find("tiny-cpu").path == run.path  # runs/tiny-cpu/latest is the newest trained run


@pytest.mark.model
def test_stopping_the_runner_stops_its_trainer(session_dirs, tiny_model_dir):
    process = subprocess.Popen([sys.executable, "-m", "runner", "train", "tiny-cpu", "train.seed=5"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, trainer, run = time.monotonic() + 120, None, None
    while time.monotonic() < deadline and trainer is None:
        latest = session_dirs / "runs" / "tiny-cpu" / "latest"
        if latest.exists():
            run = rundir.RunDir(latest.resolve())
            manifest = run.manifest()
            wanted = loading.load("tiny-cpu", ["train.seed=5"]).fingerprint
            if manifest.train_pid and manifest.fingerprint == wanted:
                trainer = manifest.train_pid
        time.sleep(0.1)
    assert trainer, "the trainer never started"
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 130
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(trainer, 0)  # no orphaned trainer
    assert run.manifest().status == "failed" and run.manifest().error.message == "stopped"


def _manifest(packing: bool = False) -> Manifest:
    stats = SplitStats(rows=40, tokens=4000, overlength_action="drop",
                       tokens_per_row=TokenPercentiles(min=50, p50=100, p90=150, p99=150, max=150, mean=100.0))
    data = DataInfo(format=1, key="k", template="alpaca", stop=["</s>"], counts={"train": 40}, rows_by_source={},
                    sources={}, fingerprints={}, stats={"train": stats})
    return Manifest(run_id="r1", recipe="tiny-cpu", recipe_version="1.0.0", fingerprint="f" * 64, target="local",
                    base_model="models/tiny-llama", base_model_dir="/m", adapter=True, status=Status.TRAINED,
                    data=data, batch=Batch(micro=4, accumulation=1, world_size=1, global_=4, packing=packing))


def test_padding_waste_is_estimated_only_for_unpacked_runs():
    assert summary.padding_waste(_manifest(), steps=10, tokens_seen=5000) == 0.2  # 4,000 real of 5,000 processed
    # packed: tokens seen count whole packed rows, so rows x mean says nothing
    assert summary.padding_waste(_manifest(packing=True), steps=10, tokens_seen=5000) is None


def test_metrics_summary_skips_a_line_cut_off_mid_write(tmp_path):
    run = rundir.RunDir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.1}\n{"step": 3, "lo')
    result = summary.summarize(run, _manifest())
    assert result.steps == 2 and result.final_loss == 2.1 and result.logged_steps == 2


def test_throughput_counts_frozen_weights_and_mfu_needs_a_known_gpu(tmp_path):
    run = rundir.RunDir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5, "tokens_seen": 1000, "elapsed_s": 2.0}\n')
    (tmp_path / "ranks").mkdir()
    (tmp_path / "ranks" / "rank-0.jsonl").write_text('{"rank": 0, "world_size": 1, "step": 1}\n')
    (tmp_path / "ranks" / "rank-0.engine.json").write_text(json.dumps(
        {"rank": 0, "world_size": 1, "distributed_type": "NO", "params_total": 1000, "params_trainable": 10}))
    cpu = summary.summarize(run, _manifest())
    assert cpu.flops_per_token == 4 * 1000 + 2 * 10  # LoRA: no weight gradients for the frozen 990
    assert cpu.tflops == pytest.approx(4020 * 500 / 1e12, rel=1e-3) and cpu.mfu is None  # 500 tokens/s; no GPU peak
    gpu = _manifest().model_copy(update={"hardware": Hardware(profile="1gpu", device="cuda", gpu_model="a100-80g",
                                                              gpus=1, nodes=1, world_size=1, deepspeed="none")})
    assert summary.summarize(run, gpu).mfu == pytest.approx(4020 * 500 / 1e12 / 312.0, rel=1e-3)
