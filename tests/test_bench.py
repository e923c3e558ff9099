"""The benchmark's own correctness on toy inputs (fast, no model): timing and polling subprocesses, the A/B
alternation of each figure, the ratios of means, goals, and the results file.

The quick benchmark itself (bench/run.py --quick: every figure at toy sizes, 8 to 20 minutes) is not part of `make
test`: `make bench-check` runs it (marker `bench`) through test_bench_quick_writes_every_figure_without_a_demo_run."""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import bf16, common, demo, eval_batch, fit, overhead, prep, results, seeds
from bench import run as bench_run
from bench.common import DEMO_RECIPE, SIZES, Context, Failed

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


@pytest.mark.model
@pytest.mark.bench
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


# ---------------------------------------------------------------- measuring subprocesses (bench/common.py)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_timed_measures_wall_cpu_memory_and_keeps_the_log(tmp_path):
    """A child that burns 0.3 s of CPU, holds 40 MB and prints a marker line: every measure sees it."""
    code = ("import time\nblock = bytearray(40 * 2**20)\nwhile time.process_time() < 0.3:\n    block[0] = 1\n"
            "print('noise')\nprint('BENCH_TOY {\"n\": 1}')\nprint('BENCH_TOY {\"n\": 2}')")
    before = time.time()
    result = common.timed("toy", _python(code), cwd=tmp_path, env=dict(os.environ), logs=tmp_path / "logs", rss=True)
    after = time.time()
    assert result["cpu_s"] >= 0.3 and result["wall_s"] >= result["cpu_s"] * 0.9
    assert before - 0.001 <= result["started_unix"] and result["ended_unix"] <= after + 0.01  # rounded to 1 ms
    assert result["ended_unix"] == pytest.approx(result["started_unix"] + result["wall_s"], abs=0.002)
    assert common.marker(result["text"], "BENCH_TOY") == {"n": 2}  # the last marker line
    log = (tmp_path / "logs" / "toy.log").read_text()
    assert log.startswith(f"$ (cd {tmp_path} && ") and "noise" in log
    assert result["log"] == str(tmp_path / "logs" / "toy.log")
    assert result["peak_pss_tree_mb"] >= 40
    if Path("/usr/bin/time").exists():
        assert result["peak_rss_max_process_mb"] >= 40


def test_timed_polls_until_the_poll_answers(tmp_path):
    flag = tmp_path / "flag"
    code = f"import pathlib, time\ntime.sleep(0.2)\npathlib.Path({str(flag)!r}).write_text('x')\ntime.sleep(0.3)"
    answers = []

    def poll(started_epoch, started):
        answers.append(round(time.perf_counter() - started, 3) if flag.exists() else None)
        return answers[-1]

    result = common.timed("poll", _python(code), cwd=tmp_path, env=dict(os.environ), logs=tmp_path, poll=poll)
    assert 0.2 <= result["polled"] < result["wall_s"] and result["polled"] == answers[-1]
    assert len(answers) >= 5 and set(answers[:-1]) == {None}  # every 10 ms until it answered, then no more


def test_timed_stops_on_a_failed_or_hung_command(tmp_path):
    with pytest.raises(Failed, match=r"(?s)fails: exit code 3.*last words"):
        common.timed("fails", _python("print('last words'); raise SystemExit(3)"), cwd=tmp_path, env=dict(os.environ),
                     logs=tmp_path)
    started = time.perf_counter()
    with pytest.raises(Failed, match="hangs: timed out after 1 s"):
        common.timed("hangs", _python("import time; time.sleep(60)"), cwd=tmp_path, env=dict(os.environ),
                     logs=tmp_path, timeout=0.6)
    assert time.perf_counter() - started < 10


def test_spread_mean_and_marker():
    assert common.spread([1.0, 2.0, 3.0]) == {"runs": [1.0, 2.0, 3.0], "mean": 2.0, "stdev": 1.0}
    assert common.spread([0.12345]) == {"runs": [0.123], "mean": 0.123, "stdev": 0.0}
    assert common.mean([1.0, 2.0]) == 1.5
    with pytest.raises(Failed, match="no BENCH_X line"):
        common.marker("BENCH_XY {}\nBENCH_Y {}\n", "BENCH_X")


