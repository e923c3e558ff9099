"""Recipe language v1: one small frozen pydantic model per section, unknown keys rejected.

Checks that involve only one section live next to its fields; checks across sections live on `Recipe`.
Every message carries the numbers it is about.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from runner.recipe import candidates, gpus

SCHEMA_VERSION = 1
GpuName = Literal[gpus.NAMES]  # one table of GPU models: runner/recipe/gpus.py
SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")


def _semver(version: str) -> str:
    if not SEMVER.match(version):
        raise ValueError(f"{version!r} is not a semantic version like 1.0.0")
    return version


SemVer = Annotated[str, AfterValidator(_semver)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Section):
    """The base model: a hub id, a local HF directory, a local .gguf file, or pkg://<package>/<file>."""

    base: str = Field(min_length=1, description="hub id | local dir | local .gguf | pkg://<package>/<file>")
    revision: str = Field("main", description="hub revision (branch, tag or commit) for hub ids")
    trust_remote_code: StrictBool = Field(False, description="run code shipped with the model; off unless set here")
    context_length: int | None = Field(None, gt=0, description="the model's maximum sequence length, if known")


class LoraSpec(Section):
    r: int = Field(16, gt=0, description="adapter rank")
    alpha: int = Field(32, gt=0, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input during training")
    target: Literal["all-linear"] | list[str] = Field("all-linear", description="modules to adapt")


SFT_KINDS = ("full", "lora", "qlora")
PAIR_KINDS = ("dpo", "ipo", "orpo", "simpo")  # trained on (prompt, chosen, rejected)
PREFERENCE_KINDS = (*PAIR_KINDS, "kto")  # kto: (prompt, completion, label) rows
RL_KINDS = (*PREFERENCE_KINDS, "grpo")  # grpo: prompts; the model generates, the eval metrics reward
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "orpo": 0.1, "kto": 0.1, "simpo": 2.0, "grpo": 0.0}  # trl's defaults
GRPO_KEYS = ("rewards", "generations", "max_completion_length")


