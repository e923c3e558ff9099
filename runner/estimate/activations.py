"""Measure the activation memory of a model's real forward pass on the meta device (see runner/estimate/meta.py).

Every tensor autograd saves for backward is seen by a saved-tensor hook; storages are counted once (views share
them) and parameters and buffers are left out (they are counted as weights). Meta tensors have shapes and
dtypes but no data, so a 7B model at any sequence length costs milliseconds and no memory.
"""
from __future__ import annotations

import contextlib
from unittest import mock

from runner.estimate.meta import LENGTHS, Architecture, _quiet, _with_lora, hf_config
from runner.estimate.model_config import ModelConfig
from runner.recipe.schema import LoraSpec


def _flash_like():
    """An autograd function that keeps what flash attention keeps for backward: q, k, v, out and the
    log-sum-exp of every query row (fp32), never the seq x seq probabilities."""
    import torch

    class FlashLike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            # (batch, seq, heads, dim) storage seen as (batch, heads, seq, dim), as the kernels return it, so
            # the transpose back before the output projection is free
            out = q.new_empty((q.shape[0], q.shape[2], q.shape[1], v.shape[-1])).transpose(1, 2)
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):  # pragma: no cover - measurement runs forward only
            raise RuntimeError("measurement only")

    return FlashLike


def _keep_input():
    """F.linear that also keeps its input for backward (a 4-bit layer of bitsandbytes before 0.42)."""
    import torch
    import torch.nn.functional as F

    class KeepInput(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias=None):
            ctx.save_for_backward(x)
            return F.linear(x, weight, bias)

        @staticmethod
        def backward(ctx, grad):  # pragma: no cover - measurement runs forward only
            raise RuntimeError("measurement only")

    return KeepInput


def _mode(low, fused: bool, keep_frozen_input_of=None):
    """A torch-function mode: autocast's casting rules when `low` (the compute dtype) is set, fused attention, and
    frozen linear weights of the given shapes keeping their input."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    to_low = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.baddbmm,
              torch.addmm, F.scaled_dot_product_attention}
    to_fp32 = {F.layer_norm, F.group_norm, F.softmax, F.log_softmax, F.cross_entropy, F.nll_loss}
    flash, keep = _flash_like(), _keep_input()

    def cast(value, dtype):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
            return value.to(dtype)
        return value

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if low is not None and (func in to_low or func in to_fp32):
                dtype = low if func in to_low else torch.float32
                args = tuple(cast(a, dtype) for a in args)
                kwargs = {k: cast(v, dtype) for k, v in kwargs.items()}
            if fused and func is F.scaled_dot_product_attention:
                return flash.apply(*args[:3])
            if (keep_frozen_input_of and func is F.linear and not args[1].requires_grad
                    and keep_frozen_input_of(args[1])):
                return keep.apply(*args, *kwargs.values())
            return func(*args, **kwargs)

    return Mode()


def _saved_bytes(model, length: int, labels: bool, low, fused: bool, keep=None) -> int:
    import torch
    from transformers import masking_utils

    weights = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            seen[storage._cdata] = storage.nbytes()
        return tensor

    ids = torch.zeros((1, length), dtype=torch.long, device="meta")
    with contextlib.ExitStack() as stack:
        if hasattr(masking_utils, "find_packed_sequence_indices"):  # reads the position ids' values: none on meta
            stack.enter_context(mock.patch.object(masking_utils, "find_packed_sequence_indices",
                                                  lambda *args, **kwargs: None))
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor))
        stack.enter_context(_mode(low, fused, keep))
        model(input_ids=ids, labels=ids if labels else None)
    return sum(seen.values())


def _model(config: ModelConfig, arch: Architecture, layers: int, dtype, fused: bool, adapter: LoraSpec | None,
           adapter_fp32: bool, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config(config, trust_remote_code, layers=layers)
    with _quiet(), torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa" if fused else "eager",
                                                 trust_remote_code=trust_remote_code)
    model.tie_weights()
    if adapter is not None:
        model = _with_lora(model, adapter, arch, adapter_fp32)
    return model.train()


def _fit(points: dict[int, float]) -> tuple[float, float]:
    """(a, e) of a x T + e x T^2 + k through three (T, bytes) points."""
    (t1, p1), (t2, p2), (t3, p3) = sorted(points.items())
    d1, d2 = p2 - p1, p3 - p2
    e = (d2 * (t2 - t1) - d1 * (t3 - t2)) / ((t3 ** 2 - t2 ** 2) * (t2 - t1) - (t2 ** 2 - t1 ** 2) * (t3 - t2))
    a = (d1 - e * (t2 ** 2 - t1 ** 2)) / (t2 - t1)
    return a, max(0.0, e)


def measure(config: ModelConfig, arch: Architecture, *, dtype: str, fused: bool, adapter: LoraSpec | None,
            adapter_fp32: bool = True, frozen_keeps_input: bool = False, trust_remote_code: bool = False) -> dict:
    """Per-layer bytes per token (and per token squared), and the bytes per token outside the layers."""
    import torch

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    low = None if dtype == "fp32" else torch_dtype
    one, two = (_model(config, arch, n, torch_dtype, fused, adapter, adapter_fp32, trust_remote_code) for n in (1, 2))
    # the LM head is never quantized; every other frozen linear weight is
    keep = (lambda weight: weight.shape[0] != arch.vocab_size) if frozen_keeps_input else None
    with _quiet():
        with_loss = {n: {t: _saved_bytes(m, t, True, low, fused, keep) for t in LENGTHS}
                     for n, m in ((1, one), (2, two))}
        no_loss = {t: _saved_bytes(one, t, False, low, fused, keep) for t in LENGTHS[1:]}
    per_layer = {t: with_loss[2][t] - with_loss[1][t] for t in LENGTHS}
    a, e = _fit(per_layer)
    last, before = LENGTHS[-1], LENGTHS[-2]
    outside = [with_loss[1][t] - per_layer[t] for t in (before, last)]
    loss = [with_loss[1][t] - no_loss[t] for t in (before, last)]
    per_token_outside = (outside[1] - outside[0]) / (last - before)
    per_token_loss = (loss[1] - loss[0]) / (last - before)
    return {"per_token": round(a, 3), "per_token2": round(e, 6), "loss": round(per_token_loss, 3),
            "outside": round(per_token_outside - per_token_loss, 3), "how": "meta forward pass"}


def formula(arch: Architecture, *, dtype: str, fused: bool, reason: str) -> dict:
    """A rough stand-in when the forward pass cannot run on meta tensors: the usual per-layer tensors of a
    transformer block (norm inputs, q/k/v, attention output, MLP input and activations) at the compute dtype."""
    size = 4 if dtype == "fp32" else 2
    head_dim = arch.hidden_size // arch.heads
    mlp = arch.intermediate_size or 4 * arch.hidden_size
    per_token = size * (9 * arch.hidden_size + 2 * arch.kv_heads * head_dim + 4 * mlp)
    return {"per_token": float(per_token), "per_token2": 0.0 if fused else float(arch.heads * (4 + size)),
            "outside": float(size * 2 * arch.hidden_size + size * arch.vocab_size), "loss": 4.0 * arch.vocab_size,
            "how": f"formula: the forward pass could not run on the meta device ({reason[:200]})"}
