"""Figure 1: runner_overhead_ratio (`recipe train tiny-cpu` / `axolotl train` in a copy of its run directory,
alternated A,B,B,A) and launch_latency_s (start of `recipe train` -> train_pid in manifest.json, polled)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import time
from pathlib import Path

from bench.common import RECIPE, ROOT, VENV_BIN, Context, Failed, mean, read_json, say, spread, timed

RUN_OUTPUTS = {"model", "logs", "prepared", "metrics.jsonl", "ranks", "eval", "manifest.json", "plots", "report.md"}


def launch_poller(recipe_runs: Path, before: set[str]):
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


def launch_exports(launch_sh: Path) -> dict:
    """KEY=VALUE pairs that launch.sh exports (the environment the runner's trainer really gets)."""
    exports = {}
    for line in launch_sh.read_text().splitlines():
        if line.startswith("export "):
            for token in shlex.split(line.split("#", 1)[0])[1:]:
                if "=" in token:
                    key, value = token.split("=", 1)
                    exports[key] = value
    return exports


def copy_run(source: Path, target: Path) -> None:
    """The same emitted config and prepared data, without anything a training run produced."""
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.name in RUN_OUTPUTS:
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name)
        else:
            shutil.copy2(item, target / item.name)


def _prepare_and_warm_up(ctx: Context) -> None:
    say("runner overhead: recipe prepare tiny-cpu (untimed)")
    timed("overhead-prepare", [RECIPE, "prepare", "tiny-cpu", *ctx.size["train_overrides"]], cwd=ROOT,
          env=ctx.env(), logs=ctx.logs)
    if ctx.size["overhead_warmup"]:
        # the first trainer start reads torch, transformers and axolotl from a cold page cache; without this
        # untimed one-step run, that cost lands on whichever of A and B runs first
        say("runner overhead: recipe train tiny-cpu train.max_steps=1 (untimed warm-up)")
        timed("overhead-warmup", [RECIPE, "train", "tiny-cpu", "train.max_steps=1"], cwd=ROOT,
              env=ctx.env(HF_DATASETS_CACHE=str(ctx.tmp / "hf-datasets" / "warmup")), logs=ctx.logs)


def _run_a(ctx: Context, index: int, env: dict) -> tuple[dict, Path, dict]:
    """A: `recipe train tiny-cpu`, timed, with its manifest polled for train_pid. -> (result, run dir, timings)"""
    recipe_runs = ctx.tmp / "runs" / "tiny-cpu"
    before = {p.name for p in recipe_runs.iterdir()} if recipe_runs.is_dir() else set()
    say(f"runner overhead {index}/{len(ctx.size['order'])}: A = recipe train tiny-cpu")
    result = timed(f"overhead-{index}-A-recipe-train", [RECIPE, "train", "tiny-cpu", *ctx.size["train_overrides"]],
                   cwd=ROOT, env=env, logs=ctx.logs, poll=launch_poller(recipe_runs, before))
    if not result["polled"]:
        raise Failed("recipe train finished but no manifest.json with train_pid was seen")
    run_dir = recipe_runs / result["polled"]["run"]
    manifest = read_json(run_dir / "manifest.json")
    if manifest.get("status") != "trained":
        raise Failed(f"{run_dir}: status {manifest.get('status')}")
    return result, run_dir, manifest.get("timings", {})


def _run_b(ctx: Context, index: int, env: dict, first_run: Path | None) -> dict:
    """B: `axolotl train axolotl.yaml --launcher python` in a copy of the first A run's directory."""
    if first_run is None:
        raise Failed("the order must start with A (B copies A's run directory)")
    copy = ctx.tmp / "direct" / f"run-{index}"
    copy_run(first_run, copy)
    say(f"runner overhead {index}/{len(ctx.size['order'])}: B = axolotl train axolotl.yaml --launcher python")
    result = timed(f"overhead-{index}-B-axolotl-train",
                   [str(VENV_BIN / "axolotl"), "train", "axolotl.yaml", "--launcher", "python"],
                   cwd=copy, env=env | launch_exports(copy / "launch.sh"), logs=ctx.logs)
    if not any((copy / "model").glob("adapter_model.*")) and not (copy / "model" / "config.json").exists():
        raise Failed(f"{copy}: axolotl finished but wrote no model")
    return result


def bench(ctx: Context) -> tuple[dict, dict]:
    _prepare_and_warm_up(ctx)
    a_runs, b_runs, latencies, runner_timings, first_run = [], [], [], [], None
    for index, which in enumerate(ctx.size["order"], start=1):
        # each run gets its own (empty) datasets cache, so no run reuses another's arrow files
        env = ctx.env(HF_DATASETS_CACHE=str(ctx.tmp / "hf-datasets" / f"overhead-{index}"))
        if which == "A":
            result, run_dir, timings = _run_a(ctx, index, env)
            a_runs.append(result)
            latencies.append(result["polled"])
            runner_timings.append(timings)
            first_run = first_run or run_dir
        else:
            b_runs.append(_run_b(ctx, index, env, first_run))
    ctx.tiny_run = first_run
    return _summary(ctx, a_runs, b_runs, latencies, runner_timings, first_run)


def _summary(ctx: Context, a_runs: list[dict], b_runs: list[dict], latencies: list[dict],
             runner_timings: list[dict], first_run: Path) -> tuple[dict, dict]:
    runner_wall, direct_wall = [r["wall_s"] for r in a_runs], [r["wall_s"] for r in b_runs]
    runner_cpu, direct_cpu = [r["cpu_s"] for r in a_runs], [r["cpu_s"] for r in b_runs]
    manifest_latency = [r["manifest_s"] for r in latencies]
    process_latency = [r["process_created_s"] for r in latencies if "process_created_s" in r]
    runner_mean, direct_mean = mean(runner_wall), mean(direct_wall)
    # What the runner spends outside the trainer, by its own clock (manifest timings: prepare_s, train_s)
    inside = [t.get("train_s") for t in runner_timings if t.get("train_s")]
    overrides = ctx.size["train_overrides"]
    figures = {"runner_overhead_ratio": round(runner_mean / direct_mean, 4),
               "launch_latency_s": round(statistics.fmean(manifest_latency), 3)}
    details = {"order": ctx.size["order"], "overrides": overrides, "runner_train_s": spread(runner_wall),
               "axolotl_train_s": spread(direct_wall), "runner_train_cpu_s": spread(runner_cpu),
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