class MethodSpec(Section):
    kind: Literal["full", "lora", "qlora", "dpo", "ipo", "orpo", "kto", "simpo", "grpo"] = Field(
        description="full | lora | qlora: supervised fine-tuning; dpo | ipo | orpo | simpo: preference tuning on "
        "(prompt, chosen, rejected) pairs; kto: on (prompt, completion, label) rows; grpo: the model answers each "
        "prompt several times and the eval metrics (method.rewards) score the answers against the reference")
    tuning: Literal["full", "lora", "qlora"] | None = Field(
        None, description="preference kinds and grpo: which weights train (default lora). With an adapter, dpo, ipo "
        "and kto score the reference with the adapter switched off, so no second copy of the model is loaded")
    lora: LoraSpec | None = Field(None, description="adapter settings; lora and qlora only")
    beta: float | None = Field(
        None, gt=0, description="preference kinds: dpo/ipo/kto: weight of the reference (KL) term (default 0.1); "
        "orpo: lambda, the weight of the odds-ratio term (default 0.1); simpo: the reward scale (default 2.0); "
        "grpo: the KL weight (unset: no KL term and no reference model)")
    gamma: float | None = Field(None, ge=0, description="simpo only: target reward margin (default 0.5)")
    sft_weight: float | None = Field(
        None, gt=0, description="dpo only: adds the chosen answers' negative log-likelihood to the loss with this "
        "weight (RPO): the chosen answers stay likely while the rejected ones are pushed down")
    desirable_weight: float | None = Field(None, gt=0, description="kto only: loss weight of label-true rows (1.0)")
    undesirable_weight: float | None = Field(None, gt=0, description="kto only: loss weight of label-false rows (1.0)")
    rewards: list[str] | None = Field(None, min_length=1, description="grpo only: generation metrics of the registry "
                                      "(runner/metrics/registry.py) that reward each answer, summed, e.g. [token_f1]")
    generations: int | None = Field(None, ge=2, description="grpo only: answers sampled per prompt (default 4)")
    max_completion_length: int | None = Field(None, gt=0, description="grpo only: tokens per sampled answer "
                                              "(default eval.max_new_tokens)")

    def problems(self) -> list[tuple[str, str]]:
        problems = []
        if self.kind in SFT_KINDS:
            given = [key for key in ("tuning", "beta", "gamma", "desirable_weight", "undesirable_weight")
                     if getattr(self, key) is not None]
            problems += [(f"method.{key}", f"{key} is a preference-tuning setting but method.kind is {self.kind!r}; "
                          f"remove method.{key} or set kind to one of {list(RL_KINDS)}") for key in given]
        if self.kind != "grpo":
            problems += [(f"method.{key}", f"{key} is a grpo setting but method.kind is {self.kind!r}; remove it or "
                          "use kind: grpo") for key in GRPO_KEYS if getattr(self, key) is not None]
        else:
            problems += self._reward_problems()
        if self.sft_weight is not None and self.kind != "dpo":
            problems.append(("method.sft_weight", f"sft_weight adds a likelihood term to dpo's loss but method.kind "
                             f"is {self.kind!r}; remove it or use kind: dpo"))
        if self.gamma is not None and self.kind != "simpo":
            problems.append(("method.gamma", f"gamma is simpo's target margin but method.kind is {self.kind!r}; "
                             "remove it or use kind: simpo"))
        for key in ("desirable_weight", "undesirable_weight"):
            if getattr(self, key) is not None and self.kind in PAIR_KINDS:
                problems.append((f"method.{key}", f"{key} weighs kto's labeled rows but method.kind is "
                                 f"{self.kind!r}; remove it or use kind: kto"))
        if self.weights == "full" and self.lora is not None:
            where = "method.kind is 'full'" if self.kind == "full" else "method.tuning is 'full'"
            problems.append(("method.lora", f"LoRA settings given but {where}; remove method.lora or train an "
                             "adapter (lora / qlora)"))
        return problems

    def _reward_problems(self) -> list[tuple[str, str]]:
        from runner.metrics import rewards  # late: the metric registry, which metrics can score an answer

        scorable = rewards.names()
        if not self.rewards:
            return [("method.rewards", f"grpo needs the metrics that reward an answer; add e.g. rewards: [token_f1] "
                     f"(allowed: {', '.join(scorable)})")]
        return [("method.rewards", f"{name!r} cannot reward a grpo answer (allowed: {', '.join(scorable)})")
                for name in self.rewards if name not in scorable]

    @property
    def rl(self) -> str | None:
        """The trl method axolotl runs (`rl:`): a preference kind or grpo; None for supervised fine-tuning."""
        return self.kind if self.kind in RL_KINDS else None

    @property
    def preference(self) -> str | None:
        """The preference method (dpo, ipo, orpo, kto, simpo), or None for supervised fine-tuning."""
        return self.kind if self.kind in PREFERENCE_KINDS else None

    @property
    def weights(self) -> Literal["full", "lora", "qlora"]:
        """What trains: the kind itself for supervised kinds, method.tuning (default lora) for preference kinds."""
        return self.kind if self.kind in SFT_KINDS else (self.tuning or "lora")

    @property
    def adapter(self) -> LoraSpec | None:
        """The LoRA settings in force (defaults when an adapter method leaves them out)."""
        return None if self.weights == "full" else (self.lora or LoraSpec())


class RegexExtract(Section):
    """Template variables pulled out of one text column by a regex with named groups."""

    column: str = Field(description="the text column the pattern reads")
    pattern: str = Field(description="a regular expression with named groups, one per template variable "
                         "(matched with re.DOTALL)")

    @field_validator("pattern")
    @classmethod
    def _compiles_with_groups(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern, re.DOTALL)
        except re.error as err:
            raise ValueError(f"not a valid regular expression: {err}") from None
        if not compiled.groupindex:
            raise ValueError("the pattern has no named groups, e.g. (?P<instruction>...)")
        return pattern

    @property
    def variables(self) -> set[str]:
        return set(re.compile(self.pattern).groupindex)


PREFERENCE_FIELDS = {"prompt", "chosen", "rejected", "completion", "label"}