def test_base_env_is_offline_and_keeps_runs_in_the_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    env = common.base_env(tmp_path)
    assert env["RECIPE_RUNS_DIR"] == str(tmp_path / "runs") and env["RECIPE_CACHE_DIR"] == str(tmp_path / "cache")
    assert env["HF_HUB_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1" and env["WANDB_MODE"] == "online"
    assert env["PATH"].split(os.pathsep)[0] == str(common.VENV_BIN)
    monkeypatch.delenv("WANDB_MODE")
    assert common.base_env(tmp_path)["WANDB_MODE"] == "disabled"
    assert Context(tmp_path, {}, True).env(EXTRA="1")["EXTRA"] == "1"


# ---------------------------------------------------------------- goals and the results file (bench/results.py)


def test_goals_are_judged_at_their_thresholds():
    goals = results.judge({"runner_overhead_ratio": 1.03, "launch_latency_s": 1.5, "prep_ratio_vs_axolotl": 0.8,
                           "packing_efficiency": 0.97})
    assert {k: v["met"] for k, v in goals.items()} == {
        "runner_overhead_ratio": True, "launch_latency_s": False, "prep_ratio_vs_axolotl": True,
        "packing_efficiency": False, "eval_batch_speedup": None}
    assert goals["launch_latency_s"] == {"goal": "< 1.5", "value": 1.5, "met": False}


def test_results_file_layout_and_table(tmp_path):
    record = {"figures": {"runner_overhead_ratio": 1.2, "packing_efficiency": 0.99,
                          "demo_stage_seconds": {"train_s": 3.0}}, "date": "d",
              "details": {"demo": {"missing": ["/tmp/demo.start"]}}, "errors": {"prep": "boom\nmore"}}
    record["goals"] = results.judge(record["figures"])
    out = tmp_path / "sub" / "results.json"
    results.write(record, out)
    assert out.read_text() == json.dumps(record, indent=2, sort_keys=True) + "\n"
    assert list(json.loads(out.read_text())) == sorted(record)
    lines = results.table(record).splitlines()
    assert lines[0].split() == ["figure", "value", "goal", "met"]
    assert lines[1].split() == ["packing_efficiency", "0.99", ">=", "0.98", "yes"]
    assert lines[2].split() == ["runner_overhead_ratio", "1.2", "<=", "1.03", "NO"]
    assert lines[3:] == ["demo_stage_seconds: train_s=3.0", "  missing: /tmp/demo.start", "ERROR prep: boom"]


# ---------------------------------------------------------------- figure 1, runner overhead (bench/overhead.py)


def test_overhead_alternates_a_b_b_a_and_b_copies_the_first_a_run(tmp_path, monkeypatch):
    real_run_b, calls = overhead._run_b, []
    walls = {1: 10.0, 2: 8.0, 3: 9.0, 4: 12.0}

    def run_a(ctx, index, env):
        calls.append(("A", index, env["HF_DATASETS_CACHE"]))
        run = tmp_path / f"a-run-{index}"
        result = {"wall_s": walls[index], "cpu_s": walls[index] / 2, "polled": {"manifest_s": index / 10}}
        return result, run, {"train_s": walls[index] - 1}

    def run_b(ctx, index, env, first_run):
        calls.append(("B", index, first_run))
        return {"wall_s": walls[index], "cpu_s": walls[index] / 4}

    monkeypatch.setattr(overhead, "_prepare_and_warm_up", lambda ctx: calls.append("prepare"))
    monkeypatch.setattr(overhead, "_run_a", run_a)
    monkeypatch.setattr(overhead, "_run_b", run_b)
    ctx = Context(tmp_path, {"order": "ABBA", "train_overrides": ["train.max_steps=1"]}, quick=False)
    figures, details = overhead.bench(ctx)
    assert calls == ["prepare", ("A", 1, str(tmp_path / "hf-datasets" / "overhead-1")),
                     ("B", 2, tmp_path / "a-run-1"), ("B", 3, tmp_path / "a-run-1"),
                     ("A", 4, str(tmp_path / "hf-datasets" / "overhead-4"))]
    assert figures == {"runner_overhead_ratio": round(11.0 / 8.5, 4), "launch_latency_s": 0.25}
    assert details["order"] == "ABBA" and details["runner_train_s"]["runs"] == [10.0, 12.0]
    assert details["axolotl_train_s"]["runs"] == [8.0, 9.0]
    assert details["runner_overhead_ratio_cpu"] == round(5.5 / 2.125, 4)
    assert details["runner_outside_trainer_s"] == 1.0 and ctx.tiny_run == tmp_path / "a-run-1"
    with pytest.raises(Failed, match="must start with A"):
        real_run_b(ctx, 1, {}, None)


def test_launch_poller_answers_once_a_new_run_names_its_trainer(tmp_path):
    runs = tmp_path / "tiny-cpu"
    poll = overhead.launch_poller(runs, before={"old"})
    assert poll(time.time(), time.perf_counter()) is None  # no runs folder yet
    (runs / "old").mkdir(parents=True)
    (runs / "old" / "manifest.json").write_text(json.dumps({"train_pid": 1}))  # there before: not this launch
    (runs / "latest").symlink_to("old")
    new = runs / "new"
    new.mkdir()
    started = time.perf_counter()
    assert poll(time.time(), started) is None  # no manifest yet
    (new / "manifest.json").write_text('{"status": "prep')  # half written
    assert poll(time.time(), started) is None
    (new / "manifest.json").write_text(json.dumps({"status": "training", "train_pid": None}))
    assert poll(time.time(), started) is None
    (new / "manifest.json").write_text(json.dumps({"status": "training", "train_pid": os.getpid()}))
    record = poll(time.time(), started)
    assert record["run"] == "new" and record["train_pid"] == os.getpid() and 0 <= record["manifest_s"] < 5
    assert record["process_created_s"] < 0  # this process started before the "launch"


def test_launch_exports_and_the_copied_run_directory(tmp_path):
    launch = tmp_path / "launch.sh"
    launch.write_text('#!/bin/bash\nexport PYTHONUNBUFFERED=1 ACCELERATE_USE_CPU=true  # cpu\n'
                      'export NOTE="two words"\nexport NOVALUE\necho export FAKE=1\n')
    assert overhead.launch_exports(launch) == {"PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "true",
                                               "NOTE": "two words"}
    source = tmp_path / "run"
    for name in ("axolotl.yaml", "launch.sh", "metrics.jsonl", "manifest.json", "report.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(name)
    for folder in ("data", "model", "logs", "prepared", "ranks", "eval", "plots"):
        (source / folder).mkdir()
        (source / folder / "f").write_text(folder)
    overhead.copy_run(source, tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["axolotl.yaml", "data", "launch.sh"]
    assert (tmp_path / "copy" / "data" / "f").read_text() == "data"


# ---------------------------------------------------------------- figure 2, data preparation (bench/prep.py)


def test_prep_rows_are_reproducible_and_unique(tmp_path):
    first, second = prep.build_rows(40, tmp_path / "a.jsonl"), prep.build_rows(40, tmp_path / "b.jsonl")
    assert first.read_bytes() == second.read_bytes()
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    assert len(rows) == 40 and all(set(r) == {"instruction", "input", "output"} for r in rows)
    assert [r["instruction"].rsplit(" (row ", 1)[1] for r in rows] == [f"{n})" for n in range(40)]


def test_prep_alternates_a_b_b_a_with_fresh_caches_and_takes_ratios_of_means(tmp_path, monkeypatch):
    calls = []

    def fake(kind, wall, work):
        def run(ctx, label, *args):
            fresh, env = args[-2], args[-1]
            assert env["RECIPE_CACHE_DIR"] == str(fresh / "cache") and not any(fresh.iterdir())
            calls.append((kind, label))
            result = {"wall_s": wall[label], "cpu_s": 1.0, "imports_s": 0.5, "work_s": work[label],
                      "peak_pss_tree_mb": 100.0, "peak_rss_max_process_mb": 80.0, "text": "num_proc=2"}
            return result, ({"train": 24, "val": 3, "test": 3} if kind == "A" else 30)

        return run

    monkeypatch.setattr(prep, "_run_runner", fake("A", {"1/4": 2.0, "4/4": 4.0}, {"1/4": 1.0, "4/4": 2.0}))
    monkeypatch.setattr(prep, "_run_axolotl", fake("B", {"2/4": 5.0, "3/4": 7.0}, {"2/4": 3.0, "3/4": 3.0}))
    ctx = Context(tmp_path, {"prep_rows": 30, "prep_order": "ABBA", "prep_tokenize": False}, quick=False)
    figures, details = prep.bench(ctx)
    assert calls == [("A", "1/4"), ("B", "2/4"), ("B", "3/4"), ("A", "4/4")]
    assert figures["prep_ratio_vs_axolotl"] == 0.5 and figures["prep_work_ratio_vs_axolotl"] == 0.5
    assert figures["prep_rows_per_s"] == 8.0 and figures["prep_runner_peak_mem_mb"] == 100.0  # training rows / s
    assert details["axolotl_dataset_num_proc"] == 2 and details["runner_output_tokenized_by_axolotl"] is None
    assert len((tmp_path / "prep" / "rows.jsonl").read_text().splitlines()) == 30


def test_prep_reads_axolotls_worker_count_and_saved_rows(tmp_path):
    import pyarrow as pa

    assert prep.axolotl_num_proc("map (num_proc=4)\n... num_proc: 2 ...") == 2
    assert prep.axolotl_num_proc("nothing here") is None
    assert prep.saved_rows(tmp_path) is None
    for shard, n in (("a", 3), ("b", 4)):
        folder = tmp_path / "prepared" / shard
        folder.mkdir(parents=True)
        table = pa.table({"input_ids": [[1, 2]] * n})
        with pa.OSFile(str(folder / "data-00000.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000.arrow"}]}))
    assert prep.saved_rows(tmp_path / "prepared") == 7


