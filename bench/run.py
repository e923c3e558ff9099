#!/usr/bin/env python
"""recipe-runner benchmark: five figures, each measured side by side in one run, written to bench/results.json.

    .venv/bin/python bench/run.py            # full run (about 7 minutes on 2 quiet CPU cores; needs a demo run)
    .venv/bin/python bench/run.py --quick    # toy sizes, for the test (about 2 minutes)
    .venv/bin/python bench/run.py --only packing,demo --out /tmp/r.json

Figures (see bench/README.md for how each is measured):
  runner_overhead_ratio   `recipe train tiny-cpu` / `axolotl train axolotl.yaml --launcher python` in a copy of
                          the same run directory, alternated A,B,B,A; plus launch_latency_s (start of
                          `recipe train` -> train_pid in manifest.json, polled from outside)
  prep_ratio_vs_axolotl   runner preparing 15,000 alpaca-style rows / `axolotl preprocess` on the same rows
                          (type: alpaca), both end to end as subprocesses, alternated A,B,B,A
  packing_efficiency      real (non-pad) share of the tokens in training batches formed by axolotl's own
                          MultipackBatchSampler + collator for the shipped packing recipes (lowest of them),
                          with packing on and off; plus the CPU (sdpa) layout on tiny-cpu
  eval_batch_speedup      lm-eval generation throughput on the demo model, its eval batch size (16) / batch
                          size 1, same items, through runner.evaluate, alternated 1,16,16,1; plus tiny-cpu's
  demo_stage_seconds      stage timings of the newest smollm2-135m-sql-chatml run and /tmp/demo.* stamps

Nothing here asserts on time. Every measurement runs in a subprocess; this process only starts, polls and
reads them. Runs and caches go to a temporary folder (RECIPE_RUNS_DIR / RECIPE_CACHE_DIR), never runs/.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin" if (ROOT / ".venv" / "bin" / "python").exists() else Path(sys.executable).parent
PYTHON = str(VENV_BIN / "python")
DEFAULT_OUT = ROOT / "bench" / "results.json"
FIGURES = ("overhead", "prep", "packing", "eval", "demo")
PACKAGES = ("recipe-runner", "axolotl", "lm_eval", "torch", "transformers", "datasets", "accelerate", "peft",
            "tokenizers", "numpy", "psutil")
DEMO_RECIPE = "smollm2-135m-sql-chatml"
GOALS = {  # figure: (comparison, threshold)
    "runner_overhead_ratio": ("<=", 1.03),
    "launch_latency_s": ("<", 1.5),
    "prep_ratio_vs_axolotl": ("<=", 1.0),
    "packing_efficiency": (">=", 0.98),
    "eval_batch_speedup": (">=", 3.0),
}
SIZES = {  # quick: toy sizes for the test; full: the real figures
    "quick": {"train_overrides": ["train.max_steps=1"], "order": "AB", "prep_rows": 200, "prep_order": "AB",
              "eval_items": 4, "eval_order": [1, 8], "packing_seeds": 1,
              "packing_rows": 300, "packing_standin": str(ROOT / "models" / "tiny-llama"), "eval_demo_items": 0,
              "overhead_warmup": False, "prep_tokenize": False},
    "full": {"train_overrides": [], "order": "ABBA", "prep_rows": 15_000, "prep_order": "ABBA",
             "eval_items": 16, "eval_order": [1, 8, 8, 1], "packing_seeds": 5,
             "packing_rows": 4000, "packing_standin": DEMO_RECIPE, "eval_demo_items": 32,
             "overhead_warmup": True, "prep_tokenize": True},
}


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- running and timing subprocesses


class Failed(RuntimeError):
    pass


def base_env(tmp: Path) -> dict:
    """The environment every measured command gets: offline, temp runs/cache, venv first on PATH, no telemetry."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", AXOLOTL_DO_NOT_TRACK="1", DO_NOT_TRACK="1",
               RECIPE_RUNS_DIR=str(tmp / "runs"), RECIPE_CACHE_DIR=str(tmp / "cache"))
    env.setdefault("WANDB_MODE", "disabled")
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    return env


