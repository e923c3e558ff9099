"""What the estimate needs to know about a model, learned from the model itself on the meta device.

The model is built from its config on the meta device (accelerate's init_empty_weights: shapes, no memory),
so parameter counts are the real module's, not a formula: total, embeddings, the linear weights that 4-bit
quantization replaces, the largest decoder layer, and LoRA's trainable count from peft on the same model.

Activation memory is measured the same way: the real forward pass and loss of a 1-layer and a 2-layer copy of
the model run on meta tensors (no memory, no arithmetic) while a saved-tensor hook adds up every tensor autograd
keeps for the backward pass. Two layer counts and three sequence lengths separate the per-layer bytes per
token, the per-layer bytes per token squared (eager attention's probabilities) and the bytes outside the
layers (embeddings, final norm, logits, loss). During the measured pass:
- fused attention (flash, or sdpa on a GPU) keeps what flash attention keeps: q, k, v, the output and the
  log-sum-exp, never the seq x seq matrix;
- mixed precision follows autocast's rules: matmuls run in the compute dtype (fp32 LoRA adapters get a bf16
  copy of their input, as on a GPU), norms, softmax and the loss in fp32.
Results are cached in <cache>/estimate/<config sha>.json, so a second estimate imports neither torch nor
transformers.
"""
from __future__ import annotations

import contextlib
import json
from importlib import metadata

from runner.core import paths
from runner.core.atomic import write_json_atomic
from runner.core.contracts import Record
from runner.core.errors import Problem, UserError
from runner.estimate.model_config import ModelConfig
from runner.recipe.schema import LoraSpec

CACHE_FORMAT = 1
LENGTHS = (64, 128, 256)  # the sequence lengths measured; the estimate extrapolates exactly (terms are polynomial)


class Architecture(Record):
    model_type: str
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int | None = None
    vocab_size: int
    max_positions: int | None = None
    tied_embeddings: bool
    params_total: int  # unique parameters (tied embeddings counted once)
    params_embedding: int
    params_lm_head: int  # 0 when tied to the embeddings
    params_quantizable: int  # linear weights bitsandbytes replaces with 4-bit (every nn.Linear but the LM head)
    params_layer_max: int  # the largest decoder layer (what ZeRO-3 gathers at once)
    linear_max: int  # the largest linear weight (what a 4-bit matmul dequantizes at once)
    linear_names: list[str]  # module names a LoRA target list may use


class Activations(Record):
    """Bytes autograd keeps per sequence: layers x (per_token x T + per_token2 x T^2) + (outside + loss) x T."""

    per_token: float
    per_token2: float = 0.0
    outside: float  # embeddings, final norm, logits (per token)
    loss: float  # what the loss keeps beyond the logits (fp32 log-probabilities), per token
    checkpoint: float  # per token per layer when gradient checkpointing keeps only each layer's input
    how: str  # "meta forward pass" or why a formula stood in


def _cache_file(config: ModelConfig):
    return paths.cache_dir() / "estimate" / f"{config.key[:24]}.json"