# ---------------------------------------------------------------- figure 4, eval batching (bench/eval_batch.py)


def _pass(batch_size: int, seconds: float, tokens: int | None = 40, items: int = 4) -> dict:
    return {"batch_size": batch_size, "generate_s": seconds, "generate_cpu_s": seconds * 2, "items": items,
            "new_tokens": tokens, "evaluate_total_s": seconds + 1}


def test_eval_speedup_is_the_ratio_of_mean_generation_seconds():
    passes = [_pass(1, 8.0), _pass(8, 1.0), _pass(8, 3.0), _pass(1, 12.0)]  # alternated 1, 8, 8, 1
    summary = eval_batch.summarise({"passes": passes})
    assert summary["speedup"] == 5.0 and summary["speedup_cpu"] == 5.0 and summary["batched_size"] == 8
    assert summary["items"] == 4 and summary["by_batch_size"]["1"]["items_per_s"] == 0.4
    assert summary["by_batch_size"]["8"]["generate_s"]["runs"] == [1.0, 3.0]
    assert summary["token_throughput_speedup"] == 5.0
    fewer_tokens = eval_batch.summarise({"passes": [_pass(1, 8.0, 40), _pass(8, 2.0, 20)]})
    assert fewer_tokens["speedup"] == 4.0 and fewer_tokens["token_throughput_speedup"] == 2.0
    assert eval_batch.summarise({"passes": [_pass(1, 2.0, None), _pass(4, 1.0, None)]})[
        "token_throughput_speedup"] is None
    with pytest.raises(Failed, match="different item counts"):
        eval_batch.summarise({"passes": [_pass(1, 1.0, items=4), _pass(8, 1.0, items=3)]})


