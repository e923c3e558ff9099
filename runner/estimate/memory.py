"""Peak memory per GPU (or per CPU process) of a training setup: pure arithmetic over what meta.py measured.

Bytes per parameter (P: all parameters, N: trainable LoRA parameters, s: 2 for bf16/fp16, 4 for fp32):
- weights: P x s; QLoRA stores every linear weight but the LM head as NF4 with double quantization (4 bits, an
  8-bit scale per block of 64, an fp32 scale per 256 blocks: 0.516 bytes) and the rest in bf16. ZeRO-3
  divides them by the world size and gathers two layers at a time; zero3-offload keeps them on the host.
- trainable parameters: LoRA adapters in fp32 (peft keeps adapters of a bf16 model in fp32); for a full
  fine-tune under DeepSpeed the fp32 master copy (4 P), which ZeRO shards. Without DeepSpeed the bf16 weights
  train in place: transformers' Trainer keeps no fp32 copy of a model loaded in bf16.
- gradients: the dtype of what trains (P x s, or N x 4); ZeRO-2/3 shard them.
- optimizer states: AdamW keeps 2 states (8-bit optimizers 2 bytes, Lion 1 state, SGD none) in the dtype of
  the weights they update (fp32 under DeepSpeed); ZeRO-2/3 shard them, zero3-offload keeps them on the host, and
  paged optimizers let the driver move them there (not counted). The non-fused torch AdamW allocates one more
  state-sized buffer during its step.
- activations: meta.Activations for the micro batch and sequence length; with gradient checkpointing, each
  layer's input plus one layer recomputed during backward.
- working buffers: the fp32 gradient of the upcast logits (2 x 4 bytes x batch x seq x vocab while the loss's
  backward runs), QLoRA's dequantized weight, ZeRO-3's gathered layers, DDP's gradient buckets.
- margin: CUDA context (and NCCL's buffers when there are several processes) plus the allocator's
  fragmentation; on a CPU, the Python process itself (torch, transformers, axolotl) instead of a CUDA context.
The peak is the larger of the backward pass (everything but the step's buffer) and the optimizer step
(everything but activations); gradients are counted during backward, as they are from the second micro batch
of an accumulation on.
"""
from __future__ import annotations

from typing import Literal

from runner.core.contracts import Record
from runner.estimate.meta import Activations, Architecture
from runner.recipe import precision as precisions
from runner.recipe.schema import Recipe

GIB = 2 ** 30
NF4_DOUBLE_QUANT = 0.5 + 1 / 64 + 4 / (64 * 256)  # bytes per 4-bit weight with its scales
NF4 = 0.5 + 4 / 64  # without double quantization: an fp32 scale per block of 64
DS_BUCKETS = 2 * 50_000_000  # DeepSpeed's reduce bucket (runner/train/engine.py: 5e7 elements), two in flight


class Framework(Record):
    """How the training code lays out memory. The defaults are this runner's stack (axolotl on transformers and
    peft); bench/published_memory.json describes other frameworks' runs with the same fields."""

    name: str = "axolotl (transformers + peft)"
    adapter_fp32: bool = True  # LoRA adapters (their grads and states too) in fp32, not the compute dtype
    loss: Literal["upcast", "chunked", "fused"] = "upcast"  # upcast: the whole logits tensor goes to fp32 for the
    # loss and its fp32 gradient is built at once; chunked: chunk by chunk; fused: no fp32 log-probabilities kept
    quantized_keeps_input: bool = False  # a 4-bit linear layer keeps its input for backward (bitsandbytes < 0.42)
    double_quant: bool = True  # QLoRA's 4-bit scales quantized again (axolotl sets bnb_4bit_use_double_quant)
    foreach_step_buffer: bool = True  # torch AdamW (not fused) allocates a state-sized buffer in its step
    cuda_context_gib: float = 0.75  # CUDA context, cuBLAS workspace
    nccl_gib: float = 0.5  # NCCL buffers when there is more than one process
    cpu_runtime_gib: float = 0.9  # a CPU training process before any model (Python, torch, transformers, axolotl)
    fragmentation: float = 0.08  # allocator slack over what is allocated
    master_weights: bool = True  # a sharded full fine-tune keeps fp32 master weights and fp32 states (DeepSpeed);
    # False: the bf16 weights and bf16 states are sharded as they are (FSDP with pure bf16)


