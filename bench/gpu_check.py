#!/usr/bin/env python
"""The GPU check: a few LoRA and QLoRA steps of a random-initialised 7B model (Mistral-7B's architecture) through
the runner and axolotl on one H100/H200, measured beside `recipe fit`'s prediction for the same recipe.

Three commands, in this order (see bench/README.md, "GPU check"):

    .venv/bin/python bench/gpu_check.py fetch      # 1st half, where PyPI is reachable: wheels -> .gpu-check/wheels
    .venv/bin/python bench/gpu_check.py dry-run    # everything up to the GPU, on any machine (tested on CPU)
    make gpu-check                                 # 2nd half, on the GPU machine (= bash bench/gpu_check.sh)

The GPU machine is assumed to have no network and a Python with torch, transformers, peft and accelerate (and
the common scientific packages), but no axolotl, trl, bitsandbytes, datasets or lm-eval: WHEELS are what the
training path imports beyond that (found by tracing a real run in an environment holding only those packages).
They are installed offline with `pip install --no-index --no-deps --target`, beside the machine's own packages.
axolotl imports wandb at module level but uses it only when a recipe tracks with W&B; its 19 MiB wheel would
break the 64 MiB budget, so the install adds a stand-in module that transformers reports as "wandb not
available". FlashAttention has no wheel on PyPI (source only): the check uses SDPA.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".gpu-check"  # git-ignored; carried to the GPU machine (wheels, plan.json, results.json)
BUDGET_MIB = 64.0
PYTHON_VERSION = "3.12"  # the GPU machine's Python (/work/.library/device: 3.12.3); wheels are picked for it
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
# The training path's imports missing from a torch/transformers/peft/accelerate machine; versions: constraints.txt.
WHEELS = ("axolotl", "axolotl-contribs-lgpl", "axolotl-contribs-mit", "trl", "datasets", "dill", "multiprocess",
          "evaluate", "bitsandbytes", "pydantic", "pydantic_core", "annotated-types", "typing-inspection", "addict",
          "fire", "termcolor", "fastcore", "python-dotenv", "posthog", "backoff", "distro")
WANDB_STANDIN = '''"""Stand-in for wandb, written by bench/gpu_check.py: axolotl imports wandb at module level, the
GPU check never tracks with it. transformers' is_wandb_available() sees no `run` attribute: wandb unavailable."""


def __getattr__(name):
    raise AttributeError(f"wandb.{name}: wandb is not installed here (the GPU check's stand-in)")
