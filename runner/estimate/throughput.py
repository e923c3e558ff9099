"""Steps, wall time and cost of a recipe on its hardware profile: pure arithmetic with its assumptions spelled out.

time = steps x tokens per step x FLOPs per token / (GPUs x peak FLOP/s x MFU), with FLOPs per token counted as
a finished run counts them (runner/train/summary.py: 4 N + 2 N_trainable, so frozen weights in LoRA and QLoRA
cost no weight gradients), the peak from the GPU table and MFU an assumption per GPU model (--mfu overrides).
"""
from __future__ import annotations

import math

from runner.core.contracts import Record
from runner.estimate.data_size import DataSize
from runner.recipe.gpus import GpuModel
from runner.recipe.schema import Recipe
from runner.train.summary import flops_per_token

QLORA_MFU_FACTOR = 0.8  # 4-bit weights are dequantized for every matmul, forward and backward
PADDING = 1.25  # unpacked batches are padded to their longest row: taken as 1.25 x the mean when p90 is unknown


class TimeEstimate(Record):
    tokens_per_epoch: int | None = None
    rows_per_epoch: int | None = None
    data_source: str
    steps: int | None = None
    tokens_per_step: float | None = None  # processed, padding included
    flops_per_token: float
    peak_tflops: float | None = None  # per GPU
    mfu: float | None = None
    world_size: int
    hours: float | None = None
    gpu_hours: float | None = None
    price_per_gpu_hour: float | None = None
    cost_usd: float | None = None
    assumptions: list[str] = []


def _figure(value: float) -> float:
    return float(f"{value:.4g}")  # four significant digits, whatever the scale


def _steps(recipe: Recipe, data: DataSize) -> tuple[int | None, str]:
    train = recipe.train
    if train.max_steps:
        return train.max_steps, f"train.max_steps = {train.max_steps}"
    if data.rows is None and data.tokens is None:
        return None, "steps unknown: the data size is unknown"
    packed = recipe.data.packing or data.rows is None  # rows unknown (--tokens): counted as full sequences
    sequences = math.ceil((data.tokens or 0) / recipe.data.max_seq_len) if packed else data.rows or 0
    steps = math.ceil((train.epochs or 1) * sequences / recipe.global_batch)
    what = f"{sequences:,} sequences of {recipe.data.max_seq_len} tokens" if packed else f"{sequences:,} rows"
    return steps, f"{train.epochs:g} epoch(s) x {what} / global batch {recipe.global_batch} = {steps:,} steps"


def _tokens_per_step(recipe: Recipe, data: DataSize) -> tuple[float | None, str]:
    batch, length = recipe.global_batch, recipe.data.max_seq_len
    if recipe.data.packing or (data.tokens_per_row is None and data.tokens is not None):
        return float(batch * length), f"{batch} x {length} tokens per step" + (
            " (packed)" if recipe.data.packing else " (rows unknown: full sequences assumed)")
    if data.tokens_per_row is None:
        return None, "tokens per row unknown"
    padded = data.tokens_per_row_p90 or data.tokens_per_row * PADDING
    return batch * padded, (f"not packed: {batch} rows per step, each padded to about {padded:.0f} tokens "
                            "(the 90th percentile of row lengths: the longest row of a batch sets its length)")


def measured_rate(recipe: Recipe) -> tuple[float, str] | None:
    """Tokens per second of this recipe's latest finished run, when there is one (a CPU has no FLOP/s peak)."""
    from runner.core.errors import UserError
    from runner.runs import rundir

    try:
        run = rundir.find(recipe.name)
        summary = run.manifest().train
    except (UserError, OSError):
        return None
    if summary is None or not summary.tokens_per_s:
        return None
    return summary.tokens_per_s, run.run_id


def _from_rate(result: TimeEstimate, notes: list[str], rate: tuple[float, str] | None) -> TimeEstimate:
    if rate is None or result.steps is None or result.tokens_per_step is None:
        notes.append("time: no peak FLOP/s for this device (the GPU table has GPUs only) and no finished run of this "
                     "recipe to take a measured rate from; train a few steps (train.max_steps=5) and ask again")
        return result.model_copy(update={"assumptions": notes})
    tokens_per_s, run_id = rate
    hours = result.steps * result.tokens_per_step / tokens_per_s / 3600
    notes.append(f"time: {tokens_per_s:,.0f} tokens/s measured in run {run_id} of this recipe (no FLOP/s peak "
                 "for a CPU)")
    return result.model_copy(update={"hours": _figure(hours), "gpu_hours": None, "assumptions": notes})


def estimate(recipe: Recipe, data: DataSize, gpu: GpuModel | None, params_total: int, trainable: int,
             mfu: float | None = None, rate: tuple[float, str] | None = None) -> TimeEstimate:
    """Steps, hours and cost (see the module docstring); None where an input is unknown, with the reason. Without
    a GPU, `rate` (tokens/s measured in an earlier run, and its id) gives the time."""
    world = recipe.hardware.world_size
    steps, steps_note = _steps(recipe, data)
    per_step, per_step_note = _tokens_per_step(recipe, data)
    per_token = flops_per_token(params_total, trainable)
    notes = [f"data: {data.source}", f"steps: {steps_note}", f"tokens per step: {per_step_note}",
             f"FLOPs per token: 4 x {params_total:,} + 2 x {trainable:,} trainable = {per_token:.3g}"]
    result = TimeEstimate(tokens_per_epoch=data.tokens, rows_per_epoch=data.rows, data_source=data.source,
                          steps=steps, tokens_per_step=per_step, flops_per_token=per_token, world_size=world,
                          price_per_gpu_hour=recipe.hardware.price_per_gpu_hour)
    if gpu is None:
        return _from_rate(result, notes, rate)
    if mfu is None:
        qlora = recipe.method.weights == "qlora"
        mfu = gpu.mfu * (QLORA_MFU_FACTOR if qlora else 1.0)
        notes.append(f"MFU {mfu:.2f}: assumed for {gpu.name} ({gpu.mfu:.2f} for bf16 training with flash attention"
                     + (f", x {QLORA_MFU_FACTOR} for QLoRA's dequantization" if qlora else "")
                     + "); --mfu sets another")
    else:
        notes.append(f"MFU {mfu:.2f}: given with --mfu")
    result = result.model_copy(update={"peak_tflops": gpu.bf16_tflops, "mfu": mfu})
    if steps is None or per_step is None:
        return result.model_copy(update={"assumptions": notes})
    seconds = steps * per_step * per_token / (world * gpu.bf16_tflops * 1e12 * mfu)
    hours = seconds / 3600
    cost = None
    if recipe.hardware.price_per_gpu_hour:
        cost = round(hours * world * recipe.hardware.price_per_gpu_hour, 2)
        notes.append(f"cost: {world} GPUs x {hours:.2f} h x ${recipe.hardware.price_per_gpu_hour:.2f} per GPU-hour "
                     "(hardware.price_per_gpu_hour); start-up, evaluation and checkpoints not counted")
    else:
        notes.append("cost: set hardware.price_per_gpu_hour in the hardware profile to get one")
    return result.model_copy(update={"hours": _figure(hours), "gpu_hours": _figure(hours * world),
                                     "cost_usd": cost, "assumptions": notes})