def _tree_memory(proc) -> int:
    """Memory of a process and all its descendants, in bytes (0 when it is gone): the sum of their PSS
    (proportional set size: pages shared between forked workers are split, not counted twice), RSS where
    PSS cannot be read."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        members = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for member in members:
        try:
            try:
                total += member.memory_full_info().pss
            except (psutil.AccessDenied, AttributeError):
                total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def timed(name: str, argv: list[str], *, cwd: Path, env: dict, logs: Path, poll=None, rss: bool = False,
          timeout: float = 3600) -> dict:
    """Run argv to completion with its output in logs/<name>.log; wall seconds measured around Popen..wait.

    poll(started_epoch, started) is called every 10 ms until it returns a value (then polling stops); rss
    samples the process tree's memory (sum of PSS) every 0.2 s, and wraps the command in /usr/bin/time -f %M
    for the peak RSS of the largest single process. Also returns cpu_s: user + system seconds of the command
    and every descendant it waited for (getrusage), which other load on the machine disturbs less than wall
    time."""
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    time_file = logs / f"{name}.maxrss"
    command = list(argv)
    if rss and Path("/usr/bin/time").exists():
        command = ["/usr/bin/time", "-f", "%M", "-o", str(time_file), *command]
    polled, peak_tree = None, 0
    with log_path.open("w", encoding="utf-8") as log:
        log.write(f"$ (cd {cwd} && {shlex.join(argv)})\n")
        log.flush()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        started_epoch = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        next_rss = started
        while True:
            now = time.perf_counter()
            if now - started > timeout:
                proc.kill()
                proc.wait()
                raise Failed(f"{name}: timed out after {timeout:.0f} s; log: {log_path}")
            if poll is not None and polled is None:
                polled = poll(started_epoch, started)
            if rss and now >= next_rss:
                peak_tree = max(peak_tree, _tree_memory(proc))
                next_rss = now + 0.2
            if proc.poll() is not None:
                break
            if poll is not None and polled is None:
                time.sleep(0.01)
            elif rss:
                time.sleep(max(0.0, min(0.2, next_rss - time.perf_counter())))
            else:
                proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - started)))
        wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        tail = "\n  ".join(text.splitlines()[-25:])
        raise Failed(f"{name}: exit code {proc.returncode}; log {log_path}, last lines:\n  {tail}")
    result = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "log": str(log_path), "polled": polled,
              "text": text}
    if rss:
        result["peak_pss_tree_mb"] = round(peak_tree / 2**20, 1)
        if time_file.is_file():
            try:
                result["peak_rss_max_process_mb"] = round(int(time_file.read_text().split()[-1]) / 1024, 1)
            except (ValueError, IndexError):
                pass
    return result


def marker(text: str, tag: str) -> dict:
    """The JSON a worker printed on a line starting with tag."""
    for line in reversed(text.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    raise Failed(f"no {tag} line in the output")


def mean(values: list[float]) -> float:
    return round(statistics.fmean(values), 3)


def spread(values: list[float]) -> dict:
    return {"runs": [round(v, 3) for v in values], "mean": mean(values),
            "stdev": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0}


def ensure_tiny_model(env: dict, logs: Path) -> None:
    if not (ROOT / "models" / "tiny-llama" / "config.json").is_file():
        say("building models/tiny-llama (recipe tiny-model)")
        timed("tiny-model", [str(VENV_BIN / "recipe"), "tiny-model"], cwd=ROOT, env=env, logs=logs)


# ---------------------------------------------------------------- 1. runner overhead and launch latency


def _launch_poller(recipe_runs: Path, before: set[str]):
    """poll(started_epoch, started) -> latency record once a new run's manifest.json carries train_pid."""

    def poll(started_epoch: float, started: float):
        if not recipe_runs.is_dir():
            return None
        for entry in os.scandir(recipe_runs):
            if entry.name in before or entry.name == "latest" or not entry.is_dir():
                continue
            try:
                manifest = json.loads(Path(entry.path, "manifest.json").read_text())
            except (OSError, ValueError):
                continue
            if manifest.get("train_pid"):
                seen = time.perf_counter() - started
                record = {"manifest_s": round(seen, 3), "run": entry.name, "train_pid": manifest["train_pid"]}
                try:
                    import psutil

                    record["process_created_s"] = round(psutil.Process(manifest["train_pid"]).create_time()
                                                        - started_epoch, 3)
                except Exception:  # noqa: BLE001 - the trainer may already be gone; the manifest time stands
                    pass
                return record
        return None

    return poll


def _launch_exports(launch_sh: Path) -> dict:
    """KEY=VALUE pairs that launch.sh exports (the environment the runner's trainer really gets)."""
    exports = {}
    for line in launch_sh.read_text().splitlines():
        if line.startswith("export "):
            for token in shlex.split(line.split("#", 1)[0])[1:]:
                if "=" in token:
                    key, value = token.split("=", 1)
                    exports[key] = value
    return exports


def _copy_run(source: Path, target: Path) -> None:
    """The same emitted config and prepared data, without anything a training run produced."""
    skip = {"model", "logs", "prepared", "metrics.jsonl", "ranks", "eval", "manifest.json", "plots", "report.md"}
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.name in skip:
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name)
        else:
            shutil.copy2(item, target / item.name)


