"""bench/run.py --quick runs every figure at toy sizes and writes a complete results file (no timed assertions)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = ("runner_overhead_ratio", "launch_latency_s", "prep_ratio_vs_axolotl", "prep_work_ratio_vs_axolotl",
           "prep_rows_per_s", "prep_runner_peak_mem_mb", "prep_axolotl_peak_mem_mb", "packing_efficiency",
           "packing_efficiency_off", "packing_efficiency_cpu_sdpa", "eval_batch_speedup",
           "eval_batch_speedup_tiny")
GOALS = ("runner_overhead_ratio", "launch_latency_s", "prep_ratio_vs_axolotl", "packing_efficiency",
         "eval_batch_speedup")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
def test_bench_quick_writes_every_figure(tmp_path):
    out = tmp_path / "results.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
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
    demo = figures["demo_stage_seconds"]
    assert isinstance(demo, dict) and all(is_number(v) for v in demo.values())
    assert isinstance(results["details"]["demo"]["missing"], list)
    for key in GOALS:
        assert results["goals"][key]["met"] in (True, False)
    assert "figure" in done.stdout and str(out) in done.stdout  # the table was printed
