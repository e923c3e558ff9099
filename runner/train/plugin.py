"""An axolotl plugin that records training metrics into the run directory.

Named in the emitted axolotl.yaml (`plugins:`), it adds a transformers TrainerCallback that appends
one JSON line per logging step to `metrics.jsonl` (rank 0: step, loss, lr, grad norm, tokens/s, eval
loss) and, on every rank, a line per optimizer step to `ranks/rank-<N>.jsonl`, which is the evidence
that a distributed run really stepped on each process. Under a preference method (axolotl `rl:`) it also
keeps trl's reward metrics (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, and their eval_
forms) under trl's own names, and records which reference model the trainer scored against.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel
from transformers.trainer_callback import TrainerCallback

from runner.runs.records import MetricsRow
from runner.runs.rundir import RANKS
from runner.train import cpu_shims


class RecipeRunnerArgs(BaseModel):
    """Keys this plugin adds to axolotl's config schema."""

    recipe_runner_metrics: str | None = None
    recipe_runner_use_cpu: bool | None = None  # TrainingArguments.use_cpu (bf16 autocast on a CPU)
    recipe_runner_deterministic: bool | None = None  # train.deterministic (see make_deterministic)


def make_deterministic(seed: int) -> dict:
    """train.deterministic, in the trainer process before the model is built: deterministic algorithms (an op
    without a deterministic implementation is an error, not a silent variation), cuDNN without autotuning, every
    seed set, and a fixed number of intra-op threads (CPU reductions split their work by thread, so the same
    thread count gives the same sums). The thread count is torch's default (the physical cores) unless
    RECIPE_RUNNER_THREADS sets it; it is recorded, since a different count may change the last bits."""
    import torch
    from transformers.trainer_utils import enable_full_determinism

    threads = int(os.environ.get("RECIPE_RUNNER_THREADS") or 0) or torch.get_num_threads()
    torch.set_num_threads(threads)
    enable_full_determinism(seed)  # seeds, use_deterministic_algorithms, cuDNN flags, CUBLAS_WORKSPACE_CONFIG
    return {"deterministic": True, "threads": threads}


def param_count(param) -> int:
    """Elements a parameter stands for: its full size under ZeRO-3 (ds_numel), its unquantized size for a 4-bit
    bitsandbytes weight (which stores two values per uint8: its quant_state keeps the real shape), else numel()."""
    if getattr(param, "ds_numel", None):
        return param.ds_numel
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    if shape is not None:
        return math.prod(shape)
    return param.numel()


# trl's preference metrics: DPO/IPO/ORPO/SimPO log rewards/{chosen,rejected,accuracies,margins}; KTO rewards/* and
# kl; ORPO also log_odds_ratio and nll_loss; GRPO reward, reward_std and rewards/<function>/mean. Kept under trl's
# names, eval_ forms included.
REWARD_KEYS = ("rewards/", "logps/", "kl", "log_odds_ratio", "log_odds_chosen", "nll_loss", "reward",
               "completions/mean_length")  # grpo: reward, reward_std, rewards/<metric>/mean


def _reward_metrics(logs: dict) -> dict:
    return {key: float(value) for key, value in logs.items()
            if key.removeprefix("eval_").startswith(REWARD_KEYS) and isinstance(value, (int, float))}


def reference_model(cfg, trainer) -> str:
    """What a preference trainer scores the reference with: none (orpo, simpo), the model with its adapter
    disabled (trl's default when no reference model is passed: no second copy), or a separate copy."""
    kind = str(getattr(cfg.rl, "value", cfg.rl))
    if kind in ("orpo", "simpo") or (kind == "grpo" and not (cfg.trl and cfg.trl.beta)):
        return "none (reference-free)"
    return "adapter-disabled" if getattr(trainer, "ref_model", None) is None else "copy"


