"""Recipe -> engine files. Pure builders: dicts for axolotl / DeepSpeed / accelerate, text for launch scripts.

Nothing here runs anything or reads the clock; paths inside a run directory are relative (scripts
`cd` to their own folder), so emitted files are deterministic, diffable and golden-tested.
"""
from __future__ import annotations

import shlex

from runner.recipe.schema import Recipe

TARGETS: tuple[str, ...] = ("local", "accelerate", "torchrun", "slurm")
MAIN_PORT = 29500
PLUGIN = "runner.train.plugin.RecipeRunnerPlugin"
ATTENTION = {"flash": "flash_attention_2", "sdpa": "sdpa", "eager": "eager"}


def _dataset(path: str) -> dict:
    return {"path": path, "type": "input_output", "ds_type": "json", "split": "train"}


def axolotl_config(recipe: Recipe, base_model: str, *, has_val: bool = True) -> dict:
    """The axolotl YAML (as a dict) for a recipe whose prepared data sits in data/ beside it."""
    train, data, hardware, method = recipe.train, recipe.data, recipe.hardware, recipe.method
    cpu = hardware.device == "cpu"
    config: dict = {
        "base_model": base_model,
        "trust_remote_code": recipe.model.trust_remote_code,
        "datasets": [_dataset("data/train.jsonl")],
        "val_set_size": 0,
        "dataset_prepared_path": "prepared",
        "output_dir": "model",
        "sequence_len": data.max_seq_len,
        "sample_packing": data.packing,
        "pad_to_sequence_len": data.packing,
        "train_on_inputs": False,
        "micro_batch_size": train.micro_batch_size,
        "gradient_accumulation_steps": recipe.gradient_accumulation,
        "learning_rate": train.learning_rate,
        "lr_scheduler": train.schedule,  # the schema allows only names axolotl knows
        "warmup_ratio": train.warmup_ratio,
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.max_grad_norm,
        "optimizer": train.optimizer,
        "gradient_checkpointing": train.gradient_checkpointing,
        "logging_steps": train.logging_steps,
        "save_strategy": "steps" if train.save_steps else "no",
        "save_total_limit": train.save_total_limit,
        "seed": train.seed,
        "auto_resume_from_checkpoints": True,  # a re-launch (resume, SLURM requeue) continues from the last one
        "include_tokens_per_second": True,
        "attn_implementation": ATTENTION[hardware.attention],
        "bf16": hardware.precision == "bf16",
        "fp16": hardware.precision == "fp16",
        "tf32": hardware.device == "cuda" and hardware.precision != "fp32",
        "plugins": [PLUGIN],
        "recipe_runner_metrics": "metrics.jsonl",
    }
    if recipe.model.revision != "main" and "/" in base_model and not base_model.startswith("/"):
        config["revision_of_model"] = recipe.model.revision
    if train.max_steps:
        config["max_steps"] = train.max_steps
    if train.epochs:
        config["num_epochs"] = train.epochs
    if train.save_steps:
        config["save_steps"] = train.save_steps
    if has_val:
        config["test_datasets"] = [_dataset("data/val.jsonl")]
        config["eval_strategy"] = "steps" if train.eval_steps else "epoch"
        if train.eval_steps:
            config["eval_steps"] = train.eval_steps
    if method.adapter:
        lora = method.adapter
        config |= {"adapter": "qlora" if method.kind == "qlora" else "lora", "lora_r": lora.r,
                   "lora_alpha": lora.alpha, "lora_dropout": lora.dropout}
        if lora.target == "all-linear":
            config["lora_target_linear"] = True
        else:
            config["lora_target_modules"] = list(lora.target)
        if method.kind == "qlora":
            config["load_in_4bit"] = True
    if cpu:
        # axolotl's fused LoRA kernels are Triton and allocate on "cuda" (STACK.md).
        config |= {"lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False}
        if hardware.precision == "bf16":
            # transformers refuses bf16 without a bf16 GPU unless TrainingArguments.use_cpu is set; the plugin
            # passes it on (axolotl has no key for it). Autocast then runs on the CPU in bf16.
            config["recipe_runner_use_cpu"] = True
    if hardware.deepspeed != "none":
        config["deepspeed"] = "deepspeed.json"
    if hardware.world_size > 1:
        config["ddp_timeout"] = hardware.nccl.timeout_s
    if recipe.tracking.wandb:
        config["wandb_project"] = recipe.tracking.wandb.project
        if recipe.tracking.wandb.entity:
            config["wandb_entity"] = recipe.tracking.wandb.entity
    if recipe.tracking.tensorboard:
        config["use_tensorboard"] = True
    # publish.hub_model_id is not passed on: axolotl would push every checkpoint to the hub while training (and
    # need the network and a token from the start); `recipe publish` uploads the finished model with its card.
    return dict(sorted(config.items()))


def deepspeed_config(recipe: Recipe) -> dict | None:
    """DeepSpeed JSON with the batch arithmetic written out (DeepSpeed checks train = micro x accum x world)."""
    stage = recipe.hardware.deepspeed
    if stage == "none":
        return None
    zero: dict = {"stage": 2 if stage == "zero2" else 3, "overlap_comm": True, "contiguous_gradients": True,
                  "reduce_bucket_size": 50_000_000}
    if zero["stage"] == 3:
        zero |= {"stage3_gather_16bit_weights_on_model_save": True, "stage3_prefetch_bucket_size": 50_000_000,
                 "stage3_param_persistence_threshold": 100_000}
    if stage == "zero3-offload":
        zero |= {"offload_optimizer": {"device": "cpu", "pin_memory": True},
                 "offload_param": {"device": "cpu", "pin_memory": True}}
    precision = recipe.hardware.precision
    return {
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "gradient_accumulation_steps": recipe.gradient_accumulation,
        "gradient_clipping": recipe.train.max_grad_norm,
        "train_batch_size": recipe.global_batch,
        "train_micro_batch_size_per_gpu": recipe.train.micro_batch_size,
        "wall_clock_breakdown": False,
        "zero_optimization": zero,
    }


def accelerate_config(recipe: Recipe) -> dict:
    """accelerate's config file; machine rank and main address come from the launch script at run time."""
    hardware = recipe.hardware
    gpu = hardware.device == "cuda"
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": ("MULTI_GPU" if gpu else "MULTI_CPU") if hardware.world_size > 1 else "NO",
        "mixed_precision": {"bf16": "bf16", "fp16": "fp16"}.get(hardware.precision, "no"),  # cpu: fp32 or bf16
        "num_machines": hardware.nodes,
        "num_processes": hardware.world_size,
        "machine_rank": 0,
        "main_training_function": "main",
        "rdzv_backend": "static" if hardware.nodes == 1 else "c10d",
        "same_network": True,
        "use_cpu": not gpu,
        "main_process_port": MAIN_PORT,
    }