class DatasetSpec(Section):
    source: str = Field(description="hf:<id> or file:<path .jsonl|.json|.csv|.parquet> (relative to the project)")
    revision: str | None = Field(None, description="hub dataset revision")
    config: str | None = Field(None, description="hub dataset configuration name")
    split: str = Field("train", description="split of the source to read")
    fields: dict[str, str] = Field(default_factory=dict, description="template variable -> dataset column")
    extract: RegexExtract | None = Field(None, description="template variables cut out of one text column by a "
                                         "regex with named groups (instead of, or beside, fields)")
    weight: float = Field(1.0, gt=0, description="mixing ratio: rows taken = weight x rows available")
    use: Literal["split", "train", "val", "test"] = Field(
        "split", description="split: divided by data.split; train/val/test: taken whole into that split")

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, source: str) -> str:
        if not source.startswith(("hf:", "file:")):
            raise ValueError(f"{source!r} has no scheme; write hf:<dataset id> or file:<path>")
        if source.startswith("file:") and not source.endswith((".jsonl", ".json", ".csv", ".parquet")):
            raise ValueError(f"{source!r}: local files must be .jsonl, .json, .csv or .parquet")
        return source

    @property
    def mapped(self) -> set[str]:
        """Names this dataset maps: template variables, and for preference data prompt/chosen/rejected/..."""
        return set(self.fields) | (self.extract.variables if self.extract else set())

    @property
    def preference_shape(self) -> Literal["pairs", "kto"] | None:
        """pairs: chosen and rejected mapped; kto: completion and label; None: supervised rows."""
        mapped = self.mapped
        if mapped & {"chosen", "rejected"}:
            return "pairs"
        return "kto" if mapped & {"completion", "label"} else None

    @property
    def variables(self) -> set[str]:
        """Template variables this dataset provides. In preference data the prompt plays the instruction and each
        answer the output; with no prompt mapped, chosen/rejected hold whole conversations (messages)."""
        mapped = self.mapped
        if self.preference_shape is None:
            return mapped
        rest = mapped - PREFERENCE_FIELDS
        return rest | ({"instruction", "output"} if "prompt" in mapped else {"messages"})


class SplitSpec(Section):
    val: int | float = Field(0.02, ge=0, description="fraction (<1) or row count (>=1) held out for validation")
    test: int | float = Field(0, ge=0, description="fraction (<1) or row count (>=1) held out for evaluation")
    seed: int = Field(42, description="seed of the shuffle that assigns rows to train/val/test")


class DataSpec(Section):
    datasets: list[DatasetSpec] = Field(min_length=1, description="the sources, mixed by weight")
    template: str = Field(description="templates/<name>.jinja, or 'tokenizer' for the model's chat template")
    system: str | None = Field(None, description="system prompt for templates that take one")
    max_seq_len: int = Field(2048, gt=0, description="tokens per training row (see data.overlength)")
    packing: bool = Field(True, description="pack several rows into one sequence (off for preference methods)")
    overlength: Literal["truncate", "drop"] = Field("drop", description="rows longer than max_seq_len")
    incomplete: Literal["drop", "error"] = Field("drop", description="rows with an empty or missing field")
    dedupe: bool = Field(True, description="remove exact duplicate rows")
    split: SplitSpec = Field(SplitSpec(), description="how rows with use: split are divided into train/val/test")


