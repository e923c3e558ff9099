"""bench/run.py --quick runs every figure at toy sizes and writes a complete results file (no timed assertions),
on a fresh clone too: with no demo run, it runs the demo's stages itself."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import demo, eval_batch
from bench.common import DEMO_RECIPE, SIZES, Context

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = ("runner_overhead_ratio", "launch_latency_s", "prep_ratio_vs_axolotl", "prep_work_ratio_vs_axolotl",
           "prep_rows_per_s", "prep_runner_peak_mem_mb", "prep_axolotl_peak_mem_mb", "packing_efficiency",
           "packing_efficiency_off", "packing_efficiency_cpu_sdpa", "eval_batch_speedup",
           "eval_batch_speedup_tiny")
GOALS = ("runner_overhead_ratio", "launch_latency_s", "prep_ratio_vs_axolotl", "packing_efficiency",
         "eval_batch_speedup")
DEMO_STAGES = ("prepare_s", "train_s", "eval_s", "start_to_trained_s", "trained_to_end_s", "start_to_end_s")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
def test_bench_quick_writes_every_figure_without_a_demo_run(tmp_path):
    """A fresh clone: no runs (RECIPE_RUNS_DIR empty), no cache. `make demo` has not run, and the bench still
    exits 0 with every figure, demo stage timings included (it runs the demo's train and eval stages itself)."""
    out = tmp_path / "results.json"
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    runs.mkdir()
    cache.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", RECIPE_RUNS_DIR=str(runs),
               RECIPE_CACHE_DIR=str(cache))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    results = json.loads(text)
    assert text == json.dumps(results, indent=2, sort_keys=True) + "\n"  # sorted keys, stable layout
    assert results["quick"] is True and "errors" not in results
    machine = results["machine"]
    assert is_number(machine["cpu_count"]) and machine["platform"] and machine["packages"]["axolotl"]
    assert results["date"]
    figures = results["figures"]
    for key in NUMBERS:
        assert is_number(figures.get(key)), (key, figures.get(key))
    assert 0 < figures["packing_efficiency"] <= 1 and 0 < figures["packing_efficiency_off"] <= 1
    stages = figures["demo_stage_seconds"]
    assert isinstance(stages, dict) and all(is_number(v) for v in stages.values())
    for key in DEMO_STAGES:
        assert is_number(stages.get(key)) and stages[key] > 0, (key, stages)
    details = results["details"]["demo"]
    assert details["source"] == "bench" and details["missing"] == []
    assert details["train_overrides"] == SIZES["quick"]["demo_train_overrides"]
    for key in GOALS:
        assert results["goals"][key]["met"] in (True, False)
    for key in ("bf16_train_speedup", "bf16_eval_speedup", "bf16_train_s_ratio_demo",  # bench/bf16.py
                "bf16_eval_s_ratio_demo", "bf16_exec_accuracy_delta"):
        assert is_number(figures.get(key)), (key, figures.get(key))
    assert figures["bf16_accuracy_holds"] in (True, False)
    assert is_number(figures["seeds_exec_accuracy_sd"]) and len(figures["seeds_exec_accuracy_range"]) == 2  # seeds.py
    seed_runs = results["details"]["seeds"]["runs"]
    assert [r["seed"] for r in seed_runs] == [1, 2] and results["details"]["seeds"]["group"]
    bf16_runs = results["details"]["bf16"]["runs"]
    assert bf16_runs["bf16"]["precision_seen"]["autocast_dtype"] == "bfloat16"
    assert bf16_runs["fp32"]["precision_seen"]["autocast_dtype"] is None
    speed = results["details"]["bf16"]["speed"]
    assert speed["order"] == ["fp32", "bf16"]
    assert all(len(speed[k][p]) == 1 for k in ("tokens_per_s", "eval_finetuned_s") for p in ("fp32", "bf16"))
    for precision in ("fp32", "bf16"):
        stages = figures["bf16_vs_fp32"][precision]
        assert all(is_number(stages[k]) for k in ("prepare_s", "train_s", "eval_s", "exec_accuracy")), stages
    assert "figure" in done.stdout and str(out) in done.stdout  # the table was printed
    assert list(runs.iterdir()) == [] and list(cache.iterdir()) == []  # the user's folders are left alone


def fake_run(runs: Path, run_id: str, status: str = "evaluated", base: Path | None = None) -> Path:
    run = runs / DEMO_RECIPE / run_id
    (run / "model").mkdir(parents=True)
    (run / "model" / "adapter_config.json").write_text("{}")
    (run / "eval").mkdir()
    (run / "eval" / "summary.json").write_text("{}")
    manifest = {"status": status, "base_model_dir": str(base or runs), "model_dir": "model",
                "timings": {"prepare_s": 1.5, "train_s": 20.0, "eval_s": 7.25, "eval_finetuned_s": 5.0}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_bench_uses_the_newest_finished_demo_run(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    older = fake_run(runs, "20260101-000000-aaaaaaaa")
    newest = fake_run(runs, "20260103-000000-cccccccc")
    fake_run(runs, "20260104-000000-dddddddd", status="trained")  # not evaluated: no eval_s
    fake_run(runs, "20260105-000000-eeeeeeee", base=tmp_path / "gone")  # its base model was removed
    (runs / DEMO_RECIPE / "latest").symlink_to("20260104-000000-dddddddd")
    monkeypatch.setenv("RECIPE_RUNS_DIR", str(runs))
    assert demo.newest_finished(runs / DEMO_RECIPE) == newest
    (newest / "manifest.json").unlink()
    assert demo.newest_finished(runs / DEMO_RECIPE) == older
    assert demo.newest_finished(tmp_path / "nothing") is None

    ctx = Context(tmp=tmp_path / "bench", size=SIZES["quick"], quick=True)
    figures, details = demo.bench(ctx)
    stages = figures["demo_stage_seconds"]
    assert [stages[k] for k in ("prepare_s", "train_s", "eval_s", "eval_finetuned_s")] == [1.5, 20.0, 7.25, 5.0]
    assert details["source"] == "existing" and details["status"] == "evaluated"
    assert Path(details["run"]) == older.resolve()

    copy, origin = eval_batch._demo_copy(ctx)  # figure 4 evaluates a copy: the run and runs/ stay as they were
    assert origin == {"source": "existing"}
    assert (copy / "model" / "adapter_config.json").is_file() and not (copy / "eval").exists()
    assert (older / "eval" / "summary.json").is_file()