def bench_overhead(tmp: Path, size: dict, logs: Path) -> tuple[dict, dict]:
    env = base_env(tmp)
    overrides = size["train_overrides"]
    recipe_bin = str(VENV_BIN / "recipe")
    say("runner overhead: recipe prepare tiny-cpu (untimed)")
    timed("overhead-prepare", [recipe_bin, "prepare", "tiny-cpu", *overrides], cwd=ROOT, env=env, logs=logs)
    if size["overhead_warmup"]:
        # the first trainer start reads torch, transformers and axolotl from a cold page cache; without this
        # untimed one-step run, that cost lands on whichever of A and B runs first
        say("runner overhead: recipe train tiny-cpu train.max_steps=1 (untimed warm-up)")
        timed("overhead-warmup", [recipe_bin, "train", "tiny-cpu", "train.max_steps=1"], cwd=ROOT,
              env=env | {"HF_DATASETS_CACHE": str(tmp / "hf-datasets" / "warmup")}, logs=logs)
    recipe_runs = tmp / "runs" / "tiny-cpu"
    runner_runs, direct_runs, latencies, runner_timings, first_run = [], [], [], [], None
    runner_cpu, direct_cpu = [], []
    for index, which in enumerate(size["order"], start=1):
        # each run gets its own (empty) datasets cache, so no run reuses another's arrow files
        run_env = env | {"HF_DATASETS_CACHE": str(tmp / "hf-datasets" / f"overhead-{index}")}
        if which == "A":
            before = {p.name for p in recipe_runs.iterdir()} if recipe_runs.is_dir() else set()
            say(f"runner overhead {index}/{len(size['order'])}: A = recipe train tiny-cpu")
            result = timed(f"overhead-{index}-A-recipe-train", [recipe_bin, "train", "tiny-cpu", *overrides],
                           cwd=ROOT, env=run_env, logs=logs, poll=_launch_poller(recipe_runs, before))
            if not result["polled"]:
                raise Failed("recipe train finished but no manifest.json with train_pid was seen")
            run_dir = recipe_runs / result["polled"]["run"]
            manifest = json.loads((run_dir / "manifest.json").read_text())
            if manifest.get("status") != "trained":
                raise Failed(f"{run_dir}: status {manifest.get('status')}")
            runner_runs.append(result["wall_s"])
            runner_cpu.append(result["cpu_s"])
            latencies.append(result["polled"])
            runner_timings.append(manifest.get("timings", {}))
            first_run = first_run or run_dir
        else:
            if first_run is None:
                raise Failed("the order must start with A (B copies A's run directory)")
            copy = tmp / "direct" / f"run-{index}"
            _copy_run(first_run, copy)
            direct_env = run_env | _launch_exports(copy / "launch.sh")
            say(f"runner overhead {index}/{len(size['order'])}: B = axolotl train axolotl.yaml --launcher python")
            result = timed(f"overhead-{index}-B-axolotl-train",
                           [str(VENV_BIN / "axolotl"), "train", "axolotl.yaml", "--launcher", "python"],
                           cwd=copy, env=direct_env, logs=logs)
            if not any((copy / "model").glob("adapter_model.*")) and not (copy / "model" / "config.json").exists():
                raise Failed(f"{copy}: axolotl finished but wrote no model")
            direct_runs.append(result["wall_s"])
            direct_cpu.append(result["cpu_s"])
    manifest_latency = [r["manifest_s"] for r in latencies]
    process_latency = [r["process_created_s"] for r in latencies if "process_created_s" in r]
    runner_mean, direct_mean = mean(runner_runs), mean(direct_runs)
    # What the runner spends outside the trainer, by its own clock (manifest timings: prepare_s, train_s)
    inside = [t.get("train_s") for t in runner_timings if t.get("train_s")]
    figures = {"runner_overhead_ratio": round(runner_mean / direct_mean, 4),
               "launch_latency_s": round(statistics.fmean(manifest_latency), 3)}
    details = {"order": size["order"], "overrides": overrides, "runner_train_s": spread(runner_runs),
               "axolotl_train_s": spread(direct_runs), "runner_train_cpu_s": spread(runner_cpu),
               "axolotl_train_cpu_s": spread(direct_cpu),
               "runner_overhead_ratio_cpu": round(statistics.fmean(runner_cpu) / statistics.fmean(direct_cpu), 4),
               "launch_latency_manifest_s": manifest_latency,
               "launch_latency_process_created_s": process_latency,
               "runner_manifest_timings": runner_timings,
               "runner_outside_trainer_s": round(runner_mean - statistics.fmean(inside), 3) if inside else None,
               "run_dir_copied": str(first_run),
               "command_a": f"recipe train tiny-cpu {' '.join(overrides)}".strip(),
               "command_b": "axolotl train axolotl.yaml --launcher python  (in a copy of A's run dir, with "
                            "launch.sh's exports)"}
    return figures, details


# ---------------------------------------------------------------- 2. data preparation vs axolotl preprocess


def build_rows(n: int, out: Path) -> Path:
    """n unique alpaca-style rows resampled (random.Random(0)) from the alpaca and dolly samples."""
    samples = ROOT / "data" / "samples"
    read = lambda p: [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]  # noqa: E731
    pool = [{"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]}
            for r in read(samples / "alpaca-sample.jsonl")]
    pool += [{"instruction": r["instruction"], "input": r.get("context") or "", "output": r["response"]}
             for r in read(samples / "dolly15k-sample.jsonl")]
    rng = random.Random(0)
    with out.open("w", encoding="utf-8") as handle:
        for number in range(n):
            row = dict(rng.choice(pool))
            row["instruction"] = f"{row['instruction']} (row {number})"
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


RUNNER_RECIPE = """\
schema: 1
version: 1.0.0
name: {name}
extends: [{root}/recipes/_base/method/lora.yaml, {root}/recipes/_base/hardware/cpu.yaml]
description: bench - prepare {n} alpaca-style rows
model:
  base: {root}/models/tiny-llama
  context_length: 512
method:
  lora: {{r: 8, alpha: 16, dropout: 0.0, target: all-linear}}
data:
  datasets:
    - source: file:{rows}
      fields: {{instruction: instruction, input: input, output: output}}
  template: alpaca
  max_seq_len: 512
  packing: false
  overlength: truncate
  split: {{val: 0, test: 0, seed: 42}}
train:
  epochs: null
  max_steps: 1
  micro_batch_size: 4
  gradient_accumulation_steps: 1
"""

# The same entry points as the `recipe` and `axolotl` console scripts, plus two clock readings: after the
# imports the command needs, and after the command. End-to-end time is measured outside, around the process.
RUNNER_PREP_WORKER = """\
import time; t0 = time.time()
import json, sys
from runner import cli
t1 = time.time()
code = cli.main(["prepare", sys.argv[1]])
t2 = time.time()
print("BENCH_TIMES " + json.dumps({"imports_s": t1 - t0, "work_s": t2 - t1}), file=sys.stderr, flush=True)
sys.exit(code)
"""
AXOLOTL_PREP_WORKER = """\
import time; t0 = time.time()
import json, sys
from axolotl.cli.main import cli
import axolotl.cli.preprocess, axolotl.common.datasets, axolotl.utils.data
t1 = time.time()
cli.main(args=["preprocess", sys.argv[1]], standalone_mode=False)
t2 = time.time()
print("BENCH_TIMES " + json.dumps({"imports_s": t1 - t0, "work_s": t2 - t1}), file=sys.stderr, flush=True)
"""


def _axolotl_prep_config(dataset: dict, prepared: Path, output: Path, sequence_len: int) -> dict:
    return {"base_model": str(ROOT / "models" / "tiny-llama"), "datasets": [dataset],
            "dataset_prepared_path": str(prepared), "output_dir": str(output), "sequence_len": sequence_len,
            "excess_length_strategy": "truncate", "val_set_size": 0, "train_on_inputs": False,
            "sample_packing": False, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "num_epochs": 1,
            "learning_rate": 2.0e-3, "optimizer": "adamw_torch", "attn_implementation": "sdpa", "bf16": False,
            "fp16": False, "tf32": False}


def _dump_yaml(data: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=True), encoding="utf-8")
    return path


