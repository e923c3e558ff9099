"""An axolotl plugin that records training metrics into the run directory.

Named in the emitted axolotl.yaml (`plugins:`), it adds a transformers TrainerCallback that appends
one JSON line per logging step to `metrics.jsonl` (rank 0: step, loss, lr, grad norm, tokens/s, eval
loss) and, on every rank, a line per optimizer step to `ranks/rank-<N>.jsonl`, which is the evidence
that a distributed run really stepped on each process.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel
from transformers.trainer_callback import TrainerCallback

from runner.train import cpu_shims


class RecipeRunnerArgs(BaseModel):
    """Keys this plugin adds to axolotl's config schema."""

    recipe_runner_metrics: str | None = None


class MetricsCallback(TrainerCallback):
    def __init__(self, path: Path):
        self.path = path
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.rank_path = path.parent / "ranks" / f"rank-{self.rank}.jsonl"
        self.started = time.monotonic()
        self.last_tokens, self.last_time = 0, self.started

    def _append(self, path: Path, record: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        # What accelerate actually set up in this process: the evidence that a run was data-parallel
        # (and over which backend) or under DeepSpeed, not just launched with several processes.
        from accelerate.state import AcceleratorState, PartialState

        partial = PartialState()
        engine = {"rank": self.rank, "world_size": partial.num_processes,
                  "distributed_type": str(partial.distributed_type).split(".")[-1], "backend": partial.backend}
        plugin = AcceleratorState().deepspeed_plugin if AcceleratorState._shared_state else None
        if plugin is not None:
            engine["zero_stage"] = plugin.zero_stage
        model = kwargs.get("model")
        if model is not None:  # for FLOPs per token; ZeRO-3 keeps each parameter's full size in ds_numel
            sizes = [(getattr(p, "ds_numel", None) or p.numel(), p.requires_grad) for p in model.parameters()]
            engine["params_total"] = sum(n for n, _ in sizes)
            engine["params_trainable"] = sum(n for n, trainable in sizes if trainable)
        self.rank_path.parent.mkdir(parents=True, exist_ok=True)
        self.rank_path.with_suffix(".engine.json").write_text(json.dumps(engine, sort_keys=True) + "\n")

    def on_step_end(self, args, state, control, **kwargs):
        self._append(self.rank_path, {"rank": self.rank, "world_size": self.world_size, "step": state.global_step,
                                      "tokens_seen": int(getattr(state, "num_input_tokens_seen", 0) or 0)})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.monotonic()
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        record = {"step": state.global_step, "epoch": logs.get("epoch"), "elapsed_s": round(now - self.started, 3),
                  "world_size": self.world_size}
        for source, name in (("loss", "loss"), ("learning_rate", "lr"), ("grad_norm", "grad_norm"),
                             ("eval_loss", "eval_loss"), ("train_loss", "train_loss")):
            if source in logs:
                record[name] = float(logs[source])
        if tokens and now > self.last_time:
            # num_input_tokens_seen is summed over all ranks by the trainer.
            record["tokens_seen"] = tokens
            record["tokens_per_s"] = round((tokens - self.last_tokens) / (now - self.last_time), 2)
            self.last_tokens, self.last_time = tokens, now
        self._append(self.path, record)


class RecipeRunnerPlugin(BasePlugin):
    def register(self, cfg):
        cpu_shims.install()

    def get_input_args(self):
        return "runner.train.plugin.RecipeRunnerArgs"

    def add_callbacks_post_trainer(self, cfg, trainer):
        if not cfg.recipe_runner_metrics:
            return []
        # axolotl's cwd is the run directory (launch.sh cds there); output_dir is model/ inside it.
        return [MetricsCallback(Path(cfg.recipe_runner_metrics).resolve())]