'''
MODEL_CONFIG = ROOT / "runner" / "estimate" / "configs" / "mistralai--Mistral-7B-v0.1" / "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
METHODS = ("lora", "qlora")
STEPS = 8


def say(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(constraints: Path = ROOT / "constraints.txt") -> dict[str, str]:
    """name -> the version constraints.txt pins, for every wheel the check carries."""
    pinned = {}
    for line in constraints.read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            pinned[_norm(name.strip())] = version.split(";")[0].strip()
    missing = [w for w in WHEELS if _norm(w) not in pinned]
    if missing:
        raise SystemExit(f"gpu-check: constraints.txt pins no version for {', '.join(missing)}")
    return {w: pinned[_norm(w)] for w in WHEELS}


def wheel_files(wheels: Path) -> dict[str, Path]:
    """The wheels in the folder, by normalised distribution name."""
    found = {}
    for file in sorted(wheels.glob("*.whl")) if wheels.is_dir() else []:
        found[_norm(file.name.split("-")[0])] = file
    return found


def wheel_table(wheels: Path, budget_mib: float = BUDGET_MIB) -> dict:
    """Each carried wheel (pinned version, file, MiB, present), the total and the verdict against the budget."""
    files = wheel_files(wheels)
    rows = []
    for name, version in pins().items():
        file = files.get(_norm(name))
        rows.append({"name": name, "version": version, "file": file.name if file else None,
                     "mib": round(file.stat().st_size / 2**20, 2) if file else None})
    total = round(sum(r["mib"] or 0 for r in rows), 2)
    return {"folder": str(wheels), "wheels": rows, "total_mib": total, "budget_mib": budget_mib,
            "within_budget": total <= budget_mib, "missing": [r["name"] for r in rows if r["file"] is None]}


def fetch(wheels: Path, python_version: str = PYTHON_VERSION, budget_mib: float = BUDGET_MIB) -> dict:
    """Download exactly WHEELS (no dependencies) for the GPU machine's platform; sdist-only ones are built into
    pure-Python wheels here. Wheels of other names or versions are removed (two versions stop an install)."""
    wheels.mkdir(parents=True, exist_ok=True)
    wanted = pins()
    for name, version in wanted.items():
        have = wheel_files(wheels).get(_norm(name))
        if have and f"-{version}-" in have.name:
            continue
        if have:
            have.unlink()
        spec = f"{name}=={version}"
        download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp", "-d", str(wheels), spec]
        for platform in PLATFORMS:
            download[-3:-3] = ["--platform", platform]
        if subprocess.run(download, capture_output=True, text=True).returncode != 0:
            say(f"{spec}: no wheel on the index; building one from its source (pure Python)")
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), spec],
                           check=True)
    keep = {_norm(n) for n in wanted}
    for name, file in wheel_files(wheels).items():
        if name not in keep:
            file.unlink()
    table = wheel_table(wheels, budget_mib)
    if not table["within_budget"]:
        raise SystemExit(f"gpu-check: the wheels take {table['total_mib']} MiB, over the {budget_mib} MiB budget")
    return table


def model_dir_files(model: Path, tokenizer_from: Path, config_from: Path = MODEL_CONFIG) -> None:
    """A 7B model folder without weights: Mistral-7B-v0.1's config.json and the tiny model's tokenizer (its ids all
    fall inside the 32,000-row embedding; bos/eos/unk ids are Mistral's own)."""
    model.mkdir(parents=True, exist_ok=True)
    config = json.loads(config_from.read_text())
    (model / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file() and tokenizer_from.resolve() != model.resolve():
            shutil.copyfile(tokenizer_from / name, model / name)


def recipe_text(method: str, model: Path, gpu_model: str | None, rehearse: bool = False) -> dict:
    """The check's recipe: the SQL demo data, ChatML, 2048-token packed rows (each step micro x 2048 tokens,
    padding included), gradient checkpointing, SDPA, bf16, on the 1gpu profile with the machine's GPU model.
    A rehearsal (on CPU, the tiny model): the cpu profile, fp32, 2 steps of 2 x 256 tokens."""
    recipe = {
        "schema": 1, "version": "1.0.0", "name": f"gpu-check-{method}",
        "extends": [f"_base/method/{method}.yaml", "_base/hardware/1gpu.yaml"],
        "description": "bench/gpu_check.py: a random-initialised Mistral-7B architecture, a few steps",
        "model": {"base": str(model), "context_length": 32768},
        "data": {"datasets": [{"source": f"file:{ROOT / 'data' / 'sql-demo' / 'train.jsonl'}",
                               "fields": {"instruction": "question", "input": "context", "output": "answer"}}],
                 "template": "chatml", "system": "Reply with one SQLite query.", "max_seq_len": 2048,
                 "packing": True, "split": {"val": 0, "test": 0, "seed": 42}},
        "train": {"epochs": None, "max_steps": STEPS, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
                  "learning_rate": 1.0e-4, "warmup_ratio": 0.0, "logging_steps": 1, "save_steps": None,
                  "gradient_checkpointing": True, "seed": 42},
        "hardware": {"attention": "sdpa", "precision": "bf16", "gpu_model": gpu_model},
        "eval": {"compare_base": False},
    }
    if rehearse:
        recipe["extends"][1] = "_base/hardware/cpu.yaml"
        recipe["hardware"] = {"attention": "sdpa", "precision": "fp32"}
        recipe["data"] |= {"max_seq_len": 256}
        recipe["train"] |= {"max_steps": 2, "micro_batch_size": 2}
        recipe["model"]["context_length"] = 512
    return recipe


def environment(work: Path, site: Path | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", AXOLOTL_DO_NOT_TRACK="1", DO_NOT_TRACK="1",
               WANDB_MODE="disabled", PYTHONUNBUFFERED="1", RECIPE_RUNS_DIR=str(work / "runs"),
               RECIPE_CACHE_DIR=str(work / "cache"))
    path = [str(site)] if site else []
    env["PYTHONPATH"] = os.pathsep.join([*path, str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    if site:
        env["PATH"] = os.pathsep.join([str(site / "bin"), env.get("PATH", "")])
    return env


def commands(py: str, wheels: Path, work: Path, site: Path, rehearse: bool = False) -> list[dict]:
    """What the GPU half runs, in order (the dry run prints them; `run` executes them)."""
    files = sorted(str(f) for f in wheel_files(wheels).values()) or [str(wheels / "*.whl")]
    steps = [{"name": "install", "argv": [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                          "--no-cache-dir", "--upgrade", "--target", str(site), *files]},
             {"name": "build-model",
              "argv": [py, str(Path(__file__)), "build-model", "--model", str(work / "model-7b"),
                       *(["--rehearse"] if rehearse else [])]}]
    for method in methods(rehearse):
        recipe = str(work / f"gpu-check-{method}.yaml")
        steps += [{"name": f"fit-{method}", "argv": [py, "-m", "runner", "fit", recipe, "--json"]},
                  {"name": f"train-{method}", "argv": [py, "-m", "runner", "train", recipe]}]
    return steps


def methods(rehearse: bool = False) -> tuple[str, ...]:
    return METHODS[:1] if rehearse else METHODS  # QLoRA needs a GPU


def prepare(work: Path, gpu_model: str | None, tokenizer_from: Path, rehearse: bool = False) -> dict[str, Path]:
    """Write the weightless model folder and one recipe per method; returns the recipe paths. A rehearsal takes
    the tiny model's config.json instead of Mistral-7B's."""
    import yaml

    model_dir_files(work / "model-7b", tokenizer_from, tokenizer_from / "config.json" if rehearse else MODEL_CONFIG)
    recipes = {}
    for method in methods(rehearse):
        path = work / f"gpu-check-{method}.yaml"
        text = recipe_text(method, work / "model-7b", gpu_model, rehearse)
        path.write_text(yaml.safe_dump(text, sort_keys=False))
        recipes[method] = path
    return recipes


def tokenizer_source(py: str, env: dict, model: Path | None = None) -> Path:
    """Where the 7B model's tokenizer comes from: the model folder itself when a dry run wrote it there (it
    travels in .gpu-check/), else models/tiny-llama, built first when missing (`recipe tiny-model`)."""
    if model is not None and all((model / name).is_file() for name in TOKENIZER_FILES):
        return model
    tiny = ROOT / "models" / "tiny-llama"
    if not (tiny / "tokenizer.json").is_file():
        say("building models/tiny-llama for its tokenizer (recipe tiny-model)")
        subprocess.run([py, "-m", "runner", "tiny-model"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return tiny


def dry_run(folder: Path, gpu_model: str, plan: bool = True) -> dict:
    """Everything up to the GPU: the wheel list and sizes, the model folder and recipes written, each recipe
    planned (`recipe plan`: the axolotl files) and estimated (`recipe fit --json`), and the commands the GPU half
    runs. Written to <folder>/plan.json."""
    py, work, site = sys.executable, folder / "work", Path("/tmp/gpu-check-site")
    env = environment(work, None)
    recipes = prepare(work, gpu_model, tokenizer_source(py, env))
    record: dict = {"wheels": wheel_table(folder / "wheels"), "model_dir": str(work / "model-7b"),
                    "recipes": {m: str(p) for m, p in recipes.items()}, "gpu_model": gpu_model, "planned": {},
                    "estimates": {}}
    for method, recipe in recipes.items():  # in this process: the same verbs without an interpreter start each
        if plan:
            code, out, err = _in_process(["plan", str(recipe)], env)
            if code != 0:
                raise SystemExit(f"gpu-check: recipe plan {recipe} failed:\n{out}{err}")
            run = max(p for p in (work / "runs" / f"gpu-check-{method}").iterdir() if p.is_dir() and not p.is_symlink())
            record["planned"][method] = {"run_dir": str(run), "files": sorted(p.name for p in run.iterdir())}
        record["estimates"][method] = estimate(py, recipe, env, in_process=True)
    record["commands"] = [{"name": c["name"], "command": shlex.join(c["argv"])}
                          for c in commands("python3", folder / "wheels", work, site)]
    (folder / "plan.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def _in_process(argv: list[str], env: dict) -> tuple[int, str, str]:
    """`recipe ARGV` run by this process (the runner's CLI entry point), under env; (exit code, stdout, stderr)."""
    import contextlib
    import io

    from runner import cli

    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    os.environ.update({k: env[k] for k in ("RECIPE_RUNS_DIR", "RECIPE_CACHE_DIR", "HF_HUB_OFFLINE",
                                           "HF_DATASETS_OFFLINE")})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return code, out.getvalue(), err.getvalue()


def estimate(py: str, recipe: Path, env: dict, in_process: bool = False) -> dict:
    """`recipe fit --json` for the recipe: predicted peak memory and the throughput at the assumed MFU."""
    argv = ["fit", str(recipe), "--json"]
    if in_process:
        code, out, err = _in_process(argv, env)
    else:
        done = subprocess.run([py, "-m", "runner", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
        code, out, err = done.returncode, done.stdout, done.stderr
    if code != 0:
        return {"error": (err or out).strip()[-2000:]}
    report = json.loads(out)
    memory, timing = report.get("memory") or {}, report.get("time") or {}
    out = {"allocated_gib": memory.get("allocated_gib"), "peak_gib": memory.get("peak_gib"),
           "fits": report.get("fits"), "device_memory_gib": (report.get("device") or {}).get("memory_gib"),
           "parts": {p["name"]: p["gib"] for p in memory.get("parts", [])},
           "flops_per_token": timing.get("flops_per_token"), "mfu_assumed": timing.get("mfu"),
           "peak_tflops": timing.get("peak_tflops")}
    if out["flops_per_token"] and out["mfu_assumed"] and out["peak_tflops"]:
        out["tokens_per_s"] = round(out["mfu_assumed"] * out["peak_tflops"] * 1e12 / out["flops_per_token"], 1)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("fetch", "dry-run", "run", "build-model"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="wheels, plan.json, results.json, work/")
    parser.add_argument("--gpu-model", default="h100-80g", help="dry run: the GPU model to plan for (run: detected)")
    parser.add_argument("--python-version", default=PYTHON_VERSION, help="fetch: the GPU machine's Python")
    parser.add_argument("--no-plan", action="store_true", help="dry run: skip `recipe plan`")
    parser.add_argument("--model", type=Path, help="build-model: the model folder (config.json in it)")
    parser.add_argument("--rehearse", action="store_true", help="run/build-model on CPU with the tiny model's "
                        "config, LoRA only, wheels optional (tests the GPU half's own code)")
    args = parser.parse_args(argv)
    folder = args.dir.resolve()
    if __package__ in (None, ""):  # started as a script: `bench` is the package, not this folder
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
        sys.path.insert(0, str(ROOT))
    from bench.gpu_run import build_model, run  # the GPU half
    if args.what == "fetch":
        table = fetch(folder / "wheels", args.python_version)
        print(json.dumps(table, indent=2))
        say(f"{len(table['wheels'])} wheels, {table['total_mib']} MiB (budget {table['budget_mib']} MiB) in {folder}")
    elif args.what == "dry-run":
        print(json.dumps(dry_run(folder, args.gpu_model, plan=not args.no_plan), indent=2, sort_keys=True))
        say(f"wrote {folder / 'plan.json'}")
    elif args.what == "build-model":
        build_model(args.model, "cpu" if args.rehearse else "cuda")
    else:
        return run(folder, rehearse=args.rehearse)
    return 0


if __name__ == "__main__":
    sys.exit(main())
