"""The GPU check (bench/gpu_check.py): its dry run, everything up to the GPU, runs here with no downloads; its
GPU half refuses a machine without CUDA, and its own code runs end to end as a CPU rehearsal (tiny model)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench import gpu_check

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _env(tmp_path: Path, **extra: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **extra)
    env.pop("RECIPE_RUNS_DIR", None)
    env.pop("RECIPE_CACHE_DIR", None)
    return env


def test_wheel_table_pins_every_wheel_and_checks_the_budget(tmp_path):
    pins = gpu_check.pins()
    constraints = (ROOT / "constraints.txt").read_text()
    for name in ("axolotl", "trl", "datasets", "bitsandbytes", "pydantic"):
        assert f"{name}=={pins[name]}" in constraints
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with (wheels / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl").open("wb") as handle:
        handle.truncate(3 * 2**20)  # 3 MiB of nothing: sizes, not contents, are what the table reads
    table = gpu_check.wheel_table(wheels, budget_mib=2.0)
    assert table["total_mib"] == 3.0 and table["within_budget"] is False
    assert "bitsandbytes" not in table["missing"] and "axolotl" in table["missing"]
    assert len(table["missing"]) == len(gpu_check.WHEELS) - 1


@pytest.mark.model
def test_gpu_check_dry_run_plans_lora_and_qlora_of_a_7b_without_downloading(tmp_path, tiny_model_dir):
    folder = tmp_path / "check"
    done = subprocess.run([sys.executable, str(SCRIPT), "dry-run", "--dir", str(folder), "--gpu-model", "h100-80g"],
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    plan = json.loads((folder / "plan.json").read_text())
    assert plan == json.loads(done.stdout)
    # the wheel list: every wheel named with its pinned version, none downloaded
    wheels = plan["wheels"]
    assert [w["name"] for w in wheels["wheels"]] == list(gpu_check.WHEELS)
    assert wheels["missing"] == list(gpu_check.WHEELS) and wheels["total_mib"] == 0 and wheels["budget_mib"] == 64
    assert not (folder / "wheels").exists()
    # the model: Mistral-7B's architecture, no weights, the tiny tokenizer
    model = Path(plan["model_dir"])
    config = json.loads((model / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (4096, 32, 32000)
    assert (model / "tokenizer.json").is_file() and not list(model.glob("*.safetensors"))
    # each recipe planned: axolotl files for SDPA, bf16, LoRA / 4-bit QLoRA on the random 7B
    for method in ("lora", "qlora"):
        run = Path(plan["planned"][method]["run_dir"])
        assert {"axolotl.yaml", "launch.sh", "manifest.json"} <= set(plan["planned"][method]["files"])
        axolotl = yaml.safe_load((run / "axolotl.yaml").read_text())
        assert axolotl["base_model"] == str(model) and axolotl["adapter"] == method
        assert axolotl["attn_implementation"] == "sdpa" and axolotl["bf16"] is True
        assert axolotl["gradient_checkpointing"] is True and axolotl["max_steps"] == gpu_check.STEPS
        assert axolotl.get("load_in_4bit", False) is (method == "qlora")
        estimate = plan["estimates"][method]
        assert estimate["fits"] is True and estimate["device_memory_gib"] > 70
        assert 0 < estimate["allocated_gib"] < estimate["peak_gib"] and estimate["tokens_per_s"] > 0
    assert plan["estimates"]["qlora"]["parts"]["weights"] < plan["estimates"]["lora"]["parts"]["weights"] / 3
    # the commands the GPU half runs, in order: an offline install first
    names = [c["name"] for c in plan["commands"]]
    assert names == ["install", "build-model", "fit-lora", "train-lora", "fit-qlora", "train-qlora"]
    install = plan["commands"][0]["command"]
    assert "--no-index" in install and "--no-deps" in install and "--target" in install


def test_gpu_half_refuses_a_machine_without_cuda(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "run", "--dir", str(tmp_path / "check")], cwd=ROOT,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "no CUDA device here" in done.stderr and "dry-run" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.model
def test_gpu_half_rehearsal_on_cpu_measures_beside_the_estimate(tmp_path, tiny_model_dir):
    """The GPU half's own code (steps, deadline, reading the manifest, comparing, writing results and $OUT) on CPU:
    the tiny model's architecture, LoRA only, this Python's packages instead of the wheels."""
    out = tmp_path / "out"
    out.mkdir()
    folder = tmp_path / "check"
    done = subprocess.run([sys.executable, str(SCRIPT), "run", "--rehearse", "--dir", str(folder)], cwd=ROOT,
                          env=_env(tmp_path, OUT=str(out)), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads((folder / "results.json").read_text())
    assert results["rehearsal"] is True and results["steps"]["install"]["skipped"]
    assert all(step["ok"] for step in results["steps"].values())
    measured, predicted = results["methods"]["lora"]["measured"], results["methods"]["lora"]["predicted"]
    assert measured["steps"] == 2 and measured["tokens"] > 0 and measured["tokens_per_s"] > 0
    assert measured["params_total"] > 0 and measured["autocast_dtype"] is None  # fp32 on the cpu profile
    assert predicted["allocated_gib"] > 0 and predicted["fits"] is True
    assert json.loads((out / "gpu-check-results.json").read_text()) == results
    assert (out / "gpu-check-train-lora.log").is_file()
