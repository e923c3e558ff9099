"""Figure 2: prep_ratio_vs_axolotl. The runner preparing N alpaca-style rows / `axolotl preprocess` on the same rows
(type: alpaca), both end to end as subprocesses, alternated A,B,B,A; plus memory, rates and the work-only ratio."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from bench.common import PYTHON, ROOT, Context, marker, read_json, say, spread, timed

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


def build_rows(n: int, out: Path) -> Path:
    """n unique alpaca-style rows resampled (random.Random(0)) from the alpaca and dolly samples."""
    samples = ROOT / "data" / "samples"

    def read(path: Path) -> list[dict]:
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]

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


def axolotl_prep_config(dataset: dict, prepared: Path, output: Path, sequence_len: int) -> dict:
    return {"base_model": str(ROOT / "models" / "tiny-llama"), "datasets": [dataset],
            "dataset_prepared_path": str(prepared), "output_dir": str(output), "sequence_len": sequence_len,
            "excess_length_strategy": "truncate", "val_set_size": 0, "train_on_inputs": False,
            "sample_packing": False, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "num_epochs": 1,
            "learning_rate": 2.0e-3, "optimizer": "adamw_torch", "attn_implementation": "sdpa", "bf16": False,
            "fp16": False, "tf32": False}


def dump_yaml(data: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=True), encoding="utf-8")
    return path


def saved_rows(prepared_root: Path) -> int | None:
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


def axolotl_num_proc(text: str) -> int | None:
    found = re.findall(r"num_proc[=: ]+(\d+)", text)
    return int(found[-1]) if found else None


def _run_runner(ctx: Context, label: str, recipe: Path, fresh: Path, env: dict) -> tuple[dict, dict]:
    """A: `recipe prepare` with a fresh cache. -> (timed result + BENCH_TIMES, the counts it wrote)"""
    say(f"prep {label}: A = runner prepare, {ctx.size['prep_rows']} rows")
    result = timed(f"prep-{label.split('/')[0]}-A-runner", [PYTHON, "-c", RUNNER_PREP_WORKER, str(recipe)],
                   cwd=ROOT, env=env, logs=ctx.logs, rss=True)
    info = read_json(next((fresh / "cache" / "data").glob("*/data.json")))
    return result | marker(result["text"], "BENCH_TIMES"), info["counts"]


def _run_axolotl(ctx: Context, label: str, rows: Path, fresh: Path, env: dict) -> tuple[dict, int | None]:
    """B: `axolotl preprocess` (type: alpaca) into a fresh prepared path. -> (timed result, rows it saved)"""
    alpaca = {"path": str(rows), "type": "alpaca", "ds_type": "json", "split": "train"}
    config = dump_yaml(axolotl_prep_config(alpaca, fresh / "prepared", fresh / "out", 512), fresh / "cfg.yml")
    say(f"prep {label}: B = axolotl preprocess (type: alpaca), {ctx.size['prep_rows']} rows")
    result = timed(f"prep-{label.split('/')[0]}-B-axolotl", [PYTHON, "-c", AXOLOTL_PREP_WORKER, str(config)],
                   cwd=fresh, env=env, logs=ctx.logs, rss=True)
    return result | marker(result["text"], "BENCH_TIMES"), saved_rows(fresh / "prepared")


def _tokenize_runner_output(ctx: Context, work: Path, first_a: int) -> dict:
    """What `recipe train` still does at start with the runner's output: axolotl tokenizes the prepared
    input_output rows (measured once, pointed at a fresh prepared path)."""
    say("prep: axolotl preprocess of the runner's prepared rows (type: input_output), once")
    prepared_dir = next((work / f"run-{first_a}" / "cache" / "data").glob("*/data.json")).parent
    folder = work / "tokenize-runner-output"
    folder.mkdir()
    dataset = {"path": str(prepared_dir / "train.jsonl"), "type": "input_output", "ds_type": "json",
               "split": "train"}
    config = dump_yaml(axolotl_prep_config(dataset, folder / "prepared", folder / "out", 512), folder / "cfg.yml")
    result = timed("prep-runner-output-axolotl-tokenize", [PYTHON, "-c", AXOLOTL_PREP_WORKER, str(config)],
                   cwd=folder, env=ctx.env(HF_DATASETS_CACHE=str(folder / "hf")), logs=ctx.logs, rss=True)
    return {"wall_s": result["wall_s"], **{k: round(v, 3) for k, v in marker(result["text"], "BENCH_TIMES").items()}}


def _summary(results: list[dict]) -> dict:
    return {"wall_s": spread([r["wall_s"] for r in results]), "cpu_s": spread([r["cpu_s"] for r in results]),
            "imports_s": spread([r["imports_s"] for r in results]),
            "work_s": spread([r["work_s"] for r in results]),
            "peak_pss_tree_mb": max(r.get("peak_pss_tree_mb", 0) for r in results),
            "peak_rss_max_process_mb": max(r.get("peak_rss_max_process_mb", 0) for r in results)}


def bench(ctx: Context) -> tuple[dict, dict]:
    n, order = ctx.size["prep_rows"], ctx.size["prep_order"]
    work = ctx.tmp / "prep"
    work.mkdir(parents=True, exist_ok=True)
    rows = build_rows(n, work / "rows.jsonl")
    recipe = work / "bench-prep.yaml"
    recipe.write_text(RUNNER_RECIPE.format(name="bench-prep", root=ROOT, n=n, rows=rows), encoding="utf-8")
    runner, axolotl, runner_counts, axolotl_rows = [], [], [], []
    for index, which in enumerate(order, start=1):
        fresh = work / f"run-{index}"
        fresh.mkdir()
        env = ctx.env(RECIPE_CACHE_DIR=str(fresh / "cache"), HF_DATASETS_CACHE=str(fresh / "hf"))
        label = f"{index}/{len(order)}"
        if which == "A":
            result, counts = _run_runner(ctx, label, recipe, fresh, env)
            runner.append(result)
            runner_counts.append(counts)
        else:
            result, saved = _run_axolotl(ctx, label, rows, fresh, env)
            axolotl.append(result)
            axolotl_rows.append(saved)
    tokenized = _tokenize_runner_output(ctx, work, order.index("A") + 1) if ctx.size["prep_tokenize"] else None
    return _figures(n, order, _summary(runner), _summary(axolotl), runner_counts[0],
                    axolotl_rows[0] if axolotl_rows else None, axolotl[0]["text"], tokenized)


def _figures(n: int, order: str, r: dict, a: dict, counts: dict, axolotl_saved: int | None, axolotl_log: str,
             tokenized: dict | None) -> tuple[dict, dict]:
    train_rows = counts["train"]
    figures = {"prep_ratio_vs_axolotl": round(r["wall_s"]["mean"] / a["wall_s"]["mean"], 4),
               "prep_work_ratio_vs_axolotl": round(r["work_s"]["mean"] / a["work_s"]["mean"], 4),
               "prep_cpu_ratio_vs_axolotl": round(r["cpu_s"]["mean"] / a["cpu_s"]["mean"], 4),
               "prep_rows_per_s": round(train_rows / r["wall_s"]["mean"], 1),
               "prep_runner_peak_mem_mb": r["peak_pss_tree_mb"],
               "prep_axolotl_peak_mem_mb": a["peak_pss_tree_mb"]}

    def with_tokenize(key: str) -> float | None:
        return round((r["wall_s"]["mean"] + tokenized[key]) / a["wall_s"]["mean"], 4) if tokenized else None

    details = {"rows": n, "order": order, "runner": r, "axolotl": a, "runner_counts": counts,
               "axolotl_saved_rows": axolotl_saved,
               "runner_work_rows_per_s": round(train_rows / r["work_s"]["mean"], 1),
               "axolotl_dataset_num_proc": axolotl_num_proc(axolotl_log),
               "runner_output_tokenized_by_axolotl": tokenized,
               # `recipe train` then has axolotl tokenize the runner's rows inside the trainer process, which
               # imports axolotl to train anyway: the work, not the imports, is what that step adds
               "prep_ratio_incl_axolotl_tokenize": with_tokenize("work_s"),
               "prep_ratio_incl_axolotl_tokenize_and_imports": with_tokenize("wall_s"),
               "runner_command": "recipe prepare bench-prep.yaml (runner.cli.main(['prepare', ...]) in python -c)",
               "axolotl_command": "axolotl preprocess cfg.yml (axolotl.cli.main.cli(['preprocess', ...]) in "
                                  "python -c)",
               "rows_file": "data/samples alpaca (300) + dolly (12, context->input, response->output), resampled "
                            "with random.Random(0), instruction suffixed ' (row N)'"}
    return figures, details