# A checkpoint without trainer_state.json (the Trainer writes it last) was cut off mid-write by a kill or a
# preemption; resuming from it crashes, so it is set aside and axolotl resumes from the newest complete one.
CHECKPOINT_GUARD = ('for checkpoint in model/checkpoint-*/; do [ -e "${checkpoint}trainer_state.json" ] || '
                    'mv "$checkpoint" "${checkpoint%/}.incomplete" 2>/dev/null || true; done')


def _environment(recipe: Recipe) -> list[str]:
    lines = ["export AXOLOTL_DO_NOT_TRACK=1 DO_NOT_TRACK=1  # no telemetry",
             "export PYTHONUNBUFFERED=1",
             "# set aside checkpoints cut off mid-write, so a resume starts from the newest complete one",
             CHECKPOINT_GUARD]
    if recipe.tracking.wandb:
        # W&B keeps its run in wandb/ here, with the run directory's name as id; a relaunch resumes that run
        lines.append('export WANDB_DIR="$PWD" WANDB_RUN_ID="${PWD##*/}" WANDB_NAME="${PWD##*/}" WANDB_RESUME=allow')
    if recipe.tracking.tensorboard:
        lines.append("export TENSORBOARD_LOGGING_DIR=tensorboard  # event files beside the model, not inside it")
    if recipe.hardware.device == "cpu" and recipe.hardware.deepspeed == "none":
        # accelerate: CPU processes with gloo between them (under DeepSpeed this would switch DeepSpeed off)
        lines.append("export ACCELERATE_USE_CPU=true")
    if recipe.hardware.device == "cuda" and recipe.hardware.world_size > 1:
        lines += [f"export NCCL_DEBUG={recipe.hardware.nccl.debug}",
                  "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1  # fail fast instead of hanging on a dead rank"]
    return lines


