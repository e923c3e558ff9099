"""`recipe fit`: one typed report (memory per GPU, the verdict, changes that would make it fit, time and cost)
shared by the CLI's text, its --json and `recipe plan`."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from runner.core import paths
from runner.core.contracts import Record
from runner.core.errors import UserError
from runner.estimate import data_size, memory, meta, model_config, throughput
from runner.estimate.memory import MemoryEstimate, Setup
from runner.recipe import gpus, loading
from runner.recipe.loading import Loaded
from runner.recipe.schema import LoraSpec, Recipe

CPU_NOTE = "host memory of this machine (a CPU profile trains in RAM)"


class Device(Record):
    name: str  # a GPU table name, or "cpu"
    memory_gib: float | None  # per GPU (or the host's RAM); None when the profile names no GPU model
    bf16_tflops: float | None = None
    note: str = ""


class Suggestion(Record):
    change: str
    overrides: list[str]
    peak_gib: float
    fits: bool


class Model(Record):
    base: str
    config_source: str
    params_total: int
    params_trainable: int
    activations_measured: str  # how the activation bytes were found


class FitReport(Record):
    recipe: str
    model: Model
    setup: Setup
    device: Device
    memory: MemoryEstimate
    fits: bool | None  # None when the device's memory is unknown
    verdict: Literal["fits", "does not fit", "unknown"]
    suggestions: list[Suggestion] = []
    time: throughput.TimeEstimate | None = None


def device_of(recipe: Recipe) -> Device:
    hw = recipe.hardware
    if hw.device == "cpu":
        import psutil

        return Device(name="cpu", memory_gib=round(psutil.virtual_memory().total / memory.GIB, 2), note=CPU_NOTE)
    gpu = gpus.get(hw.gpu_model)
    if gpu is None:
        return Device(name="unknown GPU", memory_gib=None, note="set hardware.gpu_model to a GPU of the table "
                      f"({', '.join(gpus.NAMES)}) to get a verdict")
    return Device(name=gpu.name, memory_gib=gpu.memory_gib, bf16_tflops=gpu.bf16_tflops, note=gpu.label)


def adapter_of(recipe: Recipe) -> LoraSpec | None:
    return recipe.method.adapter


def estimate_memory(config: model_config.ModelConfig, setup: Setup, adapter: LoraSpec | None,
                    trust_remote_code: bool = False) -> tuple[MemoryEstimate, meta.Architecture, int, meta.Activations]:
    """The memory estimate of one setup of one model (the bench describes published runs this way too)."""
    arch = meta.architecture(config, trust_remote_code)
    trainable = meta.lora_trainable(config, adapter, arch, trust_remote_code) if adapter else arch.params_total
    framework = setup.framework
    acts = meta.activations(config, arch, dtype=setup.precision, fused=setup.fused_attention, adapter=adapter,
                            adapter_fp32=framework.adapter_fp32 or setup.precision == "fp32",
                            frozen_keeps_input=framework.quantized_keeps_input and setup.method == "qlora",
                            trust_remote_code=trust_remote_code)
    return memory.estimate(setup, arch, acts, trainable), arch, trainable, acts


def _config(loaded: Loaded) -> model_config.ModelConfig:
    return model_config.find(loaded.recipe.model, loaded.root_of("model.base"), paths.display(loaded.path))


def _peak(loaded: Loaded) -> MemoryEstimate:
    recipe = loaded.recipe
    estimate, *_ = estimate_memory(_config(loaded), Setup.of(recipe), adapter_of(recipe),
                                   recipe.model.trust_remote_code)
    return estimate


def _try(path: Path, overrides: list[str], change: str, extra: list[str], limit: float | None) -> Suggestion | None:
    try:
        changed = loading.load(path, [*overrides, *extra])
    except UserError:
        return None  # not a valid recipe with this change (say, ZeRO-3 on one process): not a suggestion
    peak = _peak(changed).peak_gib
    return Suggestion(change=change, overrides=extra, peak_gib=peak, fits=limit is not None and peak <= limit)


def _keep_batch(recipe: Recipe, micro: int, world: int) -> list[str] | None:
    """Overrides that keep the global batch with another micro batch or world size (None when it cannot)."""
    if recipe.global_batch % (micro * world):
        return None
    extra = [f"train.micro_batch_size={micro}"]
    if recipe.train.gradient_accumulation_steps is not None:
        extra.append(f"train.gradient_accumulation_steps={recipe.global_batch // (micro * world)}")
    return extra


def _candidates(recipe: Recipe) -> list[tuple[str, list[str]]]:
    """Single changes, cheapest first: gradient checkpointing, smaller micro batches, QLoRA, ZeRO-3, more GPUs."""
    hw, train = recipe.hardware, recipe.train
    found = []
    if not train.gradient_checkpointing:
        found.append(("gradient checkpointing", ["train.gradient_checkpointing=true"]))
    micro = train.micro_batch_size // 2
    while micro >= 1:
        extra = _keep_batch(recipe, micro, hw.world_size)
        if extra:
            found.append((f"micro batch {micro} (global batch {recipe.global_batch} kept by accumulation)", extra))
        micro //= 2
    if hw.device == "cuda":
        if recipe.method.weights != "qlora":
            key = "method.kind" if recipe.method.preference is None else "method.tuning"
            found.append(("QLoRA: the frozen base in 4-bit", [f"{key}=qlora"]))
        if hw.world_size > 1 and hw.deepspeed not in ("zero3", "zero3-offload"):
            found.append(("DeepSpeed ZeRO-3 (shards weights, gradients and optimizer states)",
                          ["hardware.deepspeed=zero3"]))
        if hw.deepspeed != "zero3-offload":
            found.append(("DeepSpeed ZeRO-3 with CPU offload", ["hardware.deepspeed=zero3-offload"]))
        for gpus_per_node, nodes in ((2, 1), (4, 1), (8, 1), (8, 2), (8, 4)):
            if gpus_per_node * nodes > hw.world_size:
                extra = [f"hardware.gpus={gpus_per_node}", f"hardware.nodes={nodes}", "hardware.deepspeed=zero3"]
                if recipe.global_batch % (train.micro_batch_size * gpus_per_node * nodes) == 0:
                    found.append((f"{gpus_per_node * nodes} GPUs with ZeRO-3", extra))
    return found


def suggestions(loaded: Loaded, overrides: list[str], current: float, limit: float | None) -> list[Suggestion]:
    """Changes that make the recipe fit, each re-estimated on the changed recipe; when no single change fits,
    the cheapest combination that does. Only changes that lower the peak are kept."""
    tried = [s for change, extra in _candidates(loaded.recipe)
             if (s := _try(loaded.path, overrides, change, extra, limit)) is not None and s.peak_gib < current]
    best: dict[str, Suggestion] = {}
    for s in tried:  # one micro batch and one GPU count: the largest that fits (else the lowest peak)
        kind = "micro" if s.change.startswith("micro") else "gpus" if "GPUs" in s.change else s.change
        if kind not in best or (s.fits and not best[kind].fits) or (not best[kind].fits and s.peak_gib <
                                                                    best[kind].peak_gib):
            best[kind] = s
    found = sorted(best.values(), key=lambda s: (not s.fits, s.peak_gib))
    if limit is not None and not any(s.fits for s in found) and found:
        combined, names = [], []
        for s in sorted(found, key=lambda s: s.peak_gib):
            combined, names = combined + s.overrides, [*names, s.change]
            merged = _try(loaded.path, overrides, " + ".join(names), combined, limit)
            if merged is not None and merged.fits:
                found.append(merged)
                break
    return found


def fit(loaded: Loaded, overrides: list[str] = (), *, suggest: bool = True, timing: bool = True,
        mfu: float | None = None, tokens: int | None = None) -> FitReport:
    """The whole report for a loaded recipe (overrides: those it was loaded with, kept for the suggestions;
    timing: add time and cost)."""
    recipe = loaded.recipe
    config = _config(loaded)
    setup = Setup.of(recipe)
    estimate, arch, trainable, acts = estimate_memory(config, setup, adapter_of(recipe),
                                                      recipe.model.trust_remote_code)
    device = device_of(recipe)
    fits = None if device.memory_gib is None else estimate.peak_gib <= device.memory_gib
    found = suggestions(loaded, list(overrides), estimate.peak_gib, device.memory_gib) if suggest and fits is False \
        else []
    time = None
    if timing:
        data = data_size.measure(loaded) if tokens is None else data_size.DataSize(
            tokens=tokens, source=f"--tokens {tokens} (tokens per epoch)")
        gpu = gpus.get(recipe.hardware.gpu_model) if setup.device == "cuda" else None
        rate = throughput.measured_rate(recipe) if gpu is None else None
        time = throughput.estimate(recipe, data, gpu, arch.params_total, trainable, mfu, rate)
    model = Model(base=recipe.model.base, config_source=config.source, params_total=arch.params_total,
                  params_trainable=trainable, activations_measured=acts.how)
    verdict = "unknown" if fits is None else "fits" if fits else "does not fit"
    return FitReport(recipe=recipe.name, model=model, setup=setup, device=device, memory=estimate, fits=fits,
                     verdict=verdict, suggestions=found, time=time)
