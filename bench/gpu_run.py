"""The GPU check's second half (bench/gpu_check.py run, started by `make gpu-check` on the GPU machine): install
the carried wheels offline, build the random-initialised 7B model on the GPU, then per method (LoRA, QLoRA)
`recipe fit --json` and `recipe train`; measured tokens/s, peak memory and MFU beside the prediction, in
<dir>/results.json (and $OUT, when the machine's runner collects files from there).

Every step has a share of one deadline (9 minutes in all, so the whole check ends inside 10); a step that fails
or runs out of time is recorded and the next one still runs; results.json is written whatever happens.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench.gpu_check import (
    ROOT,
    WANDB_STANDIN,
    WHEELS,
    commands,
    environment,
    estimate,
    methods,
    prepare,
    say,
    tokenizer_source,
    wheel_table,
)

DEADLINE_S = 540
SITE = Path(os.environ.get("GPU_CHECK_SITE", "/tmp/gpu-check-site"))


def build_model(model: Path, device: str = "cuda") -> None:
    """Random-initialised weights for model/config.json, made on the GPU in bf16 (seconds) and saved beside it;
    skipped when weights are already there. (device cpu: a rehearsal's tiny model, in fp32.)"""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (model / "model.safetensors.index.json").is_file() or (model / "model.safetensors").is_file():
        say(f"{model}: weights already there")
        return
    config = AutoConfig.from_pretrained(model)
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.device(device):
        network = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    params = sum(p.numel() for p in network.parameters())
    where = torch.cuda.get_device_name(0) if device == "cuda" else device
    say(f"built {params / 1e9:.2f}B parameters on {where} in "
        f"{time.perf_counter() - started:.1f} s; saving")
    network.save_pretrained(model, max_shard_size="5GB")
    say(f"saved in {time.perf_counter() - started:.1f} s")


def _gpu(rehearse: bool) -> dict:
    import torch

    if rehearse:
        return {"name": "cpu (rehearsal)", "gpu_model": None, "torch": torch.__version__,
                "python": platform.python_version()}
    if not torch.cuda.is_available():
        raise SystemExit("gpu-check: no CUDA device here. This is the GPU half: run it on the GPU machine (make "
                         "gpu-check); here, `bench/gpu_check.py dry-run` shows everything up to the GPU")
    from runner.recipe import gpus

    name = torch.cuda.get_device_name(0)
    known = gpus.get(name)
    props = torch.cuda.get_device_properties(0)
    return {"name": name, "gpu_model": known.name if known else None,
            "memory_gib": round(props.total_memory / 2**30, 2), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version()}


def _versions() -> dict:
    from importlib import metadata

    found = {}
    for name in ("torch", "transformers", "peft", "accelerate", "axolotl", "trl", "bitsandbytes", "datasets",
                 "pydantic", "flash-attn"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _step(name: str, argv: list[str], env: dict, logs: Path, deadline: float) -> dict:
    """One command with its output in logs/<name>.log; its wall time, exit code, and the log's tail on failure."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    say(f"{name}: {shlex.join(argv[:8])}{' ...' if len(argv) > 8 else ''}")
    started = time.perf_counter()
    left = deadline - time.monotonic()
    if left < 5:
        return {"ok": False, "error": "no time left", "wall_s": 0.0}
    with log.open("w") as out:
        try:
            code = subprocess.run(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=left).returncode
        except subprocess.TimeoutExpired:
            code = None
    result = {"ok": code == 0, "exit_code": code, "wall_s": round(time.perf_counter() - started, 1), "log": str(log)}
    if code != 0:
        result["error"] = "timed out" if code is None else f"exit code {code}"
        result["tail"] = log.read_text(errors="replace").splitlines()[-25:]
        say(f"{name}: {result['error']}; log {log}")
    return result


def steady_tokens_per_s(run: Path) -> float | None:
    """Tokens/s between the first and the last logged step (the first step's warm-up left out)."""
    from runner.core import jsonl

    rows = [r for r in jsonl.read(run / "metrics.jsonl", strict=False).rows if "tokens_seen" in r]
    if len(rows) < 2 or rows[-1]["elapsed_s"] <= rows[0]["elapsed_s"]:
        return None
    return round((rows[-1]["tokens_seen"] - rows[0]["tokens_seen"]) / (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]), 1)


def measured(work: Path, method: str) -> dict:
    """What the run's manifest (through its contract) says it achieved."""
    from runner.runs.manifest import Manifest

    run = (work / "runs" / f"gpu-check-{method}" / "latest").resolve()
    train = Manifest.read(run / "manifest.json").train
    if train is None:
        return {"run": str(run), "error": "no training summary"}
    seen = train.precision
    return {"run": str(run), "steps": train.steps, "tokens": train.tokens, "tokens_per_s": train.tokens_per_s,
            "tokens_per_s_steady": steady_tokens_per_s(run), "tflops": train.tflops, "mfu": train.mfu,
            "peak_tflops": train.peak_tflops, "peak_gpu_memory_gib": train.peak_gpu_memory_gib,
            "params_total": train.params_total, "params_trainable": train.params_trainable,
            "first_loss": train.first_loss, "final_loss": train.final_loss,
            "autocast_dtype": seen.autocast_dtype if seen else None}


def compare(measure: dict, predict: dict) -> dict:
    """Measured / predicted for memory (allocated) and throughput, and the achieved vs assumed MFU."""
    out = {}
    if measure.get("peak_gpu_memory_gib") and predict.get("allocated_gib"):
        out["memory_measured_over_predicted"] = round(measure["peak_gpu_memory_gib"] / predict["allocated_gib"], 3)
    rate = measure.get("tokens_per_s_steady") or measure.get("tokens_per_s")
    if rate and predict.get("tokens_per_s"):
        out["tokens_per_s_measured_over_predicted"] = round(rate / predict["tokens_per_s"], 3)
    if measure.get("mfu") is not None and predict.get("mfu_assumed"):
        out["mfu_measured"], out["mfu_assumed"] = measure["mfu"], predict["mfu_assumed"]
    return out


def _install(py: str, folder: Path, work: Path, env: dict, deadline: float, logs: Path, rehearse: bool) -> dict:
    missing = wheel_table(folder / "wheels")["missing"]
    if rehearse and len(missing) == len(WHEELS):
        return {"ok": True, "skipped": "rehearsal without wheels: this Python's own packages"}
    if missing:
        raise SystemExit(f"gpu-check: {folder / 'wheels'} lacks the wheels of {', '.join(missing)}: run `make "
                         "gpu-check-wheels` on a machine that reaches PyPI first, and carry .gpu-check along")
    step = _step("install", commands(py, folder / "wheels", work, SITE)[0]["argv"], env, logs, deadline)
    if step["ok"] and importlib.util.find_spec("wandb") is None and not (SITE / "wandb").exists():
        (SITE / "wandb").mkdir(parents=True, exist_ok=True)
        (SITE / "wandb" / "__init__.py").write_text(WANDB_STANDIN)
        step["wandb"] = "stand-in"
    if step["ok"]:
        sys.path.insert(0, str(SITE))  # pydantic (for the runner's contracts) now comes from there
        importlib.invalidate_caches()
    return step


def run(folder: Path, rehearse: bool = False) -> int:
    deadline = time.monotonic() + DEADLINE_S
    py, work, logs = sys.executable, folder / "work", folder / "logs"
    env = environment(work, SITE)
    results: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gpu": _gpu(rehearse),
                     "wheels": wheel_table(folder / "wheels"), "steps": {}, "methods": {}, "rehearsal": rehearse}
    try:
        results["steps"]["install"] = _install(py, folder, work, env, deadline, logs, rehearse)
        if results["steps"]["install"].get("skipped"):
            env = environment(work, None)  # this Python's own packages only
        results["versions"] = _versions()
        gpu_model = None if rehearse else results["gpu"]["gpu_model"] or "h100-80g"
        tokenizer = tokenizer_source(py, env, None if rehearse else work / "model-7b")
        prepare(work, gpu_model, tokenizer, rehearse)
        for item in commands(py, folder / "wheels", work, SITE, rehearse)[1:]:
            name = item["name"]
            if name.startswith("fit-"):
                method = name.removeprefix("fit-")
                recipe = work / f"gpu-check-{method}.yaml"
                results["methods"].setdefault(method, {})["predicted"] = estimate(py, recipe, env)
                continue
            results["steps"][name] = _step(name, item["argv"], env, logs, deadline)
            if name.startswith("train-") and results["steps"][name]["ok"]:
                method = name.removeprefix("train-")
                entry = results["methods"].setdefault(method, {})
                entry["measured"] = measured(work, method)
                entry["compared"] = compare(entry["measured"], entry.get("predicted", {}))
    finally:
        write(folder, results)
    failed = [name for name, step in results["steps"].items() if not step.get("ok")]
    return 1 if failed or set(results["methods"]) != set(methods(rehearse)) else 0


def write(folder: Path, results: dict) -> None:
    path = folder / "results.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    say(f"wrote {path}")
    for method, entry in results.get("methods", {}).items():
        m, p = entry.get("measured", {}), entry.get("predicted", {})
        say(f"{method}: {m.get('tokens_per_s_steady') or m.get('tokens_per_s')} tokens/s (predicted "
            f"{p.get('tokens_per_s')}), peak {m.get('peak_gpu_memory_gib')} GiB (predicted {p.get('allocated_gib')} "
            f"allocated, {p.get('peak_gib')} with margin), MFU {m.get('mfu')} (assumed {p.get('mfu_assumed')})")
    out = os.environ.get("OUT")
    if out and Path(out).is_dir():  # the device machine's runner brings back what is under $OUT
        (Path(out) / "gpu-check-results.json").write_text(path.read_text())
        for name, step in results.get("steps", {}).items():
            if step.get("log") and Path(step["log"]).is_file() and name.startswith("train-"):
                tail = Path(step["log"]).read_text(errors="replace").splitlines()[-300:]
                (Path(out) / f"gpu-check-{name}.log").write_text("\n".join(tail) + "\n")
