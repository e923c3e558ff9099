"""The results file: machine facts, goals judged against the figures, CPU load per phase, the printed table."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
from importlib import metadata
from pathlib import Path

from bench.common import ROOT

PACKAGES = ("recipe-runner", "axolotl", "lm_eval", "torch", "transformers", "datasets", "accelerate", "peft",
            "tokenizers", "numpy", "psutil")
GOALS = {  # figure: (comparison, threshold)
    "runner_overhead_ratio": ("<=", 1.03),
    "launch_latency_s": ("<", 1.5),
    "prep_ratio_vs_axolotl": ("<=", 1.0),
    "packing_efficiency": (">=", 0.98),
    "eval_batch_speedup": (">=", 3.0),
}


def busy_cpu_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores; idle and iowait excluded)."""
    import psutil

    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def own_cpu_s() -> float:
    """CPU seconds of this process and the children it waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + own.ru_utime + own.ru_stime


def machine() -> dict:
    import psutil

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    return {"cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "packages": versions,
            "git_commit": commit, "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


def judge(figures: dict) -> dict:
    goals = {}
    for key, (op, threshold) in GOALS.items():
        value = figures.get(key)
        met = None if not isinstance(value, (int, float)) else {
            "<=": value <= threshold, "<": value < threshold, ">=": value >= threshold}[op]
        goals[key] = {"goal": f"{op} {threshold}", "value": value, "met": met}
    return goals


def table(results: dict) -> str:
    rows = [("figure", "value", "goal", "met")]
    for key, value in sorted(results["figures"].items()):
        if isinstance(value, dict):
            continue
        goal = results["goals"].get(key, {})
        met = goal.get("met")
        rows.append((key, f"{value}", goal.get("goal", ""), "" if met is None else ("yes" if met else "NO")))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip() for r in rows]
    demo = results["figures"].get("demo_stage_seconds")
    if demo is not None:
        lines.append("demo_stage_seconds: " + (", ".join(f"{k}={v}" for k, v in demo.items()) or "(none)"))
        missing = results["details"].get("demo", {}).get("missing")
        if missing:
            lines.append("  missing: " + "; ".join(missing))
    for name, error in results.get("errors", {}).items():
        lines.append(f"ERROR {name}: {error.splitlines()[0]}")
    return "\n".join(lines)


def write(results: dict, out: Path) -> None:
    """Sorted keys, two-space indent, a final newline: a stable layout to diff."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