def _saved_rows(prepared_root: Path) -> int | None:
    """Rows in the dataset axolotl saved under dataset_prepared_path (arrow state.json / dataset_info)."""
    total = 0
    for state in prepared_root.rglob("state.json"):
        try:
            files = json.loads(state.read_text()).get("_data_files", [])
        except ValueError:
            continue
        import pyarrow as pa

        for item in files:
            with pa.memory_map(str(state.parent / item["filename"])) as source:
                total += pa.ipc.open_stream(source).read_all().num_rows
    return total or None


def bench_prep(tmp: Path, size: dict, logs: Path) -> tuple[dict, dict]:
    n = size["prep_rows"]
    work = tmp / "prep"
    work.mkdir(parents=True, exist_ok=True)
    rows = build_rows(n, work / "rows.jsonl")
    recipe = work / "bench-prep.yaml"
    recipe.write_text(RUNNER_RECIPE.format(name="bench-prep", root=ROOT, n=n, rows=rows), encoding="utf-8")
    alpaca = {"path": str(rows), "type": "alpaca", "ds_type": "json", "split": "train"}
    runner, axolotl, runner_counts, axolotl_rows = [], [], [], []
    order = size["prep_order"]
    for index, which in enumerate(order, start=1):
        fresh = work / f"run-{index}"
        fresh.mkdir()
        env = base_env(tmp) | {"RECIPE_CACHE_DIR": str(fresh / "cache"), "HF_DATASETS_CACHE": str(fresh / "hf")}
        if which == "A":
            say(f"prep {index}/{len(order)}: A = runner prepare, {n} rows")
            result = timed(f"prep-{index}-A-runner", [PYTHON, "-c", RUNNER_PREP_WORKER, str(recipe)], cwd=ROOT,
                           env=env, logs=logs, rss=True)
            info = json.loads(next((fresh / "cache" / "data").glob("*/data.json")).read_text())
            runner_counts.append(info["counts"])
            runner.append(result | marker(result["text"], "BENCH_TIMES"))
        else:
            config = _dump_yaml(_axolotl_prep_config(alpaca, fresh / "prepared", fresh / "out", 512),
                                fresh / "cfg.yml")
            say(f"prep {index}/{len(order)}: B = axolotl preprocess (type: alpaca), {n} rows")
            result = timed(f"prep-{index}-B-axolotl", [PYTHON, "-c", AXOLOTL_PREP_WORKER, str(config)], cwd=fresh,
                           env=env, logs=logs, rss=True)
            axolotl_rows.append(_saved_rows(fresh / "prepared"))
            axolotl.append(result | marker(result["text"], "BENCH_TIMES"))
    # What `recipe train` still does at start with the runner's output: axolotl tokenizes the prepared
    # input_output rows (measured once, full runs only, pointed at a fresh prepared path).
    tokenized = None
    if size["prep_tokenize"]:
        say("prep: axolotl preprocess of the runner's prepared rows (type: input_output), once")
        prepared_dir = next((work / f"run-{order.index('A') + 1}" / "cache" / "data").glob("*/data.json")).parent
        folder = work / "tokenize-runner-output"
        folder.mkdir()
        io_config = _dump_yaml(_axolotl_prep_config({"path": str(prepared_dir / "train.jsonl"),
                                                     "type": "input_output", "ds_type": "json", "split": "train"},
                                                    folder / "prepared", folder / "out", 512), folder / "cfg.yml")
        io_result = timed("prep-runner-output-axolotl-tokenize", [PYTHON, "-c", AXOLOTL_PREP_WORKER, str(io_config)],
                          cwd=folder, env=base_env(tmp) | {"HF_DATASETS_CACHE": str(folder / "hf")}, logs=logs,
                          rss=True)
        tokenized = {"wall_s": io_result["wall_s"],
                     **{k: round(v, 3) for k, v in marker(io_result["text"], "BENCH_TIMES").items()}}

    def summary(results: list[dict]) -> dict:
        return {"wall_s": spread([r["wall_s"] for r in results]), "cpu_s": spread([r["cpu_s"] for r in results]),
                "imports_s": spread([r["imports_s"] for r in results]),
                "work_s": spread([r["work_s"] for r in results]),
                "peak_pss_tree_mb": max(r.get("peak_pss_tree_mb", 0) for r in results),
                "peak_rss_max_process_mb": max(r.get("peak_rss_max_process_mb", 0) for r in results)}

    r, a = summary(runner), summary(axolotl)
    train_rows = runner_counts[0]["train"]
    figures = {"prep_ratio_vs_axolotl": round(r["wall_s"]["mean"] / a["wall_s"]["mean"], 4),
               "prep_work_ratio_vs_axolotl": round(r["work_s"]["mean"] / a["work_s"]["mean"], 4),
               "prep_cpu_ratio_vs_axolotl": round(r["cpu_s"]["mean"] / a["cpu_s"]["mean"], 4),
               "prep_rows_per_s": round(train_rows / r["wall_s"]["mean"], 1),
               "prep_runner_peak_mem_mb": r["peak_pss_tree_mb"],
               "prep_axolotl_peak_mem_mb": a["peak_pss_tree_mb"]}
    details = {"rows": n, "order": order, "runner": r, "axolotl": a, "runner_counts": runner_counts[0],
               "axolotl_saved_rows": axolotl_rows[0] if axolotl_rows else None,
               "runner_work_rows_per_s": round(train_rows / r["work_s"]["mean"], 1),
               "axolotl_dataset_num_proc": _axolotl_num_proc(axolotl[0]["text"]) if axolotl else None,
               "runner_output_tokenized_by_axolotl": tokenized,
               # `recipe train` then has axolotl tokenize the runner's rows inside the trainer process, which
               # imports axolotl to train anyway: the work, not the imports, is what that step adds
               "prep_ratio_incl_axolotl_tokenize": round((r["wall_s"]["mean"] + tokenized["work_s"])
                                                         / a["wall_s"]["mean"], 4) if tokenized else None,
               "prep_ratio_incl_axolotl_tokenize_and_imports": round((r["wall_s"]["mean"] + tokenized["wall_s"])
                                                                     / a["wall_s"]["mean"], 4) if tokenized else None,
               "runner_command": "recipe prepare bench-prep.yaml (runner.cli.main(['prepare', ...]) in python -c)",
               "axolotl_command": "axolotl preprocess cfg.yml (axolotl.cli.main.cli(['preprocess', ...]) in "
                                  "python -c)",
               "rows_file": "data/samples alpaca (300) + dolly (12, context->input, response->output), resampled "
                            "with random.Random(0), instruction suffixed ' (row N)'"}
    return figures, details


