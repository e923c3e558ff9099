"""What this machine's CPU can do in bf16, read from the operating system (no torch import: `recipe train` on CPU
starts the trainer without importing torch first).

bf16 on a CPU is fast only with native bf16 instructions: AVX-512 BF16 (`avx512_bf16`, Cooper Lake, Sapphire
Rapids, Zen 4 and later) or AMX (`amx_bf16`, Sapphire Rapids and later) on x86, the BF16 extension (`bf16`,
Armv8.6: Graviton 3, Neoverse V1/N2, Apple M2 and later) on Arm. Without them torch still runs bf16, emulated,
slower than fp32, so a recipe asking for bf16 on such a CPU is stopped with the fix instead.

Recipes are validated without looking at the machine (they may be planned for another one); what a recipe's
precision means on this machine is decided where the work runs, by runner.recipe.precision.
"""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

X86_BF16 = ("amx_bf16", "avx512_bf16")  # either is enough; AMX is the faster
ARM_BF16 = ("bf16",)
CPUINFO = Path("/proc/cpuinfo")


def _flags(cpuinfo: str) -> set[str]:
    """The first processor's feature flags (`flags` on x86, `Features` on Arm) from /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else the machine type."""
    try:
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _darwin_bf16() -> bool:
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
    except OSError:
        return False
    return out.strip() == "1"


def bf16_features(cpuinfo: str | None = None, machine: str | None = None) -> list[str]:
    """The native bf16 features this CPU has (empty when none, or when they cannot be read).
    `cpuinfo`/`machine` stand in for /proc/cpuinfo and platform.machine() (tests)."""
    machine = (machine or platform.machine()).lower()
    if cpuinfo is None:
        if platform.system() == "Darwin":
            return ["FEAT_BF16"] if _darwin_bf16() else []
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return []
    wanted = ARM_BF16 if machine.startswith(("arm", "aarch64")) else X86_BF16
    flags = _flags(cpuinfo)
    return [f for f in wanted if f in flags]


def missing_bf16(cpuinfo: str | None = None, machine: str | None = None) -> str | None:
    """None when this CPU computes bf16 natively; else what it lacks, in words."""
    if bf16_features(cpuinfo, machine):
        return None
    machine = (machine or platform.machine()).lower()
    if machine.startswith(("arm", "aarch64")):
        return "the Arm BF16 extension (`bf16` in /proc/cpuinfo Features; Armv8.6, Graviton 3, Apple M2 or later)"
    return ("AVX-512 BF16 or AMX (`avx512_bf16` or `amx_bf16` in /proc/cpuinfo flags; Intel Cooper Lake / "
            "Sapphire Rapids, AMD Zen 4 or later)")
