"""The FitReport for people: the lines `recipe fit` prints and `recipe plan` repeats."""
from __future__ import annotations

from runner.estimate.fit import FitReport


def _billions(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def _method(report: FitReport) -> str:
    setup = report.setup
    method = {"full": "full fine-tune", "lora": "LoRA", "qlora": "QLoRA"}[setup.method]
    trainable = report.model.params_trainable
    shards = "" if setup.deepspeed == "none" else f", DeepSpeed {setup.deepspeed}"
    return (f"{method} ({trainable:,} trainable); micro batch {setup.micro_batch} x {setup.seq_len} tokens; "
            f"{setup.precision}; {setup.attention} attention; gradient checkpointing "
            f"{'on' if setup.gradient_checkpointing else 'off'}{shards}")


def memory_lines(report: FitReport) -> list[str]:
    memory, device, setup = report.memory, report.device, report.setup
    where = "per process (CPU)" if setup.device == "cpu" else "per GPU"
    phase = "backward pass" if memory.phase == "backward" else memory.phase
    lines = [f"memory {where}, estimated peak (during the {phase}):"]
    for part in memory.parts:
        lines.append(f"  {part.name:<21} {part.gib:8.2f} GiB  {part.note}".rstrip())
        if part.name == "activations" and memory.phase == "backward":
            other = ("without_checkpointing" if setup.gradient_checkpointing else "with_checkpointing")
            label = other.replace("_", " ")
            lines.append(f"  {'':<21} {'':>12}  ({label}: {memory.activations_gib[other]:.2f} GiB)")
    capacity = f"{device.memory_gib:.2f} GiB" if device.memory_gib is not None else "unknown memory"
    lines.append(f"  {'peak':<21} {memory.peak_gib:8.2f} GiB  of {capacity} ({device.name}; {device.note})")
    if memory.host_gib is not None:
        lines.append(f"  {'host memory':<21} {memory.host_gib:8.2f} GiB  per node for what zero3-offload moves there")
    if report.fits is None:
        lines.append("verdict: unknown (no device memory to compare with)")
    elif report.fits:
        lines.append(f"verdict: fits ({device.memory_gib - memory.peak_gib:.2f} GiB to spare)")
    else:
        lines.append(f"verdict: does NOT fit ({memory.peak_gib - device.memory_gib:.2f} GiB over)")
    return lines


def suggestion_lines(report: FitReport) -> list[str]:
    if not report.suggestions:
        return [] if report.fits is not False else ["  no change tried here lowers the peak enough"]
    lines = ["changes, each re-estimated on the changed recipe:"]
    for s in report.suggestions:
        state = "fits" if s.fits else "still over"
        lines.append(f"  {s.change}: {s.peak_gib:.2f} GiB ({state})")
        lines.append(f"      {' '.join(s.overrides)}")
    return lines


def time_lines(report: FitReport) -> list[str]:
    timing = report.time
    if timing is None:
        return []
    lines = ["time and cost:"]
    if timing.hours is not None and timing.mfu is None:
        lines.append(f"  {timing.steps:,} steps, {timing.hours:.2f} h at the measured rate")
    elif timing.hours is not None:
        cost = f", ${timing.cost_usd:,.2f}" if timing.cost_usd is not None else ""
        lines.append(f"  {timing.steps:,} steps, {timing.hours:.2f} h on {timing.world_size} x {report.device.name} "
                     f"({timing.gpu_hours:,.2f} GPU-hours{cost}) at MFU {timing.mfu:.2f} of "
                     f"{timing.peak_tflops:g} TFLOP/s")
    else:
        steps = f"{timing.steps:,} steps" if timing.steps is not None else "steps unknown"
        lines.append(f"  {steps}; time not estimated")
    lines += [f"  - {note}" for note in timing.assumptions]
    return lines


def render(report: FitReport, head: bool = True) -> str:
    """The report as `recipe fit` prints it; without the head (model and settings), as `recipe plan` adds it."""
    model = report.model
    lines = [f"{report.recipe}: {model.base} ({_billions(model.params_total)} parameters; config: "
             f"{model.config_source})",
             f"  {_method(report)}",
             f"  activations: {model.activations_measured}"] if head else []
    return "\n".join([*lines, *memory_lines(report), *suggestion_lines(report), *time_lines(report)]) + "\n"
