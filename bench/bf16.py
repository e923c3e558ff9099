"""bf16 vs fp32 on CPU: the SQL demo (smollm2-135m-sql-chatml) trained and evaluated once in each precision,
same seed, same data, same steps; time per stage and execution accuracy side by side.

Figures: `bf16_exec_accuracy_delta` (bf16 - fp32 execution accuracy of the fine-tuned model, in points of 1.0,
with the paired bootstrap 95% interval over the same held-out items in details); `bf16_train_s_ratio_demo` and
`bf16_eval_s_ratio_demo` (fp32 / bf16 train_s and eval_s of those two runs); and the fair speed figures on a
shared machine, where two long runs meet different loads, measured back to back (fp32, bf16, bf16, fp32):
`bf16_train_speedup`, the ratio of steady training tokens/s of short runs, and `bf16_eval_speedup`, fp32 / bf16
seconds to evaluate the two fine-tuned models again. `bf16_vs_fp32` holds each precision's stage seconds,
accuracy and tokens/s; details the precision the trainer really used (the plugin's record: autocast dtype,
parameter dtypes). The rule for making bf16 the CPU profile's default: `bf16_accuracy_holds`, bf16 at least as
good as fp32, or at most 2 points below with the paired interval of the difference containing 0.

The data is prepared once first (`recipe prepare`, timed as `prepare_cold_s`: the GGUF conversion and the data
cache), so each run's own prepare_s is a cache hit, equal for both. Runs go to their own runs folder inside the
benchmark's temporary folder. A quick run trains 1 step of 1 row and scores 2 items (no base model), and times
one fp32 and one bf16 run of 2 steps and one evaluation of each.
"""
from __future__ import annotations

from pathlib import Path

from bench.common import DEMO_RECIPE, RECIPE, ROOT, Context, Failed, say, timed

PRECISIONS = ("fp32", "bf16")
HOLD_POINTS = 0.02  # bf16 may score at most this much (2 points) below fp32
METRIC = "sql_execution"
SIZES = {
    "quick": {"train": ["train.max_steps=1", "train.micro_batch_size=1", "data.split.val=0",
                        "data.datasets.0.weight=0.1"],
              "eval": ["eval.max_items=2", "eval.max_new_tokens=16", "eval.compare_base=false"],
              "speed": ["train.max_steps=2", "train.logging_steps=1", "train.micro_batch_size=1", "data.split.val=0",
                        "data.datasets.0.weight=0.1"], "speed_order": ["fp32", "bf16"]},
    "full": {"train": [], "eval": [],  # exactly as `make demo` runs
             "speed": ["train.max_steps=12", "train.logging_steps=1", "data.split.val=0"],
             "speed_order": ["fp32", "bf16", "bf16", "fp32"]},
}


def _scores(run: Path) -> dict[int, float]:
    """Per held-out item (doc_id): the fine-tuned model's execution accuracy (0/1)."""
    from runner.core import jsonl
    from runner.evaluate.scoring import GENERATE_TASK

    rows = jsonl.read(run / "eval" / f"samples-finetuned-{GENERATE_TASK}.jsonl").rows
    return {r["doc_id"]: float(r["scores"][METRIC]) for r in rows}


def one_precision(ctx: Context, precision: str, env: dict, sizes: dict) -> dict:
    """Train then evaluate the demo in one precision; its stage times (runner's and outside), accuracy, record."""
    override = f"hardware.precision={precision}"
    say(f"bf16: recipe train {DEMO_RECIPE} {override} {' '.join(sizes['train'])}".rstrip())
    train = timed(f"bf16-train-{precision}", [RECIPE, "train", DEMO_RECIPE, override, *sizes["train"]], cwd=ROOT,
                  env=env, logs=ctx.logs, timeout=3600 * 3)
    run = (Path(env["RECIPE_RUNS_DIR"]) / DEMO_RECIPE / "latest").resolve()
    say(f"bf16: recipe eval {DEMO_RECIPE} --run {run.name}")
    evaluate = timed(f"bf16-eval-{precision}", [RECIPE, "eval", DEMO_RECIPE, "--run", run.name, override,
                                               *sizes["eval"]], cwd=ROOT, env=env, logs=ctx.logs, timeout=3600 * 3)
    return run_record(run, train, evaluate)


def run_record(run: Path, train: dict | None, evaluate: dict | None) -> dict:
    """A finished run's figures, read through its contracts; train/evaluate: the outside timings, when measured."""
    from runner.runs.eval_summary import EvalSummary
    from runner.runs.manifest import Manifest

    manifest = Manifest.read(run / "manifest.json")
    metrics = EvalSummary.read(run / "eval" / "summary.json").versus_base()
    if manifest.train is None or METRIC not in metrics:
        raise Failed(f"{run}: no training summary or no {METRIC} in eval/summary.json")
    metric, seen = metrics[METRIC], manifest.train.precision
    return {
        "run": run.name, "seconds": {k: v for k, v in manifest.timings.items()},
        "outside": {"train_wall_s": train["wall_s"], "train_cpu_s": train["cpu_s"],
                    "eval_wall_s": evaluate["wall_s"], "eval_cpu_s": evaluate["cpu_s"]} if train and evaluate else None,
        "exec_accuracy": metric.value, "exec_accuracy_base": metric.reference, "n_items": metric.n,
        "tokens_per_s": manifest.train.tokens_per_s, "final_loss": manifest.train.final_loss,
        "steps": manifest.train.steps,
        "precision_seen": seen.model_dump() if seen else None,
        "_scores": _scores(run),
    }


