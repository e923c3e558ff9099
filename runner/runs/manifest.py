"""Manifest: manifest.json, the record of one run, written by plan/train/eval/merge and read by every later
stage and the report."""
from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from runner.core.contracts import Contract, Record
from runner.runs.data_info import DataInfo


class Status(StrEnum):
    PLANNED = "planned"  # engine files written, nothing run
    TRAINING = "training"  # the trainer runs (or stopped without recording why)
    SUBMITTED = "submitted"  # handed to SLURM (--detach)
    TRAINED = "trained"
    EVALUATED = "evaluated"
    FAILED = "failed"


class RunError(Record):
    stage: Literal["train", "eval", "merge"]
    message: str
    log_tail: list[str] = []


class Seeds(Record):
    train: int
    split: int


class Batch(Record):
    micro: int
    accumulation: int
    world_size: int
    global_: int = Field(alias="global")
    packing: bool


class Hardware(Record):
    """The recipe's hardware profile beside what this machine actually has."""

    profile: str
    device: Literal["cpu", "cuda"]
    gpu_model: str | None = None
    gpus: int
    nodes: int
    world_size: int
    deepspeed: str
    cpu_count: int | None = None
    platform: str | None = None
    python: str | None = None
    gpus_found: list[str] | None = None


class PrecisionSeen(Record):
    """The precision one training process really ran in (the in-trainer plugin records it)."""

    trainer_bf16: bool = False  # TrainingArguments.bf16 / fp16
    trainer_fp16: bool = False
    mixed_precision: str | None = None  # accelerate's: no | bf16 | fp16
    param_dtypes: dict[str, int] = {}  # parameter elements by dtype (all; trainable)
    trainable_dtypes: dict[str, int] = {}
    autocast_dtype: str | None = None  # inside the first forward pass; None when autocast was off
    activation_dtype: str | None = None  # the output dtype of the first Linear layer in that pass


class RankEngine(Record):
    """What accelerate set up in one training process (written by the in-trainer plugin)."""

    rank: int
    world_size: int
    distributed_type: str
    backend: str | None = None
    zero_stage: int | None = None
    params_total: int | None = None
    params_trainable: int | None = None
    precision: PrecisionSeen | None = None
    peak_gpu_memory_gib: float | None = None  # torch.cuda.max_memory_allocated at the end of training
    peak_gpu_reserved_gib: float | None = None  # torch.cuda.max_memory_reserved (allocator's cache included)
    deterministic: bool | None = None  # train.deterministic: deterministic algorithms were on in this process
    threads: int | None = None  # torch's intra-op threads in this process (results depend on it on CPU)
    reference_model: str | None = None  # preference methods: adapter-disabled | copy | none (reference-free)


class RankSummary(Record):
    steps: int
    last_step: int
    world_size: int
    engine: RankEngine | None = None


class TrainSummary(Record):
    """Figures from metrics.jsonl and the plugin's per-rank records."""

    steps: int = 0
    logged_steps: int = 0
    tokens: int = 0
    tokens_per_s: float | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    final_eval_loss: float | None = None
    padding_waste: float | None = None
    ranks: dict[str, RankSummary] = {}
    params_total: int | None = None
    params_trainable: int | None = None
    flops_per_token: float | None = None  # 2 N forward + 2 N backward through activations + 2 N_trainable weights
    tflops: float | None = None  # achieved, all processes together
    peak_tflops: float | None = None  # per process, dense bf16, when the GPU model is known
    mfu: float | None = None
    precision: PrecisionSeen | None = None  # what rank 0 trained in (autocast dtype, parameter dtypes)
    peak_gpu_memory_gib: float | None = None  # the largest over the ranks (max_memory_allocated); cuda only


class Tracking(Record):
    """Where the run's experiment tracking keeps its files (paths relative to the run directory)."""

    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_run_id: str | None = None
    wandb_mode: Literal["offline", "online"] | None = None
    wandb_run_dirs: list[str] = []  # the training run's folder, then one per resume (`recipe eval`), oldest first
    tensorboard_dir: str | None = None


class EvalRef(Record):
    suite: str
    suite_version: str
    summary: str = "eval/summary.json"


class ParentRun(Record):
    """The run a staged recipe (`model.base: run:<recipe>`) started from: which one, and the model it gave."""

    recipe: str
    run_id: str
    fingerprint: str  # the parent's resolved recipe
    recipe_version: str
    model_dir: str  # the parent's trained model as loaded: its merged/, or its adapter merged into the cache
    base_model: str  # the parent's own model.base (the chain goes on through that run's manifest)
    base_model_dir: str  # where the parent's base model was loaded from (the first stage's base, for a chain of two)


class Manifest(Contract):
    VERSION: ClassVar[int] = 1
    version: Literal[1] = 1
    run_id: str
    recipe: str
    recipe_version: str
    fingerprint: str
    recipe_file: str | None = None
    extends: list[str] = []
    target: Literal["local", "accelerate", "torchrun", "slurm"]
    base_model: str
    base_model_dir: str
    model_dir: str = "model"
    adapter: bool
    git_commit: str | None = None
    packages: dict[str, str] = {}
    hardware: Hardware | None = None
    seeds: Seeds | None = None
    batch: Batch | None = None
    command: str | None = None
    status: Status
    error: RunError | None = None
    timings: dict[str, float] = {}
    data: DataInfo | None = None
    train: TrainSummary | None = None
    eval: EvalRef | None = None
    slurm_job_id: str | None = None
    train_pid: int | None = None
    merged_dir: str | None = None
    tracking: Tracking | None = None
    parent: ParentRun | None = None  # a staged run: the run whose model it starts from
    group: str | None = None  # `recipe train --seeds`: the id shared by the runs trained together, one per seed

    @property
    def stop(self) -> list[str]:
        """The stop strings the data was prepared with (template stops and the tokenizer's EOS)."""
        return [s for s in (self.data.stop if self.data else []) if s]


def _from_unversioned(data: dict) -> dict:
    """Runs written before manifests had versions: `stop` sat beside `data`, which lacked the template."""
    data = dict(data)
    stop = data.pop("stop", None)
    if isinstance(data.get("data"), dict):
        data["data"] = {"template": "?", "format": 1, "version": 1} | data["data"] | {"stop": stop or []}
    if data.get("status") == "prepared":
        data["status"] = "planned"
    return data


Manifest.MIGRATIONS = {0: _from_unversioned}
