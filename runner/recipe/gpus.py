"""The GPU models a hardware profile can name (`hardware.gpu_model`): memory and peak dense bf16 tensor FLOP/s.

One table for the whole project: the recipe schema validates `gpu_model` against it, `recipe fit` reads the
memory and the peak from it, and a finished run's MFU (runner/train/summary.py) divides by the same peak.

Memory is what `nvidia-smi` reports as the card's total (MiB / 1024, in GiB): the CUDA context and the
allocator's fragmentation come out of it, and the estimator counts them in its margin. Peaks are the vendors'
dense (no 2:4 sparsity) bf16 tensor-core figures, with fp32 accumulation for the consumer cards.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuModel:
    name: str  # the table key, written in hardware profiles: <model>-<marketed memory>g
    label: str  # what nvidia-smi calls it, roughly
    memory_gib: float  # total memory as nvidia-smi reports it
    bf16_tflops: float  # peak dense bf16 tensor TFLOP/s per GPU
    aliases: tuple[str, ...]  # substrings of device names (torch.cuda.get_device_name) that mean this model
    mfu: float = 0.40  # model FLOPs utilisation assumed for time estimates (bf16 LoRA/full with flash attention)


def _gib(mib: int) -> float:
    return round(mib / 1024, 2)


TABLE: tuple[GpuModel, ...] = (
    GpuModel("a10g-24g", "NVIDIA A10G", _gib(23028), 70.0, ("A10G",), mfu=0.35),
    GpuModel("l4-24g", "NVIDIA L4", _gib(23034), 121.0, ("L4",), mfu=0.35),
    GpuModel("rtx3090-24g", "NVIDIA GeForce RTX 3090", _gib(24576), 71.0, ("3090",), mfu=0.35),
    GpuModel("rtx4090-24g", "NVIDIA GeForce RTX 4090", _gib(24564), 165.2, ("4090",), mfu=0.35),
    GpuModel("a40-48g", "NVIDIA A40", _gib(46068), 149.7, ("A40",), mfu=0.35),
    GpuModel("a6000-48g", "NVIDIA RTX A6000", _gib(49140), 154.8, ("A6000",), mfu=0.35),
    GpuModel("l40s-48g", "NVIDIA L40S", _gib(46068), 362.1, ("L40S",), mfu=0.35),
    GpuModel("a100-40g", "NVIDIA A100-SXM4-40GB", _gib(40960), 312.0, ("A100",)),
    GpuModel("a100-80g", "NVIDIA A100-SXM4-80GB", _gib(81920), 312.0, ("A100",)),
    GpuModel("h100-pcie-80g", "NVIDIA H100 PCIe", _gib(81559), 756.0, ("H100 PCIE", "H100-PCIE")),
    GpuModel("h100-80g", "NVIDIA H100 80GB HBM3", _gib(81559), 989.0, ("H100",)),
    GpuModel("h200-141g", "NVIDIA H200", _gib(143771), 989.0, ("H200",)),
)
BY_NAME = {gpu.name: gpu for gpu in TABLE}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def get(name: str | None) -> GpuModel | None:
    """The table entry for a gpu_model (a table name), or for a device name such as 'NVIDIA A100-SXM4-80GB'
    (older manifests recorded those); None when unknown."""
    if not name:
        return None
    if name in BY_NAME:
        return BY_NAME[name]
    upper = name.upper()
    memory = next((int(n) for n in re.findall(r"(\d+)\s*GB", upper)), None)
    for alias in sorted({a for gpu in TABLE for a in gpu.aliases}, key=len, reverse=True):  # 'L40S' before 'L4'
        if alias in upper:
            same = [gpu for gpu in TABLE if alias in gpu.aliases]
            sized = [gpu for gpu in same if memory and gpu.name.endswith(f"-{memory}g")]
            return (sized or same)[-1]  # the larger card when the memory is not named
    return None


def peak_tflops(name: str | None) -> float | None:
    """Peak dense bf16 TFLOP/s of one GPU of this model, or None when the model is not in the table."""
    gpu = get(name)
    return gpu.bf16_tflops if gpu else None