class Setup(Record):
    """Everything the estimate reads from a recipe."""

    method: Literal["full", "lora", "qlora"]
    precision: Literal["bf16", "fp16", "fp32"]
    device: Literal["cuda", "cpu"]
    world_size: int
    nodes: int = 1
    deepspeed: Literal["none", "zero2", "zero3", "zero3-offload"] = "none"
    micro_batch: int
    seq_len: int
    gradient_checkpointing: bool = False
    attention: Literal["flash", "sdpa", "eager"] = "sdpa"
    optimizer: str = "adamw_torch"
    framework: Framework = Framework()

    @classmethod
    def of(cls, recipe: Recipe) -> Setup:
        hw, train = recipe.hardware, recipe.train
        return cls(method=recipe.method.weights, precision=precisions.effective_precision(hw), device=hw.device,
                   world_size=hw.world_size,
                   nodes=hw.nodes, deepspeed=hw.deepspeed, micro_batch=train.micro_batch_size,
                   seq_len=recipe.data.max_seq_len, gradient_checkpointing=train.gradient_checkpointing,
                   attention=hw.attention, optimizer=train.optimizer)

    @property
    def size(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def fused_attention(self) -> bool:
        return self.attention != "eager"


class Part(Record):
    name: str
    gib: float
    note: str = ""


class MemoryEstimate(Record):
    parts: list[Part]  # what is alive at the peak
    phase: Literal["backward", "optimizer step"]
    allocated_gib: float  # what the framework allocates at its peak (torch.cuda.max_memory_allocated)
    peak_gib: float  # allocated + margin: what the device must hold
    activations_gib: dict[str, float]  # {"with_checkpointing": .., "without_checkpointing": ..}
    host_gib: float | None = None  # host memory per node that zero3-offload needs


def _gib(value: float) -> float:
    return round(value / GIB, 2)


def state_bytes(optimizer: str, param_bytes: int) -> float:
    """Optimizer state bytes per trainable parameter whose weights are param_bytes wide."""
    name = optimizer.lower()
    if "8bit" in name:
        return 2.0  # two 1-byte states
    if "32bit" in name:
        return 8.0  # two fp32 states whatever the weights (bitsandbytes' 32-bit and paged optimizers)
    if name.startswith("lion"):
        return float(param_bytes)
    if name.startswith(("sgd", "adafactor")):
        return 0.0  # SGD without momentum (transformers' default); Adafactor's factored rows and columns
    return 2.0 * param_bytes  # AdamW and friends; an unknown optimizer is taken as AdamW


def activation_bytes(setup: Setup, arch: Architecture, acts: Activations, checkpointing: bool) -> float:
    batch, seq, layers = setup.micro_batch, setup.seq_len, arch.layers
    layer = acts.per_token * seq + acts.per_token2 * seq * seq
    outside = (acts.outside + (acts.loss if setup.framework.loss != "fused" else 0)) * seq
    if checkpointing:
        return batch * (layers * acts.checkpoint * seq + layer + outside)
    return batch * (layers * layer + outside)


def _parameter_parts(setup: Setup, arch: Architecture, trainable: int) -> dict[str, float]:
    """weights, trainable (adapters or master copy), gradients, optimizer states, step buffer, gather, in bytes."""
    size, world, ds = setup.size, setup.world_size, setup.deepspeed
    shard = world if ds in ("zero2", "zero3", "zero3-offload") else 1
    frozen = arch.params_total
    nf4 = NF4_DOUBLE_QUANT if setup.framework.double_quant else NF4
    weights = (arch.params_quantizable * nf4 + (frozen - arch.params_quantizable) * size
               if setup.method == "qlora" else frozen * size)
    gathered = nf4 if setup.method == "qlora" else size  # a sharded 4-bit layer is gathered as 4-bit
    gather = 2 * arch.params_layer_max * gathered if ds in ("zero3", "zero3-offload") else 0
    weights = 0 if ds == "zero3-offload" else weights / (world if ds == "zero3" else 1)
    sharded_master = ds != "none" and setup.framework.master_weights and size < 4  # DeepSpeed's fp32 copy
    if setup.method == "full":
        master = 4 * arch.params_total / shard if sharded_master else 0
        state_size, grads, count = (4 if sharded_master else size), arch.params_total * size / shard, frozen
    else:
        adapter = 4 if setup.framework.adapter_fp32 else size
        params_shard = world if ds in ("zero3", "zero3-offload") else 1  # ZeRO-3 partitions the adapters too
        master, state_size, count = trainable * adapter / params_shard, adapter, trainable
        grads = trainable * adapter / shard
    per_param = state_bytes(setup.optimizer, state_size)
    states = count * per_param / shard
    if ds == "zero3-offload":
        master = states = 0
    if "paged" in setup.optimizer:
        states = 0  # unified memory: the driver moves the states to the host when the GPU runs short
    foreach = (setup.framework.foreach_step_buffer and setup.device == "cuda"  # torch picks foreach for CUDA only
               and "fused" not in setup.optimizer and "bit" not in setup.optimizer)
    step = count * per_param / 2 if ds == "none" and foreach else 0  # one state-sized temporary
    return {"weights": weights, "trainable": master, "gradients": grads, "optimizer": states, "step": step,
            "gather": gather}


def _buffers(setup: Setup, arch: Architecture, grads: float) -> dict[str, float]:
    tokens = setup.micro_batch * setup.seq_len
    found = {"logits": 8 * tokens * arch.vocab_size if setup.framework.loss == "upcast" else 0.0,
             "dequant": 2 * arch.linear_max * 2 if setup.method == "qlora" else 0.0,
             "buckets": (grads if setup.deepspeed == "none" and setup.world_size > 1 else
                         DS_BUCKETS * setup.size if setup.deepspeed != "none" else 0.0)}
    return found


def estimate(setup: Setup, arch: Architecture, acts: Activations, trainable: int) -> MemoryEstimate:
    """Peak memory per process for this setup (see the module docstring for every term)."""
    params = _parameter_parts(setup, arch, trainable)
    buffers = _buffers(setup, arch, params["gradients"])
    with_gc = activation_bytes(setup, arch, acts, True)
    without_gc = activation_bytes(setup, arch, acts, False)
    activations = with_gc if setup.gradient_checkpointing else without_gc
    static = params["weights"] + params["trainable"] + params["optimizer"] + buffers["buckets"]
    backward_buffers = buffers["logits"] + buffers["dequant"] + params["gather"]
    backward = static + params["gradients"] + activations + backward_buffers
    step = static + params["gradients"] + params["step"]
    phase = "backward" if backward >= step else "optimizer step"
    allocated = max(backward, step)
    framework = setup.framework
    if setup.device == "cpu":
        margin = framework.cpu_runtime_gib * GIB + framework.fragmentation * allocated
        margin_note = "the Python process (torch, transformers, axolotl) and allocator slack"
    else:
        margin = ((framework.cuda_context_gib + (framework.nccl_gib if setup.world_size > 1 else 0)) * GIB
                  + framework.fragmentation * allocated)
        margin_note = "CUDA context" + (", NCCL buffers" if setup.world_size > 1 else "") + ", fragmentation"
    in_phase = backward_buffers + buffers["buckets"] if phase == "backward" else params["step"] + buffers["buckets"]
    parts = [
        Part(name="weights", gib=_gib(params["weights"]), note=_weights_note(setup)),
        Part(name="trainable parameters", gib=_gib(params["trainable"]), note=_trainable_note(setup, trainable)),
        Part(name="gradients", gib=_gib(params["gradients"])),
        Part(name="optimizer states", gib=_gib(params["optimizer"]), note=_optimizer_note(setup)),
        Part(name="activations", gib=_gib(activations if phase == "backward" else 0),
             note=_activations_note(setup, phase)),
        Part(name="working buffers", gib=_gib(in_phase), note=_buffers_note(setup, phase)),
        Part(name="margin", gib=_gib(margin), note=margin_note),
    ]
    host = None
    if setup.deepspeed == "zero3-offload":  # weights, and the fp32 master, states and gradients of what trains
        training = arch.params_total if setup.method == "full" else trainable
        host = _gib((arch.params_total * setup.size + training * (4 + state_bytes(setup.optimizer, 4) + 4))
                    / setup.nodes)
    activations_gib = {"with_checkpointing": _gib(with_gc), "without_checkpointing": _gib(without_gc)}
    return MemoryEstimate(parts=parts, phase=phase, allocated_gib=_gib(allocated), peak_gib=_gib(allocated + margin),
                          activations_gib=activations_gib, host_gib=host)


def _weights_note(setup: Setup) -> str:
    dtype = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}[setup.precision]
    quant = "NF4 + double quantization" if setup.framework.double_quant else "NF4"
    note = f"{quant} (linear layers), bf16 elsewhere" if setup.method == "qlora" else dtype
    if setup.deepspeed == "zero3":
        note += f", ZeRO-3: 1/{setup.world_size} per GPU"
    elif setup.deepspeed == "zero3-offload":
        note = "offloaded to host memory (zero3-offload)"
    return note