def _command(recipe: Recipe, target: str) -> list[str]:
    """The training command for one node (rank and rendezvous from the environment)."""
    hardware = recipe.hardware
    train = ["-m", "axolotl.cli.train", "axolotl.yaml"]
    if target == "local":
        return ["axolotl", "train", "axolotl.yaml", "--launcher", "python"]
    if target == "accelerate":
        args = ["accelerate", "launch", "--config_file", "accelerate.yaml"]
        if hardware.nodes > 1:
            args += ["--machine_rank", "${NODE_RANK}", "--main_process_ip", "${MASTER_ADDR}",
                     "--main_process_port", "${MASTER_PORT}"]
        return args + train
    args = ["torchrun", f"--nproc_per_node={hardware.gpus}", f"--nnodes={hardware.nodes}"]
    if hardware.nodes > 1 or target == "slurm":
        args += ["--node_rank=${NODE_RANK}", "--rdzv_backend=c10d", "--rdzv_endpoint=${MASTER_ADDR}:${MASTER_PORT}",
                 "--rdzv_id=${RDZV_ID}"]
    else:
        args += ["--standalone"]
    return args + train


def _join(argv: list[str]) -> str:
    # ${VAR} expansions stay unquoted so the shell fills them in at run time.
    return " ".join(a if "${" in a else shlex.quote(a) for a in argv)


def launch_script(recipe: Recipe, target: str) -> str:
    """bash script that trains the run in its own folder."""
    hardware = recipe.hardware
    header = ["#!/usr/bin/env bash",
              f"# Generated by recipe-runner for {recipe.name} {recipe.version} (target: {target}).",
              "# Needs axolotl, accelerate and torchrun on PATH (the runner puts its venv first).",
              "set -euo pipefail"]
    if target == "slurm":
        return _slurm_script(recipe, header)
    lines = [*header, 'cd "$(dirname "$0")"', *_environment(recipe)]
    if hardware.nodes > 1:
        lines += [f"# Run this script once on every node, with NODE_RANK 0..{hardware.nodes - 1}",
                  "# and MASTER_ADDR set to node 0's address.",
                  ': "${NODE_RANK:?set NODE_RANK (0 on the main node)}"',
                  ': "${MASTER_ADDR:?set MASTER_ADDR to the main node address}"',
                  f'MASTER_PORT="${{MASTER_PORT:-{MAIN_PORT}}}"',
                  f'RDZV_ID="${{RDZV_ID:-{recipe.name}}}"']
    lines.append(f"exec {_join(_command(recipe, target))}")
    return "\n".join(lines) + "\n"


def _slurm_script(recipe: Recipe, header: list[str]) -> str:
    hardware = recipe.hardware
    requeue = (f"resume from the last checkpoint (one every {recipe.train.save_steps} steps)" if recipe.train.save_steps
               else "start over (train.save_steps is null: no checkpoints)")
    sbatch = [f"#SBATCH --job-name={recipe.name}",
              f"#SBATCH --nodes={hardware.nodes}",
              "#SBATCH --ntasks-per-node=1  # one torchrun per node; it starts the per-GPU processes",
              "#SBATCH --output=logs/slurm-%j.out",
              f"#SBATCH --requeue  # preempted or requeued jobs come back and {requeue}",
              "#SBATCH --open-mode=append"]
    if hardware.device == "cuda":
        sbatch.append(f"#SBATCH --gpus-per-node={hardware.gpus}")
    body = [
        # sbatch runs a copy of this script from its spool folder; SLURM_SUBMIT_DIR is where it was submitted.
        'cd "${RUN_DIR:-$SLURM_SUBMIT_DIR}"',
        "mkdir -p logs",
        *_environment(recipe),
        'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f'MASTER_PORT="${{MASTER_PORT:-{MAIN_PORT}}}"',
        'RDZV_ID="$SLURM_JOB_ID"',
        "export MASTER_ADDR MASTER_PORT RDZV_ID",
        "srun --kill-on-bad-exit=1 bash -c "
        f"'{_join(_command(recipe, 'slurm')).replace('${NODE_RANK}', '${SLURM_NODEID}')}'",
    ]
    return "\n".join([header[0], *sbatch, *header[1:], *body]) + "\n"


def launch_command(target: str, run_dir: str) -> str:
    """What a person types to start a planned run."""
    if target == "slurm":
        return f"(cd {shlex.quote(run_dir)} && sbatch launch.sh)"
    return f"bash {shlex.quote(run_dir)}/launch.sh"
