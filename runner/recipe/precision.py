"""What a recipe's precision means on this machine: `precision: auto` decided (bf16 on a GPU, on a CPU with native
bf16 instructions, else fp32), and bf16 on a CPU without them stopped with the fix (runner.core.cpufeatures reads
the CPU). Decided where the work runs: `recipe train` (before anything starts), evaluation and generation."""
from __future__ import annotations

from runner.core import cpufeatures
from runner.core.errors import Problem, UserError


def require_bf16(recipe, where: str) -> None:
    """Stop a CPU recipe that trains in bf16 on a CPU without bf16 instructions (exit 2, with the fix)."""
    hardware = recipe.hardware
    if hardware.device != "cpu" or hardware.precision != "bf16":
        return
    missing = cpufeatures.missing_bf16()
    if missing:
        raise UserError(Problem(where, "hardware.precision", f"bf16 on cpu needs {missing}, which this machine's "
                                f"CPU ({cpufeatures.cpu_name()}) does not have; train in fp32 "
                                "instead: add the override hardware.precision=fp32 (or set precision: fp32 in the "
                                "recipe's hardware section)"))


def effective_precision(hardware, target: str = "local", missing: str | None | bool = False) -> str:
    """The precision `precision: auto` means on this machine: bf16 on a GPU; on a CPU bf16 where it has native bf16
    instructions and trains without DeepSpeed, else fp32. A SLURM job runs on nodes this machine cannot inspect, so
    auto is fp32 there. Any other precision is itself. `missing` stands in for missing_bf16() (tests)."""
    if hardware.precision != "auto":
        return hardware.precision
    if hardware.device == "cuda":
        return "bf16"
    if hardware.deepspeed != "none" or target == "slurm":
        return "fp32"
    return "bf16" if (cpufeatures.missing_bf16() if missing is False else missing) is None else "fp32"


def concrete(recipe, target: str = "local"):
    """The recipe with `precision: auto` replaced by what it means on this machine (unchanged otherwise)."""
    precision = effective_precision(recipe.hardware, target)
    if precision == recipe.hardware.precision:
        return recipe
    return recipe.model_copy(update={"hardware": recipe.hardware.model_copy(update={"precision": precision})})