def _axolotl_num_proc(text: str) -> int | None:
    import re

    found = re.findall(r"num_proc[=: ]+(\d+)", text)
    return int(found[-1]) if found else None


# ---------------------------------------------------------------- 3. packing efficiency (worker runs in a subprocess)


# The shipped recipes name hub datasets and models, which these machines cannot reach: each recipe's dataset
# is replaced by the public sample of that same dataset in data/samples (resampled to `rows`), and its tokenizer
# by a local stand-in; template, max_seq_len, micro_batch_size and hardware (so the batch layout) are the
# recipe's own.
PACKING_SAMPLES = {  # hub dataset in a shipped recipe -> (its sample in data/samples, the sample's field mapping)
    "hf:b-mc2/sql-create-context": ("sql-create-context-sample.jsonl",
                                    {"instruction": "question", "input": "context", "output": "answer"}),
    "hf:databricks/databricks-dolly-15k": ("dolly15k-sample.jsonl",
                                           {"instruction": "instruction", "input": "context", "output": "response"}),
    "hf:ruslanmv/ai-medical-chatbot": ("medical-chat-sample.jsonl",
                                       {"instruction": "instruction", "input": "input", "output": "output"}),
}
PACKING_RECIPE = """\
schema: 1
version: 1.0.0
name: bench-packing-{name}
extends: {parent}
model: {{base: {standin}}}
data:
  datasets:
    - source: file:{rows}
      fields: {fields}
  packing: true
  dedupe: false
  split: {{val: 0, test: 0, seed: 42}}
"""


def _packing_recipes() -> list[str]:
    from runner.recipe import loading

    names = []
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        recipe = loading.load(path.stem).recipe
        if recipe.data.packing and all(d.source in PACKING_SAMPLES for d in recipe.data.datasets):
            names.append(path.stem)
    return names


def _resampled(sample: str, n: int, out: Path) -> Path:
    rows = [x for x in (ROOT / "data" / "samples" / sample).read_text(encoding="utf-8").splitlines() if x.strip()]
    rng = random.Random(0)
    out.write_text("".join(rng.choice(rows) + "\n" for _ in range(n)), encoding="utf-8")
    return out


