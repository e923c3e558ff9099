"""`recipe fit` against reality: CPU training runs measured here, and published GPU measurements.

(a) CPU: the trainer process's peak RSS (/usr/bin/time, the largest process of `recipe train`) against
    `recipe fit --json` for the same recipe and overrides on its CPU profile (there the "GPU memory" is RAM).
    `data.packing=true` makes every step exactly micro batch x max_seq_len tokens, the shape the estimate assumes
    (unpacked batches are padded only to their longest row). Full run: the demo's LoRA (SmolLM2-135M, micro
    batch 8) and a full fine-tune of SmolLM2, 2 steps each (the second has every optimizer state), once with
    glibc returning freed blocks to the system (MALLOC_MMAP_THRESHOLD_=65536: RSS then follows what is
    allocated, as the estimate and a GPU's max_memory_allocated do) and once with glibc's defaults (freed
    heap memory stays in RSS); quick run: tiny-cpu, 1 step.
(b) GPU: every row of bench/published_memory.json (source, model, settings, the measured peak or OOM) is
    estimated by runner.estimate with the row's settings and the source framework's memory layout, in a
    worker process (`python -m bench.fit --published OUT`); quick runs estimate three rows.

Figures: `fit_published_verdicts_agree` (share of rows whose fit/OOM verdict the estimate reproduces),
`fit_published_within_25pct` (share of measured peaks estimated within +-25%), `fit_published_median_abs_error`,
`fit_cpu_<case>_error` ((estimate - measured) / measured RSS). Goals (details.fit.goals): every verdict
reproduced, every peak within 25%.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import DEMO_RECIPE, PYTHON, RECIPE, ROOT, Context, Failed, ensure_tiny_model, say, timed

PUBLISHED = ROOT / "bench" / "published_memory.json"
QUICK_ROWS = ("hub/mistral-7b-lora", "tables/llama-2-7b-lora-mb4", "torchtune/llama-3.1-8b-qlora-4090")
PACKED = ["data.packing=true"]
FULL_FT = ["method.kind=full", "method.lora=null", "train.learning_rate=2.0e-5"]
RETURN_FREED = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # glibc hands freed blocks of 64 KiB or more back to the system
CPU_CASES = {  # name: (recipe, overrides, extra environment)
    "quick": {"lora": ("tiny-cpu", ["train.max_steps=1", *PACKED], RETURN_FREED)},
    "full": {"lora": (DEMO_RECIPE, ["train.max_steps=2", *PACKED], RETURN_FREED),
             "lora_default_malloc": (DEMO_RECIPE, ["train.max_steps=2", *PACKED], {}),
             "full": (DEMO_RECIPE, ["train.max_steps=2", *FULL_FT, *PACKED], RETURN_FREED),
             "full_default_malloc": (DEMO_RECIPE, ["train.max_steps=2", *FULL_FT, *PACKED], {})},
}
TOLERANCE = 0.25


# ---------------------------------------------------------------- (b) published rows, in a worker process


def _setup(row: dict, framework: dict):
    from runner.estimate import memory

    fields = {k: v for k, v in framework.items() if k in memory.Framework.model_fields}
    if "double_quant" in row:
        fields["double_quant"] = row["double_quant"]
    return memory.Setup(method=row["method"], precision="bf16", device="cuda", world_size=row["gpus"],
                        deepspeed=row["deepspeed"], micro_batch=row["micro_batch"], seq_len=row["seq_len"],
                        gradient_checkpointing=row["gradient_checkpointing"], attention="flash",
                        optimizer=row.get("optimizer", "adamw_torch"), framework=memory.Framework(**fields))


def estimate_row(row: dict, source: dict) -> dict:
    """The estimate for one published row, in the row's unit, with the fit/OOM comparison."""
    from runner.estimate import fit, model_config
    from runner.recipe import gpus
    from runner.recipe.schema import LoraSpec, ModelSpec

    adapter = LoraSpec(**row["lora"]) if "lora" in row else None
    setup = _setup(row, source["framework"])
    found, arch, trainable, acts = fit.estimate_memory(model_config.find(ModelSpec(base=row["model"])), setup,
                                                       adapter)
    scale = 2 ** 30 / (1e9 if source["unit"] == "GB" else 2 ** 30)
    kind = source["measured_as"]
    value = found.peak_gib if kind == "estimate" else found.allocated_gib
    result = {"id": row["id"], "source": row["source"], "model": row["model"], "method": row["method"],
              "gpu": row["gpu"], "gpus": row["gpus"], "measured": row["measured"], "unit": source["unit"],
              "compared": "peak" if kind == "estimate" else "allocated", "estimate": round(value * scale, 2),
              "peak_gib": found.peak_gib, "params": arch.params_total, "trainable": trainable,
              "parts_gib": {p.name: p.gib for p in found.parts}, "activations": acts.how}
    if isinstance(row["measured"], (int, float)):
        result["error"] = round((result["estimate"] - row["measured"]) / row["measured"], 3)
    gpu = gpus.get(row["gpu"])
    if gpu is not None:
        result["memory_gib"] = gpu.memory_gib
        result["published_fits"] = row["measured"] != "OOM"
        result["estimated_fits"] = found.peak_gib <= gpu.memory_gib
        result["agree"] = result["published_fits"] == result["estimated_fits"]
    return result


def worker(out: Path, quick: bool) -> None:
    data = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    rows = [r for r in data["rows"] if not quick or r["id"] in QUICK_ROWS]
    results = [estimate_row(row, data["sources"][row["source"]]) for row in rows]
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")