class TrainSpec(Section):
    epochs: float | None = Field(1, gt=0, description="passes over the training split (train.max_steps stops "
                                 "sooner)")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    micro_batch_size: int = Field(1, gt=0, description="sequences per device per forward pass")
    gradient_accumulation_steps: int | None = Field(None, gt=0, description="micro batches per optimizer step "
                                                    "(default: derived from global_batch_size, else 1)")
    global_batch_size: int | None = Field(None, gt=0, description="micro x accumulation x gpus x nodes")
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate")
    schedule: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="learning-rate schedule after warmup")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of the steps spent warming up")
    weight_decay: float = Field(0.0, ge=0, description="the optimizer's weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    optimizer: str = Field("adamw_torch", description="the optimizer name axolotl passes to transformers")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                         "memory, more compute")
    logging_steps: int = Field(1, gt=0, description="a metrics.jsonl row every N optimizer steps")
    eval_steps: int | None = Field(None, gt=0, description="validation loss every N steps")
    save_steps: int | None = Field(
        100, gt=0, description="checkpoint every N optimizer steps: where a resumed or requeued run goes on from "
        "(each hardware profile sets its own; null: no checkpoints, a stopped run starts over)")
    save_total_limit: int | None = Field(2, gt=0, description="checkpoints kept (older ones are deleted); null: all")
    seed: int = Field(42, description="training seed (recipe train --seeds trains one run per seed)")
    deterministic: bool = Field(
        False, description="deterministic kernels (torch.use_deterministic_algorithms), a fixed thread count and "
        "seeds set in the trainer process: the same machine gives the same losses run after run (slower)")

    def problems(self) -> list[tuple[str, str]]:
        if self.epochs is None and self.max_steps is None:
            return [("train.epochs", "neither train.epochs nor train.max_steps is set; set one")]
        return []


class NcclSpec(Section):
    timeout_s: int = Field(1800, gt=0, description="collective timeout")
    debug: Literal["OFF", "WARN", "INFO", "TRACE"] = Field("WARN", description="NCCL_DEBUG in the launch files")


class HardwareSpec(Section):
    profile: str = Field(description="name of the hardware profile (recipes/_base/hardware/<profile>.yaml)")
    device: Literal["cpu", "cuda"] = Field("cuda", description="where training runs")
    gpu_model: GpuName | None = Field(None, description="a GPU model of the table in runner/recipe/gpus.py, "
                                      "e.g. a100-80g, h100-80g: its memory (recipe fit) and peak FLOP/s (MFU)")
    price_per_gpu_hour: float | None = Field(None, gt=0, description="price of one GPU for one hour (USD), for "
                                             "the cost estimate of `recipe fit`")
    gpus: int = Field(1, gt=0, description="processes per node (GPUs on cuda, CPU processes on cpu)")
    nodes: int = Field(1, gt=0, description="machines (multi-node launches: torchrun, SLURM)")
    deepspeed: Literal["none", "zero2", "zero3", "zero3-offload"] = Field(
        "none", description="DeepSpeed ZeRO stage; zero2 and zero3 need more than one process")
    attention: Literal["flash", "sdpa", "eager"] = Field("sdpa", description="attention kernel; flash only on "
                                                         "cuda")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "bf16", description="bf16 | fp16 | fp32 | auto; on cpu: bf16 (needs a CPU with bf16 instructions, checked "
        "when training starts), fp32, or auto: bf16 where this machine's CPU computes it natively, else fp32 "
        "(decided when a run is made, recorded in its recipe.yaml)")
    nccl: NcclSpec = Field(NcclSpec(), description="NCCL settings written into multi-GPU launch files")

    @property
    def world_size(self) -> int:
        return self.gpus * self.nodes

    def problems(self) -> list[tuple[str, str]]:
        problems = []
        if self.device == "cpu" and self.attention == "flash":
            problems.append(("hardware.attention", f"flash attention needs a GPU but profile {self.profile!r} is "
                             "cpu; use sdpa or eager"))
        if self.device == "cpu" and self.precision == "fp16":
            problems.append(("hardware.precision", "fp16 training is not supported on cpu; use bf16 (on a CPU with "
                             "AVX-512 BF16, AMX or Arm BF16; checked when training starts) or fp32"))
        if self.device == "cpu" and self.precision == "bf16" and self.deepspeed != "none":
            problems.append(("hardware.precision", f"bf16 on cpu runs without DeepSpeed, but deepspeed is "
                             f"{self.deepspeed}; use precision: fp32 or deepspeed: none"))
        if self.deepspeed in ("zero2", "zero3") and self.world_size < 2:
            problems.append(("hardware.deepspeed", f"{self.deepspeed} shards across processes but gpus x nodes = "
                             f"{self.gpus} x {self.nodes} = 1; use more processes, zero3-offload, or none"))
        return problems


class EvalSpec(Section):
    suite: str | None = Field(None, description="eval_suites/<name>.yaml")
    compare_base: bool = Field(True, description="evaluate the base model beside the fine-tuned one (when "
                               "eval.candidates is not set)")
    max_items: int | None = Field(None, gt=0, description="cap on test items (quick looks)")
    max_new_tokens: int = Field(128, gt=0, description="longest generated answer, in tokens")
    batch_size: int = Field(8, gt=0, description="prompts generated together during evaluation")
    candidates: list[str | dict[str, str]] | None = Field(
        None, description="what answers the items: base, finetuned, merged (run/merged/), export:gguf-QUANT (a "
        "`recipe export` file, run by llama.cpp), base+fewshot:K, run:RECIPE[@ID], a model, {model, label, template: "
        "recipe|tokenizer}, or an OpenAI-compatible server: endpoint:MODEL@URL or {endpoint: URL, model, label, "
        "api_key_env} (default: the suite's, else base and finetuned)")
    reference: str | None = Field(None, description="the candidate every other is compared with (default finetuned)")

    @model_validator(mode="after")
    def _candidates(self):

        if self.candidates is not None:
            candidates.check(self.candidates, self.reference)
        elif self.reference is not None:
            raise ValueError("eval.reference needs eval.candidates (the list it is one of)")
        return self


