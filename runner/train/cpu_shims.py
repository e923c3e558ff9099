"""Shims that let multi-process training run on a CPU-only machine (tests, CI, the demo).

Each one corrects a library's assumption that several processes mean several GPUs; each checks that no
GPU is present (or only handles CPU-only cases), so GPU runs use the libraries untouched. They are installed
by the axolotl plugin (runner.train.plugin) inside the training processes. Pinned versions: axolotl
0.19.0, accelerate 1.13.0, deepspeed 0.18.9; revisit these when upgrading.
"""
from __future__ import annotations

import os


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def _cpu_device_map_for_multi_process() -> None:
    """Let data-parallel runs load on CPU.

    axolotl's normalize_config sets device_map={"": LOCAL_RANK} whenever WORLD_SIZE > 1, which names an
    accelerator; with none present, transformers fails ("Cannot access accelerator device"). The loader
    computes its kwargs before any plugin hook runs, so the fix wraps that one step, on CPU-only machines.
    """
    from axolotl.loaders import model as model_loader

    if not _cpu_only() or int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return
    original = model_loader.ModelLoader._set_device_map_config
    if getattr(original, "_recipe_runner_cpu", False):
        return

    def set_device_map_config(self):
        original(self)
        if "device_map" in self.model_kwargs:
            self.model_kwargs["device_map"] = {"": "cpu"}

    set_device_map_config._recipe_runner_cpu = True
    model_loader.ModelLoader._set_device_map_config = set_device_map_config


def _gloo_backend_for_deepspeed() -> None:
    """Name gloo as accelerate's backend under DeepSpeed.

    accelerate's PartialState._prepare_backend finds no backend when there is no accelerator and cpu=False
    (DeepSpeed needs cpu=False), so it records num_processes=1 although deepspeed.comm already set up a
    2-process gloo group: the batch check then fails and evaluation all-gathers into the wrong sizes.
    """
    from accelerate.state import PartialState

    original = PartialState._prepare_backend
    if not _cpu_only() or getattr(original, "_recipe_runner_cpu", False):
        return

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        backend, distributed_type = original(self, cpu, sagemaker_dp, backend)
        if (backend is None and not cpu and int(os.environ.get("LOCAL_RANK", -1)) != -1
                and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"):
            backend = "gloo"
        return backend, distributed_type

    prepare_backend._recipe_runner_cpu = True
    PartialState._prepare_backend = prepare_backend


def _no_grad_zero12_all_gather() -> None:
    """Run ZeRO-1/2's parameter all-gather without autograd.

    stage_1_and_2 step() all-gathers into a flat buffer built from parameters that require grad, outside
    torch.no_grad (its sibling update_lp_params has it); gloo writes the output through split() views,
    which autograd rejects ("Output 0 of Split is a view and is being modified inplace"). NCCL does not.
    """
    import torch

    if not _cpu_only():
        return
    try:
        from deepspeed.runtime.zero import stage_1_and_2
    except ImportError:  # DeepSpeed is optional (the `deepspeed` extra): without it there is nothing to patch
        return
    original = stage_1_and_2.all_gather_dp_groups
    if getattr(original, "_recipe_runner_cpu", False):
        return

    def all_gather_dp_groups(*args, **kwargs):
        with torch.no_grad():
            return original(*args, **kwargs)

    all_gather_dp_groups._recipe_runner_cpu = True
    stage_1_and_2.all_gather_dp_groups = all_gather_dp_groups


def _restore_indexed_cpu_locations() -> None:
    """Let torch.load restore storages mapped to `cpu:N`.

    On resume, transformers loads the optimizer state with map_location=args.device, which in a multi-process
    CPU run is `cpu:<rank>`; torch knows how to restore `cpu` but not `cpu:N` ("don't know how to restore data
    location ... cpu:0"). torch.serialization.register_package is torch's own hook for extra locations.
    """
    import torch.serialization as serialization

    if any(getattr(entry[2], "_recipe_runner_cpu", False) for entry in serialization._package_registry):
        return

    def restore(storage, location):
        return storage if location.startswith("cpu:") else None

    def tag(obj):
        return None

    restore._recipe_runner_cpu = True
    taken = {entry[0] for entry in serialization._package_registry}  # equal priorities would compare functions
    serialization.register_package(next(p for p in range(90, 200) if p not in taken), tag, restore)


def install() -> None:
    """Install every shim that applies (each is a no-op with a GPU or in a single process)."""
    _cpu_device_map_for_multi_process()
    _gloo_backend_for_deepspeed()  # acts only when axolotl has turned DeepSpeed on (checked per call)
    _no_grad_zero12_all_gather()
    _restore_indexed_cpu_locations()