# ---------------------------------------------------------------- figures 5 to 8 (demo, bf16, fit, seeds)


def test_demo_intervals_from_stamps():
    stamps = {"start": 100.0, "trained": 160.5, "end": 200.25}
    assert demo.intervals(stamps) == {"demo_start_unix": 100.0, "demo_trained_unix": 160.5, "demo_end_unix": 200.25,
                                      "start_to_trained_s": 60.5, "trained_to_end_s": 39.75, "start_to_end_s": 100.25}
    assert demo.intervals({"start": 1.0}) == {"demo_start_unix": 1.0}


def test_bf16_comparison_pairs_items_and_applies_the_rule():
    fp32 = {i: 1.0 for i in range(20)}
    same = bf16.compare(fp32, dict(fp32))
    assert same["delta"] == 0 and same["holds"] and same["n"] == 20 and same["differing_items"] == 0
    one_worse = bf16.compare(fp32, {**fp32, 3: 0.0, 99: 0.0})  # item 99: scored by one side only, left out
    assert one_worse["n"] == 20 and one_worse["delta"] == -0.05 and one_worse["differing_items"] == 1
    assert not one_worse["holds"]  # 5 points below: more than the 2 allowed
    mixed = {i: float(i % 2) for i in range(100)}
    close = bf16.compare(mixed, {**mixed, 0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0, 5: 0.0})  # -1 point, interval spans 0
    assert close["delta"] == -0.01 and close["ci95"][0] < 0 < close["ci95"][1] and close["holds"]
    with pytest.raises(Failed, match="no common held-out item"):
        bf16.compare({1: 1.0}, {2: 1.0})


