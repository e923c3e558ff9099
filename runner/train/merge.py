"""`recipe merge`: fold a run's LoRA adapter into its base model (peft's merge_and_unload) -> run/merged/."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from runner.core import paths
from runner.runs import rundir
from runner.core.errors import Problem, UserError

MERGED = "merged"


def merge(run: rundir.RunDir) -> Path:
    """Write run/merged/ (full model + tokenizer) from the base model and run/model's adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.evaluate.evaluation import check_trained

    manifest = run.manifest()
    adapter_dir = run.file(manifest.get("model_dir", "model"))
    if not manifest.get("adapter"):
        raise UserError(Problem(paths.display(run.path), "method.kind", "this run is a full fine-tune; its model/ "
                                "folder is already a complete model, there is no adapter to merge"))
    check_trained(run)  # the adapter and the base model it was trained on are both there
    print(f"merging {paths.display(adapter_dir)} into {manifest['base_model']}", file=sys.stderr)
    base = AutoModelForCausalLM.from_pretrained(manifest["base_model_dir"], dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    target = run.file(MERGED)
    staging = run.file(f".{MERGED}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    run.update(merged_dir=MERGED)
    return target