class WandbSpec(Section):
    project: str = Field(description="the W&B project")
    entity: str | None = Field(None, description="the W&B team or user (default: yours)")


class TrackingSpec(Section):
    wandb: WandbSpec | None = Field(None, description="log to W&B (offline files in the run unless "
                                    "WANDB_MODE=online)")
    tensorboard: bool = Field(False, description="write TensorBoard event files into the run")


def _hub_id(repo_id: str | None) -> str | None:
    """A hub repo id as huggingface_hub accepts it ('name' or 'namespace/name'), checked before anything runs."""
    if repo_id is not None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            raise ValueError(f"{repo_id!r} is not a valid hub repo id: {err}") from None
    return repo_id


HubId = Annotated[str | None, AfterValidator(_hub_id)]
LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


def _license_id(license_id: str | None) -> str | None:
    if license_id is not None and not LICENSE_ID.match(license_id):
        raise ValueError(f"{license_id!r} is not a hub license id; write one from "
                         "https://huggingface.co/docs/hub/repositories-licenses, e.g. apache-2.0, mit, llama3 or other")
    return license_id


class PublishSpec(Section):
    """What `recipe publish` uploads, and what the model card (model/README.md) says."""

    merge_adapter: bool = Field(False, description="merge the LoRA adapter after training; publish the merged model")
    hub_model_id: HubId = Field(None, description="the repo `recipe publish` uploads to (namespace/name)")
    license: Annotated[str | None, AfterValidator(_license_id)] = Field(
        None, description="the card's license id (e.g. apache-2.0, llama3, other); default: the base model card's "
        "license, when it has one")
    base_model: HubId = Field(None, description="the base model's hub id for the card, when model.base is a local "
                              "folder, .gguf or pkg:// file (a hub id in model.base is used as it is)")


