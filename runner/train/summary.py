"""What a training run achieved, from the files its trainer wrote: metrics.jsonl and ranks/ (the plugin's).

Throughput counts FLOPs per token that account for frozen weights: the forward pass costs 2 N (N total
parameters), the backward pass 2 N to carry gradients through every layer's activations plus 2 N_trainable
for the weight gradients; a full fine-tune is the usual 6 N, LoRA about 4 N.
"""
from __future__ import annotations

import json

from runner.core import jsonl
from runner.recipe import gpus
from runner.runs.manifest import Manifest, RankEngine, RankSummary, TrainSummary
from runner.runs.records import MetricsRow, read_rows
from runner.runs.rundir import RunDir


def peak_tflops(gpu_model: str | None) -> float | None:
    """Peak dense bf16 TFLOP/s of one GPU, from the one GPU table (runner/recipe/gpus.py)."""
    return gpus.peak_tflops(gpu_model)


def _figure(value: float) -> float:
    return float(f"{value:.4g}")  # four significant digits, whatever the scale


def flops_per_token(params_total: int, params_trainable: int) -> float:
    return 4.0 * params_total + 2.0 * params_trainable


def padding_waste(manifest: Manifest, steps: int, tokens_seen: int) -> float | None:
    """Share of the tokens the trainer processed that were padding (estimated, not packed runs):
    1 - (rows consumed x mean real tokens per row) / tokens seen, where rows consumed = steps x global batch."""
    stats = manifest.data.stats.get("train") if manifest.data else None
    mean = stats.tokens_per_row.mean if stats and stats.tokens_per_row else None
    batch = manifest.batch
    if batch is None or batch.packing or not (mean and tokens_seen):  # a packed row holds many
        return None
    return round(max(0.0, 1 - steps * batch.global_ * mean / tokens_seen), 4)


def _ranks(run: RunDir) -> dict[str, RankSummary]:
    ranks = {}
    for rank_file in sorted(run.ranks_dir.glob("rank-*.jsonl")):
        lines = jsonl.read(rank_file, strict=False).rows
        engine_file = rank_file.with_suffix(".engine.json")
        engine = RankEngine.model_validate(json.loads(engine_file.read_text())) if engine_file.exists() else None
        if lines:
            ranks[rank_file.stem] = RankSummary(steps=len(lines), last_step=lines[-1]["step"],
                                                world_size=lines[-1]["world_size"], engine=engine)
    return ranks


def summarize(run: RunDir, manifest: Manifest) -> TrainSummary:
    """Steps, tokens, throughput, FLOP/s, MFU and final losses of a run."""
    if not run.metrics_path.is_file():
        return TrainSummary()
    records, _ = read_rows(run.metrics_path, MetricsRow, strict=False)  # a line cut off mid-write is skipped
    losses = [r.loss for r in records if r.loss is not None]
    evals = [r.eval_loss for r in records if r.eval_loss is not None]
    tokens = max((r.tokens_seen or 0 for r in records), default=0)
    elapsed = max((r.elapsed_s or 0 for r in records), default=0)
    steps = max((r.step for r in records if r.step is not None), default=0)
    ranks = _ranks(run)
    summary = TrainSummary(
        steps=steps, tokens=tokens, ranks=ranks, padding_waste=padding_waste(manifest, steps, tokens),
        tokens_per_s=round(tokens / elapsed, 2) if elapsed else None,
        first_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
        final_eval_loss=evals[-1] if evals else None, logged_steps=len(losses))
    summary.precision = next((r.engine.precision for r in ranks.values() if r.engine and r.engine.precision), None)
    peaks = [r.engine.peak_gpu_memory_gib for r in ranks.values() if r.engine and r.engine.peak_gpu_memory_gib]
    summary.peak_gpu_memory_gib = max(peaks) if peaks else None
    engine = next((r.engine for r in ranks.values() if r.engine and r.engine.params_total), None)
    if engine is not None:
        summary.params_total, summary.params_trainable = engine.params_total, engine.params_trainable
        summary.flops_per_token = flops_per_token(engine.params_total, engine.params_trainable or 0)
        if summary.tokens_per_s:
            summary.tflops = _figure(summary.flops_per_token * summary.tokens_per_s / 1e12)
            peak = peak_tflops(manifest.hardware.gpu_model if manifest.hardware else None)
            world = manifest.batch.world_size if manifest.batch else 1
            if peak and manifest.hardware and manifest.hardware.device == "cuda":
                summary.peak_tflops = peak
                summary.mfu = _figure(summary.flops_per_token * summary.tokens_per_s / 1e12 / (peak * world))
    return summary
