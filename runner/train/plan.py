"""The plan stage: a new run directory with the resolved recipe, every engine file and a `planned` manifest."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

from runner.core import paths
from runner.core.atomic import write_text_atomic
from runner.core.yamlio import dump_yaml
from runner.data.prepare import DONE, Prepared
from runner.models import parent, resolve
from runner.recipe import loading, parents, precision
from runner.recipe.loading import Loaded
from runner.runs import rundir
from runner.runs.data_info import SPLITS, DataInfo
from runner.runs.manifest import Batch, Manifest, Seeds, Status
from runner.train import engine, provenance, vllm


def base_model_for(loaded: Loaded) -> str:
    """What axolotl loads: hub ids stay hub ids (resolved on the cluster); local files become local dirs."""
    spec, root = loaded.recipe.model, loaded.root_of("model.base")  # root: the layer of the file that named it
    local = (spec.base.startswith((resolve.PKG, parents.RUN)) or paths.resolve_local(spec.base, root).exists()
             or spec.base.endswith(".gguf"))
    return str(resolve.resolve_base(spec, paths.display(loaded.path), root)) if local else spec.base


def engine_files(loaded: Loaded, target: str, base_model: str, has_val: bool) -> dict[str, str]:
    recipe = loaded.recipe
    files = {rundir.RESOLVED: loading.resolved_yaml(recipe),
             rundir.AXOLOTL: dump_yaml(engine.axolotl_config(recipe, base_model, has_val=has_val)),
             rundir.LAUNCH: engine.launch_script(recipe, target)}
    deepspeed = engine.deepspeed_config(recipe)
    if deepspeed:
        files[rundir.DEEPSPEED] = json.dumps(deepspeed, indent=2, sort_keys=True) + "\n"
    if target == "accelerate":
        files[rundir.ACCELERATE] = dump_yaml(engine.accelerate_config(recipe))
    files |= vllm.files(recipe, base_model)  # GPU profiles: serve.sh (vLLM) and chat_template.jinja
    return files


def write_plan(run: rundir.RunDir, loaded: Loaded, target: str, base_model: str, has_val: bool) -> None:
    for name, text in engine_files(loaded, target, base_model, has_val).items():
        write_text_atomic(run.file(name), text)
    run.file(rundir.LAUNCH).chmod(0o755)
    if run.file(vllm.SCRIPT).exists():
        run.file(vllm.SCRIPT).chmod(0o755)
    run.logs_dir.mkdir(exist_ok=True)  # sbatch opens --output=logs/slurm-%j.out before the script runs


def link_data(run: rundir.RunDir, prepared: Prepared) -> None:
    """Hard-link the cached prepared files into run/data (copy across file systems)."""
    target = run.data_dir
    target.mkdir(exist_ok=True)
    for name in (*[f"{s}.jsonl" for s in SPLITS], DONE):
        destination = target / name

        destination.unlink(missing_ok=True)
        try:
            os.link(prepared.dir / name, destination)
        except OSError:
            shutil.copy2(prepared.dir / name, destination)


def new_manifest(loaded: Loaded, run: rundir.RunDir, target: str, base_model: str, status: Status,
                 data: DataInfo | None = None) -> Manifest:
    recipe = loaded.recipe
    return Manifest(
        run_id=run.run_id, recipe=recipe.name, recipe_version=recipe.version, fingerprint=loaded.fingerprint,
        recipe_file=paths.display(loaded.path), extends=[paths.display(p) for p in loaded.chain[1:]], target=target,
        base_model=recipe.model.base, base_model_dir=base_model, adapter=recipe.method.adapter is not None,
        git_commit=provenance.git_commit(), packages=provenance.package_versions(),
        hardware=provenance.hardware(recipe), seeds=Seeds(train=recipe.train.seed, split=recipe.data.split.seed),
        batch=Batch(micro=recipe.train.micro_batch_size, accumulation=recipe.gradient_accumulation,
                    world_size=recipe.hardware.world_size, global_=recipe.global_batch, packing=recipe.data.packing),
        command=engine.launch_command(target, paths.display(run.path)), status=status, data=data,
        parent=parent.record(recipe.model.base))


def concrete(loaded: Loaded, target: str = "local") -> Loaded:
    """The loaded recipe as a run makes it here: `hardware.precision: auto` decided for this machine and target.
    The fingerprint stays the written recipe's (what `recipe show` and the lock files print)."""
    recipe = precision.concrete(loaded.recipe, target)
    if recipe is loaded.recipe:
        return loaded
    return dataclasses.replace(loaded, recipe=recipe, written_fingerprint=loaded.fingerprint)


def plan_run(loaded: Loaded, target: str = "local") -> rundir.RunDir:
    """Write a run directory with every engine file; run nothing. Data is prepared by `train`."""
    loaded = concrete(loaded, target)
    base_model = base_model_for(loaded)
    run = rundir.create(loaded.recipe.name, loaded.fingerprint)
    write_plan(run, loaded, target, base_model, has_val=True)
    new_manifest(loaded, run, target, base_model, Status.PLANNED).write(run.manifest_path)
    return run  # `latest` keeps pointing at the newest trained run, which eval and report default to