def _versions() -> dict[str, str]:
    found = {}
    for name in ("transformers", "peft", "torch"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "none"
    return found


def _read_cache(config: ModelConfig) -> dict:
    try:
        data = json.loads(_cache_file(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if data.get("format") != CACHE_FORMAT or data.get("versions") != _versions():
        return {}  # another transformers may build the model differently
    return data


def _cached(config: ModelConfig, section: str, key: str, compute):
    """cache[section][key], computing and storing it when missing (a read-only cache is only slower)."""
    data = _read_cache(config)
    found = data.get(section, {}).get(key)
    if found is not None:
        return found
    value = compute()
    data = _read_cache(config) or {"format": CACHE_FORMAT, "versions": _versions(), "source": config.source}
    data.setdefault(section, {})[key] = value
    with contextlib.suppress(OSError):
        _cache_file(config).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(_cache_file(config), data)
    return value


def _quiet():
    """transformers' and peft's own messages stay off the terminal (the estimate prints its own)."""
    import warnings

    from transformers.utils import logging as hf_logging

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    stack.callback(hf_logging.set_verbosity, verbosity)
    return stack


def hf_config(config: ModelConfig, trust_remote_code: bool = False, layers: int | None = None):
    """The transformers config object (optionally cut to `layers` decoder layers)."""
    from transformers import AutoConfig

    data = dict(config.data)
    model_type = data.pop("model_type")
    try:
        made = AutoConfig.for_model(model_type, **data)
    except ValueError:  # a model type this transformers does not know: only remote code can build it
        if not trust_remote_code:
            raise UserError(Problem("recipe", "model.base", f"transformers {_versions()['transformers']} does not "
                                    f"know model_type {model_type!r} ({config.source}); the estimate builds the "
                                    "model from its config, so it needs an architecture transformers ships")) from None
        raise
    if layers is not None:
        made.num_hidden_layers = layers
        if isinstance(getattr(made, "layer_types", None), list):
            made.layer_types = made.layer_types[:layers]
    made.use_cache = False
    return made


def _decoder_layers(model):
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def _count(model, cfg) -> dict:
    import torch

    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    layers = _decoder_layers(model)
    return {
        "model_type": cfg.model_type, "hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "kv_heads": getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_kv_heads", None)
        or (1 if getattr(cfg, "multi_query", False) else cfg.num_attention_heads),
        "intermediate_size": getattr(cfg, "intermediate_size", None), "vocab_size": cfg.vocab_size,
        "max_positions": getattr(cfg, "max_position_embeddings", None), "tied_embeddings": tied,
        "params_total": sum(p.numel() for p in model.parameters()), "params_embedding": embedding.numel(),
        "params_lm_head": 0 if tied or head is None else head.weight.numel(),
        "params_quantizable": sum(m.weight.numel() for _, m in linears),
        "params_layer_max": max(sum(p.numel() for p in layer.parameters()) for layer in layers),
        "linear_max": max(m.weight.numel() for _, m in linears),
        "linear_names": sorted({name.rsplit(".", 1)[-1] for name, _ in linears}),
    }


def architecture(config: ModelConfig, trust_remote_code: bool = False) -> Architecture:
    """Counts from the model built on the meta device with accelerate's init_empty_weights."""

    def build() -> dict:
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        cfg = hf_config(config, trust_remote_code)
        with _quiet(), init_empty_weights():
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
        model.tie_weights()  # init_empty_weights skips the tying post_init does: tied heads would count twice
        return _count(model, cfg)

    return Architecture.model_validate(_cached(config, "architecture", "counts", build))


def _adapter_key(adapter: LoraSpec) -> str:
    target = adapter.target if isinstance(adapter.target, str) else ",".join(sorted(adapter.target))
    return f"r{adapter.r}:{target}"


def _lora_config(adapter: LoraSpec):
    from peft import LoraConfig

    target = adapter.target if isinstance(adapter.target, str) else list(adapter.target)
    return LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, target_modules=target, task_type="CAUSAL_LM",
                      lora_dropout=adapter.dropout)


def _with_lora(model, adapter: LoraSpec, arch: Architecture, adapter_fp32: bool = True):
    from peft import get_peft_model

    try:
        with _quiet():
            return get_peft_model(model, _lora_config(adapter), autocast_adapter_dtype=adapter_fp32)
    except ValueError as err:
        raise UserError(Problem("recipe", "method.lora.target", f"peft cannot place LoRA on {adapter.target!r} in "
                                f"this {arch.model_type} model ({err}); its linear modules: "
                                f"{', '.join(arch.linear_names)}")) from None


def lora_trainable(config: ModelConfig, adapter: LoraSpec, arch: Architecture, trust_remote_code: bool = False) -> int:
    """Trainable parameters of peft's LoRA with these settings, counted on the meta model."""

    def build() -> int:
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        with _quiet(), init_empty_weights():
            model = AutoModelForCausalLM.from_config(hf_config(config, trust_remote_code),
                                                     trust_remote_code=trust_remote_code)
        model.tie_weights()
        peft_model = _with_lora(model, adapter, arch)
        return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)

    return int(_cached(config, "lora", _adapter_key(adapter), build))


def activations(config: ModelConfig, arch: Architecture, *, dtype: str, fused: bool, adapter: LoraSpec | None,
                adapter_fp32: bool = True, frozen_keeps_input: bool = False,
                trust_remote_code: bool = False) -> Activations:
    """Bytes autograd keeps for backward, measured on meta tensors (see the module docstring). adapter_fp32: LoRA
    adapters in fp32 (peft's default) rather than the compute dtype; frozen_keeps_input: frozen linear layers keep
    their input for backward, as 4-bit layers of bitsandbytes before 0.42 did."""
    from runner.estimate import activations

    adapter_key = _adapter_key(adapter) + f":d{adapter.dropout > 0:d}:a{adapter_fp32:d}" if adapter else "full"
    key = f"{dtype}:{'fused' if fused else 'eager'}:{adapter_key}:k{frozen_keeps_input:d}"
    act_bytes = 4 if dtype == "fp32" else 2

    def measure() -> dict:
        return activations.measure(config, arch, dtype=dtype, fused=fused, adapter=adapter, adapter_fp32=adapter_fp32,
                             frozen_keeps_input=frozen_keeps_input, trust_remote_code=trust_remote_code)

    try:
        found = _cached(config, "activations", key, measure)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - an architecture whose forward cannot run on meta tensors (not cached)
        found = activations.formula(arch, dtype=dtype, fused=fused, reason=f"{type(err).__name__}: {err}")
    return Activations.model_validate({**found, "checkpoint": arch.hidden_size * act_bytes})
