"""How a run's model computes, decided once for every path that runs it: `recipe generate`, `recipe chat`,
`recipe serve` and evaluation (lm-eval's model arguments).

`decide(recipe)` is the one place that says, from the recipe and this machine only (never from what ran before in
the process), how a model computes:

  device, dtype   the recipe's precision on its device; on CPU bf16 where the CPU computes it natively, else float32
  adapter dtype   LoRA weights in float32, as trained and saved (peft's default on a half-precision model: lm-eval's
                  `peft=` loading does the same); loaded into a bf16 model as transformers does for a served folder,
                  they would be rounded to bf16 and the answers would drift from `recipe generate`'s
  autocast        off: the model computes in its weights' dtypes, even when a caller left autocast on
  threads         RECIPE_RUNNER_THREADS, else what torch starts a process with (OMP_NUM_THREADS / MKL_NUM_THREADS,
                  else the physical cores): the same in a fresh server process as in a long-lived one
  batch shape     one prompt per forward pass (no padding) for answers (generate, chat, serve); batches of
                  eval.batch_size (or the caller's) padded on the left for evaluation and bulk answering

`Numerics.load` loads a model (and its adapter) that way, `Numerics.applied()` is the process state its forward
passes run under (set on entry, restored on exit), and `Numerics.bind(model)` makes the model's own `generate` run
under it, whichever thread calls it (transformers serve generates on a thread of its own).
"""
from __future__ import annotations

import functools
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from runner.core import cpufeatures
from runner.core.console import say
from runner.recipe import precision as precisions

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
ADAPTER_DTYPE = "float32"
PADDING_SIDE = "left"  # a batch's prompts all end where their answers start
THREADS_ENV = "RECIPE_RUNNER_THREADS"  # the trainer's fixed thread count reads it too (runner.train.plugin)
_said: set[str] = set()


def device_and_dtype(recipe) -> tuple[str, str]:
    """Where and in which dtype to run the recipe's models: its precision on its device; on CPU, bf16 where the CPU
    computes it natively (else float32, said once), everything else float32."""
    import torch

    precision = precisions.effective_precision(recipe.hardware)
    if recipe.hardware.device == "cuda" and torch.cuda.is_available():
        return "cuda", _DTYPES[precision]
    if recipe.hardware.device == "cpu" and precision == "bf16":
        missing = cpufeatures.missing_bf16()
        if missing is None:
            return "cpu", "bfloat16"
        line = f"this CPU lacks {missing.split(' (')[0]}: the models run in float32, not the recipe's bf16"
        if line not in _said:  # once per process, however many paths decide
            _said.add(line)
            say(line)
    return "cpu", "float32"


def default_threads() -> int:
    """Intra-op threads: RECIPE_RUNNER_THREADS, else torch's own default for a new process (OMP_NUM_THREADS or
    MKL_NUM_THREADS, else the machine's physical cores), read from the environment and the machine, never from
    torch.get_num_threads(), which whatever ran before in this process may have changed."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except ImportError:  # psutil comes with accelerate; without it, the logical CPUs
        cores = None
    return cores or os.cpu_count() or 1


@dataclass(frozen=True)
class Numerics:
    """How a model runs (see the module's docstring); made by `decide`."""

    device: str  # "cpu" or "cuda"
    dtype: str  # base weights and activations: "bfloat16", "float16" or "float32"
    threads: int
    batch_size: int = 1  # prompts per forward pass; a batch of one is not padded
    adapter_dtype: str = ADAPTER_DTYPE
    autocast: bool = False
    padding_side: str = PADDING_SIDE

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    @property
    def device_map(self) -> str:
        """from_pretrained's device_map: every GPU on a GPU machine, else the CPU."""
        return "auto" if self.device == "cuda" else "cpu"

    def describe(self) -> str:
        """One line for people: what the models compute in."""
        batch = "one prompt at a time" if self.batch_size == 1 else f"batches of {self.batch_size} padded on the left"
        return (f"{self.dtype} on {self.device} (LoRA weights in {self.adapter_dtype}), autocast off, "
                f"{self.threads} threads, {batch}")

    @contextmanager
    def applied(self):
        """The process state the model runs under, restored on exit: this many intra-op threads, float32 as the
        default dtype (what a new process has), autocast off on every device type (it is per thread: a caller's
        `torch.autocast` would otherwise recompute the model's matmuls in another dtype)."""
        import torch

        threads, default = torch.get_num_threads(), torch.get_default_dtype()
        if threads != self.threads:
            torch.set_num_threads(self.threads)
        torch.set_default_dtype(torch.float32)
        try:
            with ExitStack() as stack:
                for device_type in ("cpu", "cuda"):
                    if device_type == "cpu" or torch.cuda.is_available():
                        stack.enter_context(torch.autocast(device_type, enabled=self.autocast))
                yield self
        finally:
            torch.set_default_dtype(default)
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    def bind(self, model):
        """The model, its `generate` now run under `applied()` (from any thread: transformers serve generates on
        its own); forward passes run by a caller go under `applied()` themselves."""
        if getattr(model.generate, "__numerics__", None) == self:
            return model
        generate = model.generate

        @functools.wraps(generate)
        def bound(*args, **kwargs):
            with self.applied():
                return generate(*args, **kwargs)

        bound.__numerics__ = self
        model.generate = bound
        return model

    def load(self, model_dir: str | Path, adapter_dir: str | Path | None = None, trust_remote_code: bool = False):
        """A causal LM from model_dir in eval mode, with the LoRA adapter in adapter_dir on it (a peft PeftModel,
        adapter weights in adapter_dtype), its generate bound to these numerics."""
        import torch
        from transformers import AutoModelForCausalLM

        with self.applied():
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.torch_dtype, device_map=self.device_map,
                                                         trust_remote_code=trust_remote_code)
            if adapter_dir is not None:
                from peft import PeftModel

                # autocast_adapter_dtype: adapter weights in float32 on a bf16/fp16 model, as trained and as lm-eval
                # loads them; the cast below covers any other adapter dtype
                model = PeftModel.from_pretrained(model, adapter_dir, autocast_adapter_dtype=True)
                adapter = getattr(torch, self.adapter_dtype)
                for name, param in model.named_parameters():
                    if "lora_" in name and param.dtype != adapter:
                        param.data = param.data.to(adapter)
        return self.bind(model.eval())


def decide(recipe, batch_size: int = 1) -> Numerics:
    """How the recipe's models compute on this machine, on every path (see the module's docstring): batch_size 1
    for answers (generate, chat, serve), eval.batch_size for evaluation. Reads the recipe, the CPU and the
    environment, never the state of this process."""
    device, dtype = device_and_dtype(recipe)
    return Numerics(device=device, dtype=dtype, threads=default_threads(), batch_size=max(1, int(batch_size)))
