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




def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in run.file("metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tiny_cpu_trains_end_to_end(trained_tiny_run):
    run = trained_tiny_run
    manifest = run.manifest()
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
    assert rundir.find("tiny-cpu").path == run.path  # runs/tiny-cpu/latest
    ranks = run.file("ranks", "rank-0.jsonl").read_text().splitlines()
    assert len(ranks) == 30 and json.loads(ranks[-1])["world_size"] == 1


@pytest.mark.slow
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
            manifest = candidate.manifest()
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
    manifest = run.manifest()
    assert manifest["status"] == "failed" and manifest["error"]["log_tail"]
    assert run.file("data", "train.jsonl").is_file() and run.file("model", "checkpoint-10").is_dir()

    resumed = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    manifest = run.manifest()
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


@pytest.mark.slow
def test_resume_uses_the_target_the_run_was_planned_for(trained_tiny_run):
    from runner.train.launch import train

    run = train(loading.load("tiny-cpu"), target="slurm", resume=trained_tiny_run.run_id)  # a local run
    assert run.path == trained_tiny_run.path and run.manifest()["status"] == "trained"
    assert run.manifest()["target"] == "local" and "slurm_job_id" not in run.manifest()


@pytest.mark.slow
def test_resume_refuses_a_changed_recipe(trained_tiny_run, run_cli):
    code, out, err = run_cli("train", "tiny-cpu", "train.seed=7", "--resume")
    assert code == 2 and "made from a different resolved recipe" in err


@pytest.mark.slow
def test_merge_gives_the_same_logits_as_base_plus_adapter(trained_tiny_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.train.merge import merge

    run = trained_tiny_run
    merged_dir = merge(run)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    inputs = tokenizer("### Instruction:\nName a colour.\n\n### Response:\n", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(run.manifest()["base_model_dir"], dtype=torch.float32)
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(base, run.file("model")).eval()(**inputs).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()(**inputs).logits
        plain = AutoModelForCausalLM.from_pretrained(run.manifest()["base_model_dir"]).eval()(**inputs).logits
    assert torch.allclose(adapted, merged, atol=1e-4)
    assert not torch.allclose(plain, merged, atol=1e-4)  # the adapter changed something


@pytest.mark.slow
def test_stopping_the_runner_stops_its_trainer(session_dirs, tiny_model_dir):
    process = subprocess.Popen([sys.executable, "-m", "runner", "train", "tiny-cpu", "train.seed=5"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, trainer, run = time.monotonic() + 120, None, None
    while time.monotonic() < deadline and trainer is None:
        latest = session_dirs / "runs" / "tiny-cpu" / "latest"
        if latest.exists():
            run = rundir.RunDir(latest.resolve())
            manifest = run.manifest()
            if manifest.get("train_pid") and manifest["fingerprint"] == loading.load("tiny-cpu", ["train.seed=5"]).fingerprint:
                trainer = manifest["train_pid"]
        time.sleep(0.1)
    assert trainer, "the trainer never started"
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 130
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(trainer, 0)  # no orphaned trainer
    assert run.manifest()["status"] == "failed" and run.manifest()["error"]["message"] == "stopped"


def test_padding_waste_is_estimated_only_for_unpacked_runs():
    from runner.train.launch import _padding_waste

    manifest = {"data": {"stats": {"train": {"tokens_per_row": {"mean": 100.0}}}},
                "batch": {"global": 4, "packing": False}}
    assert _padding_waste(manifest, steps=10, tokens_seen=5000) == 0.2  # 4,000 real of 5,000 processed
    manifest["batch"]["packing"] = True  # tokens seen count whole packed rows: rows x mean says nothing
    assert _padding_waste(manifest, steps=10, tokens_seen=5000) is None


def test_metrics_summary_skips_a_line_cut_off_mid_write(tmp_path):
    from runner.train.launch import summarize_metrics

    run = rundir.RunDir(tmp_path)
    run.update(status="failed")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.1}\n{"step": 3, "lo')
    summary = summarize_metrics(run)
    assert summary["steps"] == 2 and summary["final_loss"] == 2.1 and summary["logged_steps"] == 2
