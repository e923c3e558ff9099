"""Figure 4: eval_batch_speedup. lm-eval generation throughput through runner.evaluate, the demo model at its eval
batch size (16) / batch size 1, same items, alternated 1,16,16,1; plus tiny-cpu's (eval_batch_speedup_tiny).
The measurement runs in a worker subprocess (`--worker eval`)."""
from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

from bench import demo
from bench.common import (
    DEMO_RECIPE,
    RECIPE,
    ROOT,
    Context,
    Failed,
    marker,
    read_json,
    say,
    spread,
    timed,
    worker_command,
)


class GenerationClock:
    """Wraps lm_eval's HFLM.generate_until to time generation alone (not model loading, tasks or metrics)."""

    def __init__(self):
        import lm_eval.models.huggingface as hf

        self.reset()
        original = hf.HFLM.generate_until
        clock = self

        def generate_until(self, requests, disable_tqdm: bool = False):
            started, cpu = time.perf_counter(), time.process_time()
            out = original(self, requests, disable_tqdm)
            clock.s += time.perf_counter() - started
            clock.cpu += time.process_time() - cpu
            clock.items += len(requests)
            clock.outputs += list(out)
            return out

        hf.HFLM.generate_until = generate_until

    def reset(self) -> None:
        self.s, self.cpu, self.items, self.outputs = 0.0, 0.0, 0, []


def _tokenizer(run_path: Path):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(read_json(run_path / "manifest.json")["base_model_dir"])
    except Exception:  # noqa: BLE001 - token counts are a side figure
        return None


def worker(run_path: str, recipe_name: str, order: list[int], max_items: int) -> dict:
    """Runs in the subprocess: one evaluate() per batch size in order, after an untimed warm-up pass."""
    from runner.evaluate import run_suite
    from runner.recipe import loading
    from runner.runs import rundir

    clock = GenerationClock()
    run = rundir.RunDir(Path(run_path))
    tokenizer = _tokenizer(Path(run_path))
    passes, warm = [], None
    # an untimed warm-up pass first (batch size 1, 2 items): first-call costs (lazy imports, kernel set-up)
    # would otherwise land on whichever batch size runs first
    for number, batch_size in enumerate([0, *order]):
        warmup = number == 0
        loaded = loading.load(recipe_name, [f"eval.batch_size={batch_size or 1}",
                                            f"eval.max_items={2 if warmup else max_items}",
                                            "eval.compare_base=false"])
        clock.reset()
        started = time.perf_counter()
        run_suite.evaluate(run, loaded.recipe)
        total = time.perf_counter() - started
        new_tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in clock.outputs) \
            if tokenizer else None
        record = {"batch_size": batch_size or 1, "generate_s": round(clock.s, 4),
                  "generate_cpu_s": round(clock.cpu, 4), "items": clock.items, "new_tokens": new_tokens,
                  "evaluate_total_s": round(total, 3)}
        if warmup:
            warm = record
        else:
            passes.append(record)
    return {"passes": passes, "warmup_pass": warm, "max_items": max_items, "run": run_path, "recipe": recipe_name}


def measure(ctx: Context, run: Path, recipe_name: str, order: list[int], items: int) -> dict:
    """Generation seconds per batch size over the same held-out items (one subprocess, passes alternated)."""
    say(f"eval: {recipe_name}: lm-eval generation at batch sizes {order} on the same {items} items")
    result = timed(f"eval-{recipe_name}", worker_command("eval", "--run", str(run), "--recipe", recipe_name,
                                                         "--order", ",".join(map(str, order)),
                                                         "--max-items", str(items)),
                   cwd=ROOT, env=ctx.env(), logs=ctx.logs)
    return summarise(marker(result["text"], "BENCH_EVAL"))


def summarise(details: dict) -> dict:
    by_size: dict[int, list[dict]] = {}
    for p in details["passes"]:
        by_size.setdefault(p["batch_size"], []).append(p)
    if not all(by_size[b][0]["items"] for b in by_size) or len({by_size[b][0]["items"] for b in by_size}) != 1:
        raise Failed(f"batch sizes generated different item counts: {details['passes']}")
    batched, items = max(by_size), by_size[1][0]["items"]
    per = {b: {"generate_s": spread([p["generate_s"] for p in ps]),
               "generate_cpu_s": spread([p["generate_cpu_s"] for p in ps]),
               "items_per_s": round(items / statistics.fmean(p["generate_s"] for p in ps), 3),
               "new_tokens": [p["new_tokens"] for p in ps]} for b, ps in sorted(by_size.items())}
    tokens = {b: statistics.fmean(p["new_tokens"] for p in by_size[b]) if by_size[b][0]["new_tokens"] else None
              for b in by_size}
    seconds = {b: per[b]["generate_s"]["mean"] for b in per}
    return details | {
        "items": items, "batched_size": batched, "by_batch_size": {str(b): v for b, v in per.items()},
        "speedup": round(seconds[1] / seconds[batched], 3),
        "speedup_cpu": round(per[1]["generate_cpu_s"]["mean"] / per[batched]["generate_cpu_s"]["mean"], 3),
        "token_throughput_speedup": round((tokens[batched] / seconds[batched]) / (tokens[1] / seconds[1]), 3)
        if tokens[1] and tokens[batched] else None}


def _tiny_run(ctx: Context) -> Path:
    """The tiny-cpu run figure 1 trained, or one trained here."""
    if ctx.tiny_run is None:
        say("eval: training a tiny-cpu run to evaluate")
        timed("eval-train", [RECIPE, "train", "tiny-cpu", *ctx.size["train_overrides"]], cwd=ROOT, env=ctx.env(),
              logs=ctx.logs)
        ctx.tiny_run = (ctx.tmp / "runs" / "tiny-cpu" / "latest").resolve()
    return ctx.tiny_run


def _demo_copy(ctx: Context) -> tuple[Path, dict]:
    """A copy of the demo run (its adapter included), so evaluating it writes into neither runs/ nor the run
    figure 5 reads."""
    found = demo.demo_run(ctx)
    target = ctx.tmp / "demo-run-copy"
    if not target.exists():
        shutil.copytree(found["path"], target, symlinks=True,
                        ignore=shutil.ignore_patterns("eval", "plots", "report.md"))
    return target, {k: v for k, v in found.items() if k != "path"}


def bench(ctx: Context) -> tuple[dict, dict]:
    size = ctx.size
    details = {"tiny-cpu": measure(ctx, _tiny_run(ctx), "tiny-cpu", size["eval_order"], size["eval_items"])}
    # the headline is the demo model's (a real pretrained model); quick runs, which train nothing big, use tiny's
    figures = {"eval_batch_speedup_tiny": details["tiny-cpu"]["speedup"],
               "eval_batch_speedup": details["tiny-cpu"]["speedup"]}
    details["headline_recipe"] = "tiny-cpu"
    if size["eval_demo_items"]:
        run, origin = _demo_copy(ctx)
        from runner.recipe import loading

        batched = loading.load(DEMO_RECIPE).recipe.eval.batch_size  # what the demo evaluates with
        details[DEMO_RECIPE] = measure(ctx, run, DEMO_RECIPE, [1, batched, batched, 1], size["eval_demo_items"])
        details[DEMO_RECIPE]["demo_run"] = origin
        figures["eval_batch_speedup"] = details[DEMO_RECIPE]["speedup"]
        details["headline_recipe"] = DEMO_RECIPE
    return figures, details