def _trainable_note(setup: Setup, trainable: int) -> str:
    if setup.method != "full":
        return f"{trainable:,} LoRA parameters in {'fp32' if setup.framework.adapter_fp32 else setup.precision}"
    if setup.deepspeed != "none" and setup.size < 4 and setup.framework.master_weights:
        return "fp32 master copy kept by DeepSpeed" + ("" if setup.deepspeed != "zero3-offload" else " (on the host)")
    return "the weights themselves (no separate copy)"


def _optimizer_note(setup: Setup) -> str:
    if "paged" in setup.optimizer:
        return f"{setup.optimizer}: paged to host memory when the GPU runs short (not counted)"
    where = {"zero2": f", ZeRO-2: 1/{setup.world_size}", "zero3": f", ZeRO-3: 1/{setup.world_size}",
             "zero3-offload": ", on the host (zero3-offload)", "none": ""}[setup.deepspeed]
    return f"{setup.optimizer}{where}"


def _activations_note(setup: Setup, phase: str) -> str:
    if phase != "backward":
        return "freed before the optimizer step"
    checkpointing = "gradient checkpointing" if setup.gradient_checkpointing else "no gradient checkpointing"
    attention = ("eager attention (keeps seq x seq per head)" if setup.attention == "eager"
                 else f"{setup.attention} attention (no seq x seq matrix)")
    return f"micro batch {setup.micro_batch} x {setup.seq_len} tokens, {checkpointing}, {attention}"


def _buffers_note(setup: Setup, phase: str) -> str:
    if phase != "backward":
        return "AdamW step temporaries (torch foreach implementation)"
    notes = ["fp32 logits gradient" if setup.framework.loss == "upcast" else ""]
    notes += ["4-bit dequantization" if setup.method == "qlora" else ""]
    notes += ["ZeRO-3 gathered layers" if setup.deepspeed in ("zero3", "zero3-offload") else ""]
    notes += ["gradient buckets" if setup.world_size > 1 else ""]
    return ", ".join(n for n in notes if n)