def compare(fp32: dict, bf16: dict) -> dict:
    """bf16 - fp32 on the items both scored: delta, paired bootstrap 95% interval, and the rule's verdict."""
    from runner.evaluate import stats

    items = sorted(set(fp32) & set(bf16))
    if not items:
        raise Failed("the fp32 and bf16 runs scored no common held-out item")
    paired = stats.paired_bootstrap([fp32[i] for i in items], [bf16[i] for i in items], iters=2000, seed=0)
    lo, hi = paired["ci95"]
    holds = paired["delta"] >= 0 or (paired["delta"] >= -HOLD_POINTS and lo <= 0 <= hi)
    return {"n": len(items), "delta": round(paired["delta"], 4), "ci95": [round(lo, 4), round(hi, 4)],
            "differing_items": sum(fp32[i] != bf16[i] for i in items), "holds": bool(holds),
            "rule": f"bf16 - fp32 >= -{HOLD_POINTS} and the paired 95% interval contains 0 (or bf16 >= fp32)"}


def speed_pairs(ctx: Context, env: dict, sizes: dict, runs: dict[str, str]) -> dict:
    """Speed measured back to back in the order fp32, bf16, bf16, fp32 (quick: fp32, bf16), so both precisions meet
    the same machine load: short trainings (steady tokens/s, from the second logged step on), then evaluations of
    the two accuracy runs (`runs`: precision -> run id; fine-tuned model only: the runner's eval_finetuned_s)."""
    from bench.gpu_run import steady_tokens_per_s
    from runner.runs.manifest import Manifest

    order, folder = sizes["speed_order"], Path(env["RECIPE_RUNS_DIR"]) / DEMO_RECIPE
    rates: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    evals: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for index, precision in enumerate(order):
        say(f"bf16: speed {index + 1}/{len(order)}: train {precision}")
        timed(f"bf16-speed-{index}-{precision}", [RECIPE, "train", DEMO_RECIPE, f"hardware.precision={precision}",
                                                  *sizes["speed"]], cwd=ROOT, env=env, logs=ctx.logs, timeout=3600)
        rate = steady_tokens_per_s((folder / "latest").resolve())
        if rate is None:
            raise Failed(f"bf16 speed run {index} ({precision}) logged fewer than two steps")
        rates[precision].append(rate)
    for index, precision in enumerate(order):
        say(f"bf16: speed {index + 1}/{len(order)}: eval {precision}")
        timed(f"bf16-speed-eval-{index}-{precision}", [RECIPE, "eval", DEMO_RECIPE, "--run", runs[precision],
                                                       f"hardware.precision={precision}", *sizes["eval"],
                                                       "eval.compare_base=false"], cwd=ROOT, env=env, logs=ctx.logs,
              timeout=3600)
        evals[precision].append(Manifest.read(folder / runs[precision] / "manifest.json").timings["eval_finetuned_s"])
    mean = {p: (sum(rates[p]) / len(rates[p]), sum(evals[p]) / len(evals[p])) for p in PRECISIONS}
    return {"order": order, "overrides": sizes["speed"], "tokens_per_s": rates, "eval_finetuned_s": evals,
            "train_ratio": round(mean["bf16"][0] / mean["fp32"][0], 3),
            "eval_ratio": round(mean["fp32"][1] / mean["bf16"][1], 3)}


def figures_of(runs: dict, comparison: dict, speed: dict) -> dict:
    a, b = runs["fp32"]["seconds"], runs["bf16"]["seconds"]
    return {
        "bf16_train_speedup": speed["train_ratio"],
        "bf16_eval_speedup": speed["eval_ratio"],
        "bf16_train_s_ratio_demo": round(a["train_s"] / b["train_s"], 3),
        "bf16_eval_s_ratio_demo": round(a["eval_s"] / b["eval_s"], 3),
        "bf16_exec_accuracy_delta": comparison["delta"],
        "bf16_accuracy_holds": comparison["holds"],
        "bf16_vs_fp32": {p: {"prepare_s": r["seconds"].get("prepare_s"), "train_s": r["seconds"]["train_s"],
                             "eval_s": r["seconds"]["eval_s"], "exec_accuracy": r["exec_accuracy"],
                             "tokens_per_s": r["tokens_per_s"]} for p, r in runs.items()},
    }


def bench(ctx: Context) -> tuple[dict, dict]:
    from runner.core import cpufeatures

    missing = cpufeatures.missing_bf16()
    if missing:
        raise Failed(f"this CPU lacks {missing}: bf16 training is refused here, nothing to compare")
    sizes = SIZES["quick" if ctx.quick else "full"]
    env = ctx.env(RECIPE_RUNS_DIR=str(ctx.tmp / "bf16-runs"))
    data_overrides = [o for o in sizes["train"] if o.startswith("data.")]
    cold = timed("bf16-prepare", [RECIPE, "prepare", DEMO_RECIPE, *data_overrides], cwd=ROOT, env=env,
                 logs=ctx.logs, timeout=1800)
    runs = {p: one_precision(ctx, p, env, sizes) for p in PRECISIONS}
    comparison = compare(runs["fp32"].pop("_scores"), runs["bf16"].pop("_scores"))
    speed = speed_pairs(ctx, env, sizes, {p: r["run"] for p, r in runs.items()})
    details = {"cpu": cpufeatures.cpu_name(), "cpu_bf16_features": cpufeatures.bf16_features(),
               "prepare_cold_s": cold["wall_s"], "train_overrides": sizes["train"], "eval_overrides": sizes["eval"],
               "runs": runs, "comparison": comparison, "speed": speed}
    return figures_of(runs, comparison, speed), details
