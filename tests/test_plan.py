"""Emitted engine files: golden per launch target, and each accepted by the engine's own parser."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from runner.recipe import loading
from runner.train import engine
from runner.train.plan import engine_files

GOLDEN = Path(__file__).parent / "golden" / "plan"
# 2 x p4d.24xlarge: 16 A100s, ZeRO-3 as in recipes/_base/hardware/p4d-24xlarge-x2.yaml
P4D = ["hardware.nodes=2", "hardware.gpus=8", "train.global_batch_size=256", "hardware.deepspeed=zero3"]
CASES = {
    "tiny-cpu-local": ("tiny-cpu", [], "local"),
    "gemma7b-1gpu-local": ("gemma7b-dolly-chatml", [], "local"),
    "mistral7b-8gpu-accelerate": ("mistral7b-text-to-sql", [], "accelerate"),
    "mistral7b-8gpu-torchrun": ("mistral7b-text-to-sql", [], "torchrun"),
    "gemma7b-2x8-accelerate": ("gemma7b-dolly-chatml", P4D, "accelerate"),
    "gemma7b-2x8-torchrun": ("gemma7b-dolly-chatml", P4D, "torchrun"),
    "gemma7b-2x8-slurm": ("gemma7b-dolly-chatml", P4D, "slurm"),
    "gemma7b-2x8-zero3-offload-slurm": ("gemma7b-dolly-chatml", [*P4D[:3], "hardware.deepspeed=zero3-offload"],
                                        "slurm"),
}


def _files(case: str) -> dict[str, str]:
    name, overrides, target = CASES[case]
    loaded = loading.load(name, overrides)
    # Hub ids stay hub ids in plans; the tiny model's local path is written as the recipe gives it.
    files = engine_files(loaded, target, loaded.recipe.model.base, has_val=True)
    files.pop("recipe.resolved.yaml")  # pinned by recipes/resolved/ already
    return files


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_plan(case):
    files = _files(case)
    folder = GOLDEN / case
    if os.environ.get("UPDATE_GOLDEN"):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.iterdir():
            stale.unlink()
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
    assert sorted(p.name for p in folder.iterdir()) == sorted(files), f"{case}: files changed; `make golden`"
    for name, text in files.items():
        assert (folder / name).read_text(encoding="utf-8") == text, f"{case}/{name} changed; review, `make golden`"


@pytest.mark.parametrize("case", sorted(CASES))
def test_launch_scripts_parse_with_bash(case, tmp_path):
    script = tmp_path / "launch.sh"
    script.write_text(_files(case)["launch.sh"])
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_axolotl_accepts_the_config(case):
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    name, overrides, _ = CASES[case]
    recipe = loading.load(name, overrides).recipe
    config = DictDefault(yaml.safe_load(_files(case)["axolotl.yaml"]))
    gpu = recipe.hardware.device == "cuda"
    # The GPU's capabilities as axolotl would probe them on an A100 node (no GPU exists here).
    capabilities = {"bf16": gpu, "fp8": False, "tf32": gpu, "n_gpu": recipe.hardware.world_size,
                    "compute_capability": "sm_80" if gpu else None}
    prepare_plugins(config)
    validated = validate_config(config, capabilities=capabilities, env_capabilities={"torch_version": "2.13.0"})
    assert validated["gradient_accumulation_steps"] == recipe.gradient_accumulation
    assert validated["micro_batch_size"] == recipe.train.micro_batch_size
    assert validated["recipe_runner_metrics"] == "metrics.jsonl"


class _DataParallel:
    """Stands in for a data-parallel process group of the recipe's world size: 8 or 16 GPUs cannot exist here."""

    def __init__(self, size: int):
        self.size = size

    def get_data_parallel_world_size(self) -> int:
        return self.size


@pytest.fixture
def rank_zero(monkeypatch):
    """DeepSpeed asks torch.distributed for this process's rank; with no process group, say rank 0."""
    import deepspeed.runtime.config as ds_config

    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *args, **kwargs: 0)


@pytest.mark.parametrize("case", [c for c in sorted(CASES) if "gemma7b-2x8" in c or "mistral" in c])
def test_deepspeed_accepts_the_config_and_the_batch_adds_up(case, rank_zero):
    from deepspeed.runtime.config import DeepSpeedConfig

    name, overrides, _ = CASES[case]
    recipe = loading.load(name, overrides).recipe
    data = json.loads(_files(case)["deepspeed.json"])
    config = DeepSpeedConfig(data, mpu=_DataParallel(recipe.hardware.world_size))
    assert config.train_batch_size == recipe.global_batch
    assert config.train_micro_batch_size_per_gpu * config.gradient_accumulation_steps * recipe.hardware.world_size \
        == config.train_batch_size
    assert config.zero_optimization_stage == (2 if recipe.hardware.deepspeed == "zero2" else 3)