def worker_packing(seeds: int, rows_per_recipe: int, standin: str, work: str) -> dict:
    import math as _math

    import numpy as np
    import torch
    from axolotl.prompt_strategies.input_output import load as input_output_strategy
    from axolotl.utils.collators import DataCollatorForSeq2Seq, V2BatchSamplerDataCollatorForSeq2Seq
    from axolotl.utils.dict import DictDefault
    from axolotl.utils.samplers import MultipackBatchSampler
    from axolotl.utils.schemas.enums import ATTN_IMPLS_SUPPORTING_PACKING
    from torch.utils.data import BatchSampler, RandomSampler

    from runner.recipe import loading
    from runner.models import resolve
    from runner.train import engine
    from runner.data import prepare

    def measure(loaded) -> dict:
        recipe = loaded.recipe
        prepared = prepare.prepare(loaded, quiet=True)
        rows = [json.loads(x) for x in prepared.split("train").read_text().splitlines() if x.strip()]
        tokenizer = resolve.load_tokenizer(resolve.resolve_base(recipe.model))
        if tokenizer.pad_token is None:  # only the pad id differs; padding is counted by attention_mask
            tokenizer.pad_token = tokenizer.eos_token
        seq_len, micro = recipe.data.max_seq_len, recipe.train.micro_batch_size
        # axolotl's own tokenization of the runner's rows (what training sees); position_ids as packing adds them
        strategy = input_output_strategy(tokenizer, DictDefault({"train_on_inputs": False, "sequence_len": seq_len}))
        features = []
        for row in rows:
            tokenized = strategy.tokenize_prompt(row)
            tokenized["position_ids"] = list(range(len(tokenized["input_ids"])))
            features.append(tokenized)
        lengths = np.array([len(f["input_ids"]) for f in features])
        attention = engine.ATTENTION[recipe.hardware.attention]
        varlen = attention in ATTN_IMPLS_SUPPORTING_PACKING
        # causal builder: pad_to_sequence_len true (the runner sets it = packing) -> multiple of 64*ceil(seq/64)
        multiple = 64 * _math.ceil(seq_len / 64)

        def packed(batch_size: int, batch_max_len: int) -> dict:
            effs, sampler_effs, dropped = [], [], []
            collator = V2BatchSamplerDataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=multiple,
                                                            return_tensors="pt")
            for seed in range(seeds):
                generator = torch.Generator().manual_seed(recipe.train.seed + seed)
                sampler = MultipackBatchSampler(RandomSampler(features, generator=generator), batch_size=batch_size,
                                                batch_max_len=batch_max_len, lengths=lengths, bin_size=200,
                                                group_size=100_000, drop_last=True, num_processes=1)
                real = slots = n_rows = 0
                for batch in sampler:
                    out = collator([[features[i] for i in b] for b in batch])
                    real += int((out["attention_mask"] > 0).sum())
                    slots += int(out["input_ids"].numel())
                    n_rows += sum(len(b) for b in batch)
                effs.append(real / slots)
                sampler_effs.append(sampler.efficiency())
                dropped.append(len(features) - n_rows)
            return {"batch_size": batch_size, "batch_max_len": batch_max_len, "pad_to_multiple_of": multiple,
                    "efficiency": round(statistics.fmean(effs), 4), "efficiency_min": round(min(effs), 4),
                    "sampler_efficiency": round(statistics.fmean(sampler_effs), 4),
                    "rows_dropped_by_drop_last": dropped}

        def unpacked() -> dict:
            effs = []
            collator = DataCollatorForSeq2Seq(tokenizer, padding=True, return_tensors="pt")
            plain = [{k: v for k, v in f.items() if k != "position_ids"} for f in features]
            for seed in range(seeds):
                generator = torch.Generator().manual_seed(recipe.train.seed + seed)
                real = slots = 0
                for batch in BatchSampler(RandomSampler(plain, generator=generator), micro, drop_last=False):
                    out = collator([plain[i] for i in batch])
                    real += int((out["attention_mask"] > 0).sum())
                    slots += int(out["input_ids"].numel())
                effs.append(real / slots)
            return {"batch_size": micro, "efficiency": round(statistics.fmean(effs), 4),
                    "efficiency_min": round(min(effs), 4)}

        # as axolotl builds batches: attention with varlen support -> one row of micro_batch_size * sequence_len
        # per step; without it (sdpa, eager) -> multipack_real_batches: micro_batch_size rows of sequence_len
        layout = "varlen: 1 row of micro_batch_size x sequence_len" if varlen else \
            "multipack_real_batches: micro_batch_size rows of sequence_len"
        return {"rows": len(features), "sequence_len": seq_len, "micro_batch_size": micro,
                "attn_implementation": attention, "layout": layout,
                "tokens_per_row": {"mean": round(float(lengths.mean()), 1), "max": int(lengths.max())},
                "packed": packed(1, micro * seq_len) if varlen else packed(micro, seq_len),
                "unpacked_pad_longest": unpacked()}

    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    standin_dir = resolve.resolve_base(loading.load(standin).recipe.model) if not Path(standin).exists() \
        else Path(standin)
    results = {"standin_tokenizer": str(standin), "seeds": seeds, "rows_per_recipe": rows_per_recipe,
               "recipes": {}}
    # the CPU layout, on the recipe the tests train (tiny-cpu, sdpa): its own alpaca sample
    results["cpu"] = {"recipe": "tiny-cpu", **measure(loading.load("tiny-cpu", ["data.packing=true",
                                                                                   "data.split.val=0",
                                                                                   "data.split.test=0"]))}
    for name in _packing_recipes():
        recipe = loading.load(name).recipe
        sample, fields = PACKING_SAMPLES[recipe.data.datasets[0].source]
        rows = _resampled(sample, rows_per_recipe, work_dir / f"{name}.jsonl")
        child = work_dir / f"bench-packing-{name}.yaml"
        child.write_text(PACKING_RECIPE.format(name=name, parent=ROOT / "recipes" / f"{name}.yaml", rows=rows,
                                               standin=standin_dir, fields=json.dumps(fields)), encoding="utf-8")
        results["recipes"][name] = {"sample": sample, **measure(loading.load(str(child)))}
    return results


def bench_packing(tmp: Path, size: dict, logs: Path) -> tuple[dict, dict]:
    say("packing: axolotl MultipackBatchSampler + collators over the shipped packing recipes and tiny-cpu")
    result = timed("packing", [PYTHON, str(Path(__file__).resolve()), "--worker", "packing",
                               "--seeds", str(size["packing_seeds"]), "--rows", str(size["packing_rows"]),
                               "--standin", size["packing_standin"], "--work", str(tmp / "packing")],
                   cwd=ROOT, env=base_env(tmp), logs=logs)
    details = marker(result["text"], "BENCH_PACKING")
    if not details["recipes"]:
        raise Failed("no shipped recipe turns packing on with a dataset that has a sample in data/samples")
    worst = min(details["recipes"], key=lambda name: details["recipes"][name]["packed"]["efficiency"])
    figures = {"packing_efficiency": details["recipes"][worst]["packed"]["efficiency"],
               "packing_efficiency_off": details["recipes"][worst]["unpacked_pad_longest"]["efficiency"],
               "packing_efficiency_cpu_sdpa": details["cpu"]["packed"]["efficiency"]}
    details["headline_recipe"] = worst
    return figures, details


# ---------------------------------------------------------------- 4. eval batch speedup (worker in a subprocess)


def worker_eval(run_path: str, recipe_name: str, order: list[int], max_items: int) -> dict:
    import lm_eval.models.huggingface as hf

    from runner.evaluate import evaluation
    from runner.recipe import loading
    from runner.runs import rundir

    clock = {"s": 0.0, "cpu": 0.0, "items": 0, "outputs": []}
    original = hf.HFLM.generate_until

    def generate_until(self, requests, disable_tqdm: bool = False):
        started, cpu = time.perf_counter(), time.process_time()
        out = original(self, requests, disable_tqdm)
        clock["s"] += time.perf_counter() - started
        clock["cpu"] += time.process_time() - cpu
        clock["items"] += len(requests)
        clock["outputs"] += list(out)
        return out

    hf.HFLM.generate_until = generate_until
    run = rundir.RunDir(Path(run_path))
    passes = []
    # an untimed warm-up pass first (batch size 1, 2 items): first-call costs (lazy imports, kernel set-up)
    # would otherwise land on whichever batch size runs first
    for number, batch_size in enumerate([0, *order]):
        warmup = number == 0
        loaded = loading.load(recipe_name, [f"eval.batch_size={batch_size or 1}",
                                           f"eval.max_items={2 if warmup else max_items}", "eval.compare_base=false"])
        clock.update(s=0.0, cpu=0.0, items=0, outputs=[])
        started = time.perf_counter()
        evaluation.evaluate(run, loaded.recipe)
        total = time.perf_counter() - started
        tokenizer = None
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(run.manifest()["base_model_dir"])
        except Exception:  # noqa: BLE001 - token counts are a side figure
            pass
        new_tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in clock["outputs"]) \
            if tokenizer else None
        record = {"batch_size": batch_size or 1, "generate_s": round(clock["s"], 4),
                  "generate_cpu_s": round(clock["cpu"], 4), "items": clock["items"], "new_tokens": new_tokens,
                  "evaluate_total_s": round(total, 3)}
        if warmup:
            warm = record
        else:
            passes.append(record)
    return {"passes": passes, "warmup_pass": warm, "max_items": max_items, "run": run_path, "recipe": recipe_name}