# ---------------------------------------------------------------- the phase


def summarize(rows: list[dict]) -> tuple[dict, dict]:
    """Figures over the measured rows (published estimates, such as LLaMA-Factory's, are reported apart)."""
    measured = [r for r in rows if r["compared"] == "allocated" or "agree" in r]
    verdicts = [r for r in measured if "agree" in r]
    peaks = [r for r in measured if "error" in r and r["compared"] == "allocated"]
    within = [r for r in peaks if abs(r["error"]) <= TOLERANCE]
    errors = [abs(r["error"]) for r in peaks]
    figures = {"fit_published_verdicts_agree": round(sum(r["agree"] for r in verdicts) / len(verdicts), 3)
               if verdicts else None,
               "fit_published_within_25pct": round(len(within) / len(peaks), 3) if peaks else None,
               "fit_published_median_abs_error": round(statistics.median(errors), 3) if errors else None}
    counts = {"verdict_rows": len(verdicts), "verdicts_agree": sum(r["agree"] for r in verdicts),
              "peak_rows": len(peaks), "peaks_within_25pct": len(within),
              "max_abs_error": round(max(errors), 3) if errors else None,
              "verdict_misses": [r["id"] for r in verdicts if not r["agree"]],
              "peak_misses": [f"{r['id']} ({r['error']:+.0%})" for r in peaks if abs(r["error"]) > TOLERANCE]}
    return figures, counts


def table(rows: list[dict]) -> str:
    lines = [f"{'row':<40} {'measured':>9} {'estimate':>9} {'error':>7}  verdict (published / estimated)"]
    for r in rows:
        measured = f"{r['measured']}" if isinstance(r["measured"], str) else f"{r['measured']:.2f}"
        error = f"{r['error']:+.0%}" if "error" in r else ""
        verdict = ""
        if "agree" in r:
            verdict = (f"{'fits' if r['published_fits'] else 'OOM'} / {'fits' if r['estimated_fits'] else 'OOM'}"
                       f"{'' if r['agree'] else '  MISS'} (peak {r['peak_gib']:.1f} of {r['memory_gib']:.1f} GiB)")
        lines.append(f"{r['id']:<40} {measured:>9} {r['estimate']:>9.2f} {error:>7}  {verdict} {r['unit']}")
    return "\n".join(lines)


def _published(ctx: Context) -> list[dict]:
    out = ctx.tmp / "fit-published.json"
    argv = [PYTHON, "-m", "bench.fit", "--published", str(out), *(["--quick"] if ctx.quick else [])]
    timed("fit-published", argv, cwd=ROOT, env=ctx.env(), logs=ctx.logs, timeout=3600)
    return json.loads(out.read_text(encoding="utf-8"))


def _cpu_case(ctx: Context, name: str, recipe: str, overrides: list[str], extra_env: dict) -> dict:
    say(f"fit: recipe train {recipe} {' '.join(overrides)} (peak RSS{', ' if extra_env else ''}"
        f"{' '.join(f'{k}={v}' for k, v in extra_env.items())})")
    run = timed(f"fit-train-{name}", [RECIPE, "train", recipe, *overrides], cwd=ROOT, env=ctx.env(**extra_env),
                logs=ctx.logs, rss=True, timeout=3600)
    measured = run.get("peak_rss_max_process_mb")
    if measured is None:
        raise Failed("/usr/bin/time is needed for the peak RSS of the trainer process")
    done = subprocess.run([RECIPE, "fit", recipe, *overrides, "--json", "--no-suggestions"], cwd=ROOT, env=ctx.env(),
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise Failed(f"recipe fit {recipe}: exit {done.returncode}: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    estimate_mb = report["memory"]["peak_gib"] * 1024
    return {"recipe": recipe, "overrides": overrides, "environment": extra_env, "measured_rss_mb": measured,
            "estimate_mb": round(estimate_mb, 1),
            "error": round((estimate_mb - measured) / measured, 3), "train_wall_s": run["wall_s"],
            "parts_gib": {p["name"]: p["gib"] for p in report["memory"]["parts"]},
            "peak_tree_pss_mb": run.get("peak_pss_tree_mb")}


def bench(ctx: Context) -> tuple[dict, dict]:
    ensure_tiny_model(ctx.env(), ctx.logs)
    cpu = {name: _cpu_case(ctx, name, *case) for name, case in CPU_CASES["quick" if ctx.quick else "full"].items()}
    rows = _published(ctx)
    figures, counts = summarize(rows)
    for name, case in cpu.items():
        figures[f"fit_cpu_{name}_error"] = case["error"]
    print(table(rows), flush=True)
    for name, case in cpu.items():
        print(f"cpu {name}: {case['recipe']} measured {case['measured_rss_mb']:.0f} MB RSS, estimate "
              f"{case['estimate_mb']:.0f} MB ({case['error']:+.0%})", flush=True)
    goals = {"every published verdict reproduced": {"value": figures["fit_published_verdicts_agree"], "goal": "1.0",
                                                    "met": figures["fit_published_verdicts_agree"] == 1.0},
             "peaks within 25%": {"value": figures["fit_published_within_25pct"], "goal": "1.0",
                                  "met": figures["fit_published_within_25pct"] == 1.0}}
    return figures, {"cpu": cpu, "published": rows, "counts": counts, "goals": goals,
                     "published_file": str(PUBLISHED.relative_to(ROOT))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="estimate the published rows (the fit phase's worker)")
    parser.add_argument("--published", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    worker(args.published, args.quick)
    sys.exit(0)
