"""Training noise: the SQL demo (smollm2-135m-sql-chatml) trained once per seed with `recipe train --seeds 1,2,3` (one
seed group), each run evaluated, then `recipe compare` of the group's first two runs.

Figures: `seeds_exec_accuracy_sd` (standard deviation between the seeds of the fine-tuned model's execution
accuracy, in points of 1.0), `seeds_exec_accuracy_range` ([min, max]) and `seeds_final_loss_sd`. Details: each
seed's run, accuracy and losses, and the paired 95% item interval of seed 2 - seed 1 from compare.json, the figure
to hold the seed spread against (a paired interval over items does not cover training noise; the spread does).
The demo runs as `make demo` runs it (train.deterministic off: the noise a user meets). A quick run trains 2 seeds
for 1 step on 1 row and scores 2 items (no base model).
"""
from __future__ import annotations

import statistics
from pathlib import Path

from bench.common import DEMO_RECIPE, RECIPE, ROOT, Context, Failed, say, timed

METRIC = "sql_execution"
SIZES = {
    "quick": {"seeds": [1, 2], "train": ["train.max_steps=1", "train.logging_steps=1", "train.micro_batch_size=1",
                                         "data.split.val=0", "data.datasets.0.weight=0.1"],
              "eval": ["eval.max_items=2", "eval.max_new_tokens=16", "eval.compare_base=false"]},
    "full": {"seeds": [1, 2, 3], "train": [], "eval": []},  # exactly as `make demo` runs it, once per seed
}


def group_runs(folder: Path, group: str) -> list[Path]:
    """The runs of one seed group under runs/<recipe>/, in the order they were trained."""
    from runner.runs.manifest import Manifest

    return [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.is_symlink()
            and (p / "manifest.json").is_file() and Manifest.read(p / "manifest.json").group == group]


def run_figures(run: Path) -> dict:
    from runner.runs.eval_summary import EvalSummary
    from runner.runs.manifest import Manifest

    manifest, summary = Manifest.read(run / "manifest.json"), EvalSummary.read(run / "eval" / "summary.json")
    metrics = summary.versus_base()
    if METRIC not in metrics or manifest.train is None:
        raise Failed(f"{run}: no {METRIC} in eval/summary.json or no training summary")
    return {"run": run.name, "seed": manifest.seeds.train if manifest.seeds else None,
            "exec_accuracy": metrics[METRIC].value, "n_items": metrics[METRIC].n,
            "first_loss": manifest.train.first_loss, "final_loss": manifest.train.final_loss,
            "train_s": manifest.timings.get("train_s")}


def spread(values: list[float]) -> float | None:
    numbers = [v for v in values if v is not None]
    return round(statistics.stdev(numbers), 4) if len(numbers) >= 2 else None


def bench(ctx: Context) -> tuple[dict, dict]:
    from runner.decide.compare import Comparison

    sizes = SIZES["quick" if ctx.quick else "full"]
    env = ctx.env(RECIPE_RUNS_DIR=str(ctx.tmp / "seeds-runs"))
    seeds = ",".join(map(str, sizes["seeds"]))
    say(f"seeds: recipe train {DEMO_RECIPE} --seeds {seeds} {' '.join(sizes['train'])}".rstrip())
    timed("seeds-train", [RECIPE, "train", DEMO_RECIPE, "--seeds", seeds, *sizes["train"]], cwd=ROOT, env=env,
          logs=ctx.logs, timeout=3600 * 6)
    folder = Path(env["RECIPE_RUNS_DIR"]) / DEMO_RECIPE
    from runner.runs.manifest import Manifest

    group = Manifest.read(folder / "latest" / "manifest.json").group
    runs = group_runs(folder, group) if group else []
    if len(runs) != len(sizes["seeds"]):
        raise Failed(f"recipe train --seeds {seeds} left {len(runs)} runs in group {group!r}")
    for run in runs:
        say(f"seeds: recipe eval {DEMO_RECIPE} --run {run.name}")
        timed(f"seeds-eval-{run.name}", [RECIPE, "eval", DEMO_RECIPE, "--run", run.name, *sizes["eval"]], cwd=ROOT,
              env=env, logs=ctx.logs, timeout=3600 * 3)
    out = ctx.tmp / "seeds-compare"
    timed("seeds-compare", [RECIPE, "compare", f"{DEMO_RECIPE}@{runs[0].name}", f"{DEMO_RECIPE}@{runs[1].name}",
                            "-o", str(out)], cwd=ROOT, env=env, logs=ctx.logs, timeout=600)
    row = next((m for m in Comparison.read(out / "compare.json").metrics if m.name == METRIC), None)
    per_run = [run_figures(run) for run in runs]
    accuracy = [r["exec_accuracy"] for r in per_run]
    figures = {"seeds_exec_accuracy_sd": spread(accuracy),
               "seeds_exec_accuracy_range": [min(accuracy), max(accuracy)],
               "seeds_final_loss_sd": spread([r["final_loss"] for r in per_run])}
    paired = row.paired[1] if row is not None else None
    details = {"group": group, "seeds": sizes["seeds"], "train_overrides": sizes["train"],
               "eval_overrides": sizes["eval"], "runs": per_run,
               "item_interval_seed2_minus_seed1": paired.model_dump() if paired else None}
    return figures, details
