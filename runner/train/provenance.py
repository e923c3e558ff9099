"""What a manifest records about where a run came from: git commit, package versions, hardware."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

from runner.core import paths
from runner.recipe.schema import Recipe
from runner.runs.manifest import Hardware

PACKAGES = ("recipe-runner", "torch", "transformers", "axolotl", "peft", "trl", "accelerate", "datasets",
            "lm_eval", "deepspeed", "bitsandbytes", "tokenizers", "flash-attn")


def git_commit() -> str | None:
    """HEAD of the project checkout, with '+dirty' when there are uncommitted changes."""
    try:
        root = paths.project_root()
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def hardware(recipe: Recipe) -> Hardware:
    """The recipe's hardware profile beside what this machine actually has."""
    hw = recipe.hardware
    found = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    if hw.device == "cuda":  # importing torch costs seconds; a CPU recipe has no GPU to name
        import torch

        if torch.cuda.is_available():
            found["gpus_found"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return Hardware(profile=hw.profile, device=hw.device, gpu_model=hw.gpu_model, gpus=hw.gpus, nodes=hw.nodes,
                    world_size=hw.world_size, deepspeed=hw.deepspeed, **found)