def _measure_eval(tmp: Path, logs: Path, run: Path, recipe_name: str, order: list[int], items: int) -> dict:
    """Generation seconds per batch size over the same held-out items (one subprocess, passes alternated)."""
    say(f"eval: {recipe_name}: lm-eval generation at batch sizes {order} on the same {items} items")
    result = timed(f"eval-{recipe_name}", [PYTHON, str(Path(__file__).resolve()), "--worker", "eval", "--run",
                                           str(run), "--recipe", recipe_name, "--order", ",".join(map(str, order)),
                                           "--max-items", str(items)], cwd=ROOT, env=base_env(tmp), logs=logs)
    details = marker(result["text"], "BENCH_EVAL")
    by_size: dict[int, list[dict]] = {}
    for p in details["passes"]:
        by_size.setdefault(p["batch_size"], []).append(p)
    if not all(by_size[b][0]["items"] for b in by_size) or len({by_size[b][0]["items"] for b in by_size}) != 1:
        raise Failed(f"batch sizes generated different item counts: {details['passes']}")
    batched = max(by_size)
    per = {b: {"generate_s": spread([p["generate_s"] for p in ps]),
               "generate_cpu_s": spread([p["generate_cpu_s"] for p in ps]),
               "items_per_s": round(by_size[1][0]["items"] / statistics.fmean(p["generate_s"] for p in ps), 3),
               "new_tokens": [p["new_tokens"] for p in ps]} for b, ps in sorted(by_size.items())}
    tokens = {b: statistics.fmean(p["new_tokens"] for p in by_size[b]) if by_size[b][0]["new_tokens"] else None
              for b in by_size}
    details |= {"items": by_size[1][0]["items"], "batched_size": batched,
                "by_batch_size": {str(b): v for b, v in per.items()},
                "speedup": round(per[1]["generate_s"]["mean"] / per[batched]["generate_s"]["mean"], 3),
                "speedup_cpu": round(per[1]["generate_cpu_s"]["mean"] / per[batched]["generate_cpu_s"]["mean"], 3),
                "token_throughput_speedup": round((tokens[batched] / per[batched]["generate_s"]["mean"])
                                                  / (tokens[1] / per[1]["generate_s"]["mean"]), 3)
                if tokens[1] and tokens[batched] else None}
    return details


def _demo_run_copy(tmp: Path) -> Path | None:
    """A copy of the newest trained demo run (its adapter included), so evaluating it writes nothing under runs/."""
    latest = ROOT / "runs" / DEMO_RECIPE / "latest"
    if not (latest / "model").is_dir():
        return None
    target = tmp / "demo-run"
    shutil.copytree(latest.resolve(), target, symlinks=True, ignore=shutil.ignore_patterns("eval", "plots",
                                                                                           "report.md"))
    return target


def bench_eval(tmp: Path, size: dict, logs: Path, trained: Path | None) -> tuple[dict, dict]:
    if trained is None:
        say("eval: training a tiny-cpu run to evaluate")
        timed("eval-train", [str(VENV_BIN / "recipe"), "train", "tiny-cpu", *size["train_overrides"]], cwd=ROOT,
              env=base_env(tmp), logs=logs)
        trained = (tmp / "runs" / "tiny-cpu" / "latest").resolve()
    details = {"tiny-cpu": _measure_eval(tmp, logs, trained, "tiny-cpu", size["eval_order"], size["eval_items"])}
    # the headline is the demo model's (a real pretrained model); quick runs, which train nothing big, use tiny's
    figures = {"eval_batch_speedup_tiny": details["tiny-cpu"]["speedup"],
               "eval_batch_speedup": details["tiny-cpu"]["speedup"]}
    details["headline_recipe"] = "tiny-cpu"
    if size["eval_demo_items"]:
        demo = _demo_run_copy(tmp)
        if demo is None:
            raise Failed(f"no trained runs/{DEMO_RECIPE}/latest to evaluate: run `make demo` first")
        from runner.recipe import loading

        batched = loading.load(DEMO_RECIPE).recipe.eval.batch_size  # what the demo evaluates with
        details[DEMO_RECIPE] = _measure_eval(tmp, logs, demo, DEMO_RECIPE, [1, batched, batched, 1],
                                             size["eval_demo_items"])
        figures["eval_batch_speedup"] = details[DEMO_RECIPE]["speedup"]
        details["headline_recipe"] = DEMO_RECIPE
    return figures, details


# ---------------------------------------------------------------- 5. demo stage timings