def test_deepspeed_rejects_inconsistent_batch_keys(rank_zero):
    from deepspeed.runtime.config import DeepSpeedConfig

    data = engine.deepspeed_config(loading.load("mistral7b-text-to-sql").recipe) | {"train_batch_size": 100}
    with pytest.raises(AssertionError):
        DeepSpeedConfig(data, mpu=_DataParallel(8))


@pytest.mark.parametrize("case", [c for c in sorted(CASES) if c.endswith("accelerate")])
def test_accelerate_loads_its_config(case, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    path = tmp_path / "accelerate.yaml"
    path.write_text(_files(case)["accelerate.yaml"])
    config = load_config_from_file(str(path))
    recipe = loading.load(*CASES[case][:2]).recipe
    assert config.num_processes == recipe.hardware.world_size and config.num_machines == recipe.hardware.nodes


def test_multi_node_scripts_take_rank_and_address_from_the_environment():
    torchrun = _files("gemma7b-2x8-torchrun")["launch.sh"]
    assert "--nnodes=2" in torchrun and "--nproc_per_node=8" in torchrun
    assert "--node_rank=${NODE_RANK}" in torchrun and "--rdzv_endpoint=${MASTER_ADDR}:${MASTER_PORT}" in torchrun
    slurm = _files("gemma7b-2x8-slurm")["launch.sh"]
    assert "#SBATCH --nodes=2" in slurm and "#SBATCH --gpus-per-node=8" in slurm and "--requeue" in slurm
    assert "--node_rank=${SLURM_NODEID}" in slurm and "export NCCL_DEBUG=WARN" in slurm


def test_slurm_jobs_sharing_a_node_rendezvous_on_ports_of_their_own():
    slurm = _files("gemma7b-2x8-slurm")["launch.sh"]
    line = next(x for x in slurm.splitlines() if x.startswith("MASTER_PORT="))

    def port(job_id: str, **env: str) -> int:
        shell = subprocess.run(["bash", "-c", f'{line}; echo "$MASTER_PORT"'], capture_output=True, text=True,
                               check=True, env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": job_id, **env})
        return int(shell.stdout)

    assert port("1") != port("2") and all(port(j) < 32768 for j in ("1", "9999", "123456"))
    assert port("1", MASTER_PORT="31000") == 31000  # a site's own choice wins


def test_plan_verb_writes_a_run_directory_and_prints_the_command(project, run_cli):
    code, out, err = run_cli("plan", "gemma7b-dolly-chatml", "--target", "slurm")
    assert code == 0, err
    (run,) = [p for p in (project / "runs" / "gemma7b-dolly-chatml").iterdir()]
    written = {p.name for p in run.iterdir()}
    assert {"axolotl.yaml", "launch.sh", "manifest.json", "recipe.resolved.yaml", "logs"} <= written
    assert f"(cd runs/gemma7b-dolly-chatml/{run.name} && sbatch launch.sh)" in out
    assert json.loads((run / "manifest.json").read_text())["status"] == "planned"
    # a plan is not a training run: `latest` (what eval and report default to) does not move
    assert not (project / "runs" / "gemma7b-dolly-chatml" / "latest").exists()


@pytest.mark.parametrize("name", sorted(loading.recipe_files()))
def test_every_shipped_recipe_saves_checkpoints_to_resume_from(name):
    # A requeued or resumed run goes on from the newest checkpoint; a config with save_strategy 'no' has none,
    # and the sbatch script's "--requeue ... resume from the last checkpoint" would be false.
    loaded = loading.load(name)
    files = engine_files(loaded, "slurm", loaded.recipe.model.base, has_val=True)
    config = yaml.safe_load(files["axolotl.yaml"])
    assert config["save_strategy"] == "steps" and config["save_steps"] > 0, name
    assert 0 < config["save_total_limit"] <= 5, name  # bounded: old checkpoints are deleted
    assert config["auto_resume_from_checkpoints"] is True
    if loaded.recipe.train.max_steps:  # at least one checkpoint before the end
        assert config["save_steps"] < loaded.recipe.train.max_steps, name
    assert f"resume from the last checkpoint (one every {config['save_steps']} steps)" in files["launch.sh"]


def test_a_recipe_that_turns_checkpoints_off_does_not_promise_a_resume():
    loaded = loading.load("gemma7b-dolly-chatml", ["train.save_steps=null"])
    files = engine_files(loaded, "slurm", loaded.recipe.model.base, has_val=True)
    assert yaml.safe_load(files["axolotl.yaml"])["save_strategy"] == "no"
    assert "resume from the last checkpoint" not in files["launch.sh"] and "start over" in files["launch.sh"]