class Recipe(Section):
    """A whole recipe after `extends` and overrides are applied."""

    schema_: Literal[1] = Field(alias="schema", description="recipe-language version")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="the recipe's name: its file name")
    version: SemVer = Field(description="the recipe's own semantic version, bumped in review")
    description: str = Field("", description="one line on what the recipe is for (listed by recipe list)")
    model: ModelSpec = Field(description="the base model")
    method: MethodSpec = Field(description="what trains and how: full, LoRA, QLoRA, preference methods, GRPO")
    data: DataSpec = Field(description="datasets, the prompt template and how rows are prepared")
    train: TrainSpec = Field(TrainSpec(), description="hyperparameters")
    hardware: HardwareSpec = Field(description="where it trains; normally from a recipes/_base/hardware profile")
    eval: EvalSpec = Field(EvalSpec(), description="the eval suite and what answers its items")
    tracking: TrackingSpec = Field(TrackingSpec(), description="W&B and TensorBoard")
    publish: PublishSpec = Field(PublishSpec(), description="what recipe publish uploads and the model card says")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def problems(self) -> list[tuple[str, str]]:
        """Cross-section checks as (key path, message); empty when the recipe is consistent."""
        problems = [*self.method.problems(), *self.train.problems(), *self.hardware.problems(),
                    *self._batch_problems(), *self._method_problems()]
        limit = self.model.context_length
        if limit is not None and self.data.max_seq_len > limit:
            problems.append(("data.max_seq_len", f"{self.data.max_seq_len} exceeds the model's context length "
                             f"{limit} (model.context_length)"))
        return problems

    def _batch_problems(self) -> list[tuple[str, str]]:
        train, world = self.train, self.hardware.world_size
        per_step = train.micro_batch_size * world
        if train.global_batch_size is None or train.gradient_accumulation_steps is None:
            if train.global_batch_size is not None and train.global_batch_size % per_step:
                return [("train.global_batch_size", f"{train.global_batch_size} is not a multiple of "
                         f"micro_batch_size x gpus x nodes = {train.micro_batch_size} x {self.hardware.gpus} x "
                         f"{self.hardware.nodes} = {per_step}")]
            return []
        implied = per_step * train.gradient_accumulation_steps
        if implied != train.global_batch_size:
            return [("train.global_batch_size", f"{train.global_batch_size} != micro_batch_size x "
                     f"gradient_accumulation_steps x gpus x nodes = {train.micro_batch_size} x "
                     f"{train.gradient_accumulation_steps} x {self.hardware.gpus} x {self.hardware.nodes} = "
                     f"{implied}; set only one of global_batch_size and gradient_accumulation_steps")]
        return []

    def _method_problems(self) -> list[tuple[str, str]]:
        problems = []
        if self.method.weights == "qlora" and self.hardware.device != "cuda":
            key = "method.kind" if self.method.kind == "qlora" else "method.tuning"
            problems.append((key, f"qlora needs 4-bit kernels on a GPU, but hardware profile "
                             f"{self.hardware.profile!r} is cpu; use lora on cpu or a GPU profile"))
        return problems + self._preference_problems()

    def _preference_problems(self) -> list[tuple[str, str]]:
        """Datasets shaped for the method: pairs for dpo/ipo/orpo/simpo, labeled rows for kto, neither for SFT."""
        kind, problems = self.method.preference, []
        wants = {None: None, "kto": "kto"}.get(kind, "pairs")
        needs = {"pairs": ["chosen", "rejected"], "kto": ["completion", "label"]}
        for index, spec in enumerate(self.data.datasets):
            key, shape = f"data.datasets.{index}.fields", spec.preference_shape
            if wants is not None and shape is None and spec.use == "test":
                continue  # held-out rows are scored on prompt + reference, never trained: supervised rows serve
            if wants is None and shape is not None:
                takes = "prompts with a reference" if self.method.rl else "supervised rows"
                problems.append((key, f"maps {sorted(spec.mapped & PREFERENCE_FIELDS)}, preference data, but "
                                 f"method.kind is {self.method.kind!r}, which takes {takes}; set method.kind to "
                                 f"{'kto' if shape == 'kto' else 'dpo (or ipo, orpo, simpo)'}"))
            elif wants is not None and shape != wants:
                missing = [name for name in needs[wants] if name not in spec.mapped]
                problems.append((key, f"method.kind {kind} trains on {' + '.join(needs[wants])} but this dataset "
                                 f"maps no {' and no '.join(missing)}; map them, e.g. `{missing[0]}: <column>`"
                                 + (" (kto takes completion + label rows, not pairs)" if shape == "pairs" else "")))
            elif wants is not None:
                missing = [name for name in needs[wants] if name not in spec.mapped]
                if missing:
                    problems.append((key, f"method.kind {kind} needs {' and '.join(needs[wants])} but "
                                     f"{missing[0]} is not mapped; add `{missing[0]}: <column>`"))
        if self.method.rl is not None and self.data.packing:
            problems.append(("data.packing", f"{self.method.rl} trains on whole prompt/answer rows, which are not "
                             "packed; set data.packing: false"))
        if self.method.kind == "grpo":
            generations = self.method.generations or 4
            if self.global_batch % generations:
                problems.append(("method.generations", f"trl samples {generations} answers per prompt from a batch of "
                                 f"{self.global_batch} (micro_batch_size x accumulation x processes); make the batch a "
                                 f"multiple of {generations}"))
        if kind == "simpo" and self.train.warmup_ratio:
            problems.append(("train.warmup_ratio", "axolotl's simpo trainer takes no warmup_ratio; set "
                             "train.warmup_ratio: 0"))
        return problems

    @property
    def gradient_accumulation(self) -> int:
        """Accumulation steps: given, or derived from the global batch (global / (micro x gpus x nodes))."""
        if self.train.gradient_accumulation_steps is not None:
            return self.train.gradient_accumulation_steps
        if self.train.global_batch_size is not None:
            return self.train.global_batch_size // (self.train.micro_batch_size * self.hardware.world_size)
        return 1

    @property
    def global_batch(self) -> int:
        return self.train.micro_batch_size * self.gradient_accumulation * self.hardware.world_size