def bench_demo() -> tuple[dict, dict]:
    runs = ROOT / "runs" / DEMO_RECIPE
    found, missing, details = {}, [], {}
    manifests = sorted(p for p in runs.glob("*/manifest.json") if p.parent.name != "latest") if runs.is_dir() else []
    if manifests:
        newest = manifests[-1]
        manifest = json.loads(newest.read_text())
        timings = manifest.get("timings") or {}
        details |= {"run": str(newest.parent.relative_to(ROOT)), "status": manifest.get("status")}
        for key in ("prepare_s", "train_s", "eval_s"):
            if isinstance(timings.get(key), (int, float)):
                found[key] = timings[key]
            else:
                missing.append(f"{key} (not in {newest.parent.name}/manifest.json; status "
                               f"{manifest.get('status')})")
        found |= {k: v for k, v in timings.items() if k not in found and isinstance(v, (int, float))}
    else:
        missing += [f"prepare_s, train_s, eval_s (no runs/{DEMO_RECIPE}/*/manifest.json)"]
    stamps = {}
    for name in ("start", "trained", "end"):
        path = Path(f"/tmp/demo.{name}")
        try:
            stamps[name] = float(path.read_text().split()[0])
            found[f"demo_{name}_unix"] = stamps[name]
        except (OSError, ValueError, IndexError):
            missing.append(f"/tmp/demo.{name}")
    if "start" in stamps and "trained" in stamps:
        found["start_to_trained_s"] = round(stamps["trained"] - stamps["start"], 2)
    if "trained" in stamps and "end" in stamps:
        found["trained_to_end_s"] = round(stamps["end"] - stamps["trained"], 2)
    if "start" in stamps and "end" in stamps:
        found["start_to_end_s"] = round(stamps["end"] - stamps["start"], 2)
    details["missing"] = missing
    return {"demo_stage_seconds": found}, details


# ---------------------------------------------------------------- machine, goals, table


def _busy_cpu_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores; idle and iowait excluded)."""
    import psutil

    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + own.ru_utime + own.ru_stime


def machine() -> dict:
    import psutil

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except OSError:
        commit = None
    return {"cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "packages": versions,
            "git_commit": commit, "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


def judge(figures: dict) -> dict:
    goals = {}
    for key, (op, threshold) in GOALS.items():
        value = figures.get(key)
        met = None if not isinstance(value, (int, float)) else {
            "<=": value <= threshold, "<": value < threshold, ">=": value >= threshold}[op]
        goals[key] = {"goal": f"{op} {threshold}", "value": value, "met": met}
    return goals


def table(results: dict) -> str:
    rows = [("figure", "value", "goal", "met")]
    for key, value in sorted(results["figures"].items()):
        if isinstance(value, dict):
            continue
        goal = results["goals"].get(key, {})
        met = goal.get("met")
        rows.append((key, f"{value}", goal.get("goal", ""), "" if met is None else ("yes" if met else "NO")))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip() for r in rows]
    demo = results["figures"].get("demo_stage_seconds")
    if demo is not None:
        lines.append("demo_stage_seconds: " + (", ".join(f"{k}={v}" for k, v in demo.items()) or "(none)"))
        missing = results["details"].get("demo", {}).get("missing")
        if missing:
            lines.append("  missing: " + "; ".join(missing))
    for name, error in results.get("errors", {}).items():
        lines.append(f"ERROR {name}: {error.splitlines()[0]}")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes (for the test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (default bench/results.json)")
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, runs)")
    parser.add_argument("--worker", choices=("packing", "eval"), help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=4000, help=argparse.SUPPRESS)
    parser.add_argument("--standin", default=DEMO_RECIPE, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", default="tiny-cpu", help=argparse.SUPPRESS)
    parser.add_argument("--order", default="1,8,8,1", help=argparse.SUPPRESS)
    parser.add_argument("--max-items", type=int, default=16, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker == "packing":
        print("BENCH_PACKING " + json.dumps(worker_packing(args.seeds, args.rows, args.standin, args.work)), file=sys.stderr, flush=True)
        return 0
    if args.worker == "eval":
        result = worker_eval(args.run, args.recipe, [int(x) for x in args.order.split(",")], args.max_items)
        print("BENCH_EVAL " + json.dumps(result), file=sys.stderr, flush=True)
        return 0

    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - set(FIGURES)
    if unknown:
        print(f"unknown figure(s) {sorted(unknown)}; choose from {FIGURES}", file=sys.stderr)
        return 2
    size = SIZES["quick" if args.quick else "full"]
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="recipe-bench-"))
    logs = tmp / "logs"
    say(f"{'quick' if args.quick else 'full'} run; temporary folder {tmp}")
    results = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
               "machine": machine(), "figures": {}, "details": {}, "errors": {}, "figures_run": only}
    trained = None
    try:
        if {"overhead", "prep", "packing", "eval"} & set(only):
            ensure_tiny_model(base_env(tmp), logs)
        for name in only:
            phase = time.perf_counter()
            load_at_start = round(os.getloadavg()[0], 2)
            busy_at_start, ours_at_start = _busy_cpu_s(), _children_cpu_s()
            try:
                if name == "overhead":
                    figures, details = bench_overhead(tmp, size, logs)
                    trained = Path(details["run_dir_copied"])
                elif name == "prep":
                    figures, details = bench_prep(tmp, size, logs)
                elif name == "packing":
                    figures, details = bench_packing(tmp, size, logs)
                elif name == "eval":
                    figures, details = bench_eval(tmp, size, logs, trained)
                else:
                    figures, details = bench_demo()
            except Failed as err:
                results["errors"][name] = str(err)
                say(f"{name} failed: {err}")
                continue
            details["phase_s"] = round(time.perf_counter() - phase, 1)
            details["load_avg_1min_at_start"] = load_at_start
            # CPU the rest of the machine used meanwhile (all busy CPU time minus this benchmark's), in cores
            others = (_busy_cpu_s() - busy_at_start) - (_children_cpu_s() - ours_at_start)
            details["other_processes_cores"] = round(max(0.0, others) / max(1e-9, time.perf_counter() - phase), 2)
            results["figures"] |= figures
            results["details"][name] = details
    finally:
        results["duration_s"] = round(time.perf_counter() - started, 1)
        results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results["goals"] = judge(results["figures"])
        if not results["errors"]:
            del results["errors"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if args.keep or results.get("errors"):
            say(f"kept {tmp} (logs in {logs})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(table(results))
    print(f"wrote {args.out} in {results['duration_s']:.0f} s")
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