def test_bf16_figures_are_fp32_over_bf16():
    runs = {p: {"seconds": {"prepare_s": 1.0, "train_s": t, "eval_s": e}, "exec_accuracy": a, "tokens_per_s": 9.0}
            for p, t, e, a in (("fp32", 30.0, 12.0, 0.5), ("bf16", 20.0, 16.0, 0.45))}
    figures = bf16.figures_of(runs, {"delta": -0.05, "holds": False}, {"train_ratio": 1.4, "eval_ratio": 0.8})
    assert figures["bf16_train_s_ratio_demo"] == 1.5 and figures["bf16_eval_s_ratio_demo"] == 0.75
    assert figures["bf16_train_speedup"] == 1.4 and figures["bf16_accuracy_holds"] is False
    assert figures["bf16_vs_fp32"]["bf16"]["exec_accuracy"] == 0.45


def test_fit_summary_counts_verdicts_and_peaks_within_tolerance():
    rows = [{"id": "a", "compared": "allocated", "agree": True, "error": 0.10},
            {"id": "b", "compared": "allocated", "agree": False, "error": -0.40},
            {"id": "c", "compared": "allocated", "agree": True, "error": 0.25},
            {"id": "d", "compared": "peak", "error": 0.9}]  # a published estimate, no verdict: reported apart
    figures, counts = fit.summarize(rows)
    assert figures == {"fit_published_verdicts_agree": round(2 / 3, 3), "fit_published_within_25pct": round(2 / 3, 3),
                       "fit_published_median_abs_error": 0.25}
    assert counts["verdict_misses"] == ["b"] and counts["peak_misses"] == ["b (-40%)"]
    assert counts["max_abs_error"] == 0.4


def test_seed_spread_is_the_sample_standard_deviation():
    assert seeds.spread([0.5, 0.7, None, 0.6]) == round(statistics.stdev([0.5, 0.7, 0.6]), 4)
    assert seeds.spread([0.5, None]) is None


# ---------------------------------------------------------------- the run (bench/run.py)


def test_run_writes_figures_details_goals_and_errors(tmp_path, monkeypatch, capsys):
    contexts = []

    def toy(ctx):
        contexts.append(ctx)
        return {"runner_overhead_ratio": 1.01, "toy_figure": 2.5}, {"note": "toy"}

    def broken(ctx):
        raise Failed("broken: no luck")

    def other(ctx):
        return {"other_figure": 7}, {}

    monkeypatch.setattr(bench_run, "PHASES", {"toy": toy, "broken": broken, "other": other})
    monkeypatch.setattr(bench_run, "FIGURES", ("toy", "broken", "other"))
    monkeypatch.setattr(bench_run.tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "results.json"
    assert bench_run.main(["--quick", "--only", "toy", "--out", str(out)]) == 0
    assert [(c.quick, c.size, c.tmp.parent) for c in contexts] == [(True, SIZES["quick"], tmp_path)]
    record = json.loads(out.read_text())
    assert record["quick"] is True and record["figures_run"] == ["toy"] and "errors" not in record
    assert record["figures"] == {"runner_overhead_ratio": 1.01, "toy_figure": 2.5}
    assert record["goals"]["runner_overhead_ratio"]["met"] is True
    assert record["goals"]["launch_latency_s"]["met"] is None
    details = record["details"]["toy"]
    assert details["note"] == "toy" and details["phase_s"] >= 0 and details["other_processes_cores"] >= 0
    assert record["machine"]["cpu_count"] == os.cpu_count() and len(record["machine"]["load_avg_at_end"]) == 3
    assert out.read_text() == json.dumps(record, indent=2, sort_keys=True) + "\n"
    assert "toy_figure" in capsys.readouterr().out
    assert [p for p in tmp_path.iterdir() if p.name.startswith("recipe-bench-")] == []  # no error: folder removed

    assert bench_run.main(["--only", "toy,broken,other", "--out", str(out)]) == 1
    record = json.loads(out.read_text())
    assert record["errors"] == {"broken": "broken: no luck"}  # the phases after a failed one still run
    assert record["figures"] == {"runner_overhead_ratio": 1.01, "toy_figure": 2.5, "other_figure": 7}
    assert "broken" not in record["details"] and record["quick"] is False and contexts[-1].size == SIZES["full"]
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("recipe-bench-")]) == 1  # kept, for its logs
    assert "ERROR broken: broken: no luck" in capsys.readouterr().out

    assert bench_run.main(["--only", "toy,nope", "--out", str(tmp_path / "never.json")]) == 2
    assert not (tmp_path / "never.json").exists()
