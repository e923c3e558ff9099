"""Fold a run's LoRA adapter into its base model (peft's merge_and_unload) -> run/merged/ (`recipe merge`,
publish.merge_adapter after training, and a parent run's model for a staged recipe)."""
from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

from runner.core import paths
from runner.core.atomic import staging_dir
from runner.core.errors import Problem, UserError
from runner.runs import rundir

MERGED = rundir.MERGED


def merge(run: rundir.RunDir, also: Callable[[Path], None] | None = None) -> Path:
    """Write run/merged/ (full model + tokenizer) from the base model and run/model's adapter; `also(folder)` adds
    files to it before it is published (the verbs: its model card).

    The merged model is staged beside run/merged and renamed into place, so a failure leaves no half model."""
    manifest = run.manifest()
    adapter_dir = run.file(manifest.model_dir)
    if not manifest.adapter:
        raise UserError(Problem(paths.display(run.path), "method.kind", "this run is a full fine-tune; its model/ "
                                "folder is already a complete model, there is no adapter to merge"))
    run.trained()  # the adapter and the base model it was trained on are both there
    print(f"merging {paths.display(adapter_dir)} into {manifest.base_model}", file=sys.stderr)
    target = run.merged_path
    with staging_dir(target) as staging, redirect_stdout(sys.stderr):  # deepspeed logs to stdout on save
        merge_into(Path(manifest.base_model_dir), adapter_dir, staging)
        if also is not None:
            also(staging)
    run.update(merged_dir=MERGED)
    return target


def merge_into(base_dir: Path, adapter_dir: Path, folder: Path) -> None:
    """Save base_dir's model with adapter_dir's LoRA folded in, and the adapter's tokenizer (the base's when the
    adapter folder has none), into folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(folder)
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