class MetricsCallback(TrainerCallback):
    def __init__(self, path: Path, reference: str | None = None):
        self.path = path
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.rank_path = path.parent / RANKS / f"rank-{self.rank}.jsonl"
        self.started = time.monotonic()
        self.last_tokens, self.last_time = 0, self.started
        self.engine: dict = {}
        self.precision_hook = None
        self.precision_written = False
        self.reference = reference

    def _write_engine(self) -> None:
        self.rank_path.parent.mkdir(parents=True, exist_ok=True)
        self.rank_path.with_suffix(".engine.json").write_text(json.dumps(self.engine, sort_keys=True) + "\n")

    def _watch_precision(self, args, model) -> None:
        """Record the precision training really ran in: the trainer's flags, accelerate's mixed precision, the
        parameters' dtypes, and (from inside the first forward pass of the first Linear layer) whether autocast
        was on, in which dtype, and the dtype of that layer's output."""
        import torch
        from accelerate.state import AcceleratorState

        state = AcceleratorState() if AcceleratorState._shared_state else None
        mixed = getattr(state, "mixed_precision", None)
        seen = {"trainer_bf16": bool(args.bf16), "trainer_fp16": bool(args.fp16),
                "mixed_precision": str(mixed) if mixed is not None else None, "param_dtypes": {},
                "trainable_dtypes": {}}
        for p in model.parameters():
            name = str(p.dtype).removeprefix("torch.")
            n = param_count(p)
            seen["param_dtypes"][name] = seen["param_dtypes"].get(name, 0) + n
            if p.requires_grad:
                seen["trainable_dtypes"][name] = seen["trainable_dtypes"].get(name, 0) + n
        self.engine["precision"] = seen
        layer = next((m for m in model.modules() if isinstance(m, torch.nn.Linear)), None)
        if layer is None:
            return

        def hook(module, inputs, output):
            device = output.device.type
            on = torch.is_autocast_enabled(device)
            seen["autocast_dtype"] = str(torch.get_autocast_dtype(device)).removeprefix("torch.") if on else None
            seen["activation_dtype"] = str(output.dtype).removeprefix("torch.")
            self.precision_hook.remove()
            self.precision_hook = None

        self.precision_hook = layer.register_forward_hook(hook)

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
        if model is not None:  # for FLOPs per token (ZeRO-3 and 4-bit weights counted at their full size)
            sizes = [(param_count(p), p.requires_grad) for p in model.parameters()]
            engine["params_total"] = sum(n for n, _ in sizes)
            engine["params_trainable"] = sum(n for n, trainable in sizes if trainable)
        import torch

        engine["threads"] = torch.get_num_threads()
        if torch.are_deterministic_algorithms_enabled():
            engine["deterministic"] = True
        if self.reference:
            engine["reference_model"] = self.reference
        self.engine = engine
        if model is not None:
            self._watch_precision(args, model)
        self._write_engine()

    def on_train_end(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available():  # the allocator's peak on this process's GPU (what an OOM is measured against)
            self.engine["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            self.engine["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
            self._write_engine()

    def on_step_end(self, args, state, control, **kwargs):
        if not self.precision_written and "activation_dtype" in self.engine.get("precision", {}):
            self.precision_written = True  # the first forward pass has been seen: record what it ran in, once
            self._write_engine()
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
        record |= _reward_metrics(logs)
        if tokens and now > self.last_time:
            # num_input_tokens_seen is summed over all ranks by the trainer.
            record["tokens_seen"] = tokens
            record["tokens_per_s"] = round((tokens - self.last_tokens) / (now - self.last_time), 2)
            self.last_tokens, self.last_time = tokens, now
        self._append(self.path, MetricsRow.model_validate(record).to_json())


class RecipeRunnerPlugin(BasePlugin):
    def register(self, cfg):
        cpu_shims.install()

    def get_input_args(self):
        return "runner.train.plugin.RecipeRunnerArgs"

    def pre_model_load(self, cfg):
        if cfg.recipe_runner_deterministic:
            make_deterministic(cfg.seed)

    def get_training_args(self, cfg):
        args = {"use_cpu": True} if cfg.recipe_runner_use_cpu else {}
        if cfg.recipe_runner_deterministic:
            args["full_determinism"] = True  # the Trainer seeds with enable_full_determinism, not set_seed
        return args or None

    def add_callbacks_post_trainer(self, cfg, trainer):
        if not cfg.recipe_runner_metrics:
            return []
        # axolotl's cwd is the run directory (launch.sh cds there); output_dir is model/ inside it.
        reference = reference_model(cfg, trainer) if cfg.rl else None
        return [MetricsCallback(Path(cfg.recipe_runner_metrics).resolve(), reference)]
