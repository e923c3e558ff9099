"""bf16 on CPU: the recipe language allows it (validation does not look at the machine), `recipe train` stops early
on a CPU without bf16 instructions, the engine files ask axolotl for CPU autocast, and a real run records that it
trained in bf16 autocast; evaluation and generation load the run's models in bf16."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core import cpufeatures
from runner.recipe import loading, precision
from runner.train import engine

X86_BF16 = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
X86_AMX = "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
X86_OLD = "processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
ARM_OLD = "processor\t: 0\nFeatures\t: fp asimd crc32\n"


def test_cpu_bf16_features_are_read_from_cpuinfo():
    assert cpufeatures.bf16_features(X86_BF16, "x86_64") == ["avx512_bf16"]
    assert cpufeatures.bf16_features(X86_AMX, "x86_64") == ["amx_bf16", "avx512_bf16"]
    assert cpufeatures.bf16_features(X86_OLD, "x86_64") == []
    assert cpufeatures.bf16_features(ARM_BF16, "aarch64") == ["bf16"]
    assert cpufeatures.bf16_features(ARM_OLD, "aarch64") == []
    assert cpufeatures.missing_bf16(X86_BF16, "x86_64") is None
    assert "AVX-512 BF16 or AMX" in cpufeatures.missing_bf16(X86_OLD, "x86_64")
    assert "Arm BF16" in cpufeatures.missing_bf16(ARM_OLD, "aarch64")
    # this machine: the verdict agrees with its own /proc/cpuinfo
    flags = Path("/proc/cpuinfo").read_text().split()
    assert (cpufeatures.missing_bf16() is None) == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_bf16_on_a_cpu_profile_validates_anywhere_fp16_does_not(run_cli, project):
    code, _, err = run_cli("show", "tiny-cpu", "hardware.precision=bf16")
    assert code == 0, err
    assert loading.load("tiny-cpu", ["hardware.precision=bf16"]).recipe.hardware.precision == "bf16"
    code, _, err = run_cli("validate", "tiny-cpu")
    assert code == 0, err
    code, _, err = run_cli("show", "tiny-cpu", "hardware.precision=fp16")
    assert code == 2 and "hardware.precision" in err and "fp16 training is not supported on cpu" in err
    code, _, err = run_cli("show", "tiny-cpu", "hardware.precision=bf16", "hardware.deepspeed=zero2",
                           "hardware.gpus=2")
    assert code == 2 and "bf16 on cpu runs without DeepSpeed" in err


def test_bf16_cpu_engine_files_ask_for_cpu_autocast(project):
    bf16 = loading.load("tiny-cpu", ["hardware.precision=bf16"]).recipe
    config = engine.axolotl_config(bf16, "/models/tiny")
    assert config["bf16"] is True and config["fp16"] is False and config["tf32"] is False
    assert config["recipe_runner_use_cpu"] is True  # the plugin passes TrainingArguments.use_cpu on
    assert engine.accelerate_config(bf16)["mixed_precision"] == "bf16"
    fp32 = loading.load("tiny-cpu", ["hardware.precision=fp32"]).recipe
    assert "recipe_runner_use_cpu" not in engine.axolotl_config(fp32, "/models/tiny")
    assert engine.accelerate_config(fp32)["mixed_precision"] == "no"


@pytest.mark.model
def test_train_on_a_cpu_without_bf16_stops_before_anything_starts(run_cli, project, tmp_path, monkeypatch,
                                                                  tiny_model_dir):
    # A CPU without bf16 instructions cannot exist on this machine: its /proc/cpuinfo is stood in for by a file.
    fake = tmp_path / "cpuinfo"
    fake.write_text(X86_OLD)
    monkeypatch.setattr(cpufeatures, "CPUINFO", fake)
    monkeypatch.setattr(cpufeatures.platform, "machine", lambda: "x86_64")
    code, _, err = run_cli("train", "tiny-cpu", "hardware.precision=bf16")
    assert code == 2, err
    assert "hardware.precision" in err and "AVX-512 BF16 or AMX" in err and "Old CPU" in err
    assert "hardware.precision=fp32" in err and "Traceback" not in err
    assert not (project / "runs").exists()  # nothing prepared, planned or launched
    code, _, err = run_cli("plan", "tiny-cpu", "hardware.precision=bf16")  # a plan may be for another machine
    assert code == 0, err


def test_param_count_sees_through_4bit_weights():
    import bitsandbytes as bnb
    import torch

    from runner.train.plugin import param_count

    layer = bnb.nn.Linear4bit(64, 128, bias=False, quant_type="nf4", compute_dtype=torch.bfloat16).to("cpu")
    assert layer.weight.numel() == 64 * 128 // 2  # two 4-bit values per stored byte
    assert param_count(layer.weight) == 64 * 128
    assert param_count(torch.nn.Parameter(torch.zeros(3, 5))) == 15


def test_auto_precision_is_bf16_where_the_cpu_has_it_else_fp32(project):
    hardware = loading.load("tiny-cpu").recipe.hardware
    assert hardware.precision == "auto"  # the cpu profile's default: validated and locked without the machine
    assert precision.effective_precision(hardware, missing=None) == "bf16"
    assert precision.effective_precision(hardware, missing="AVX-512 BF16") == "fp32"
    assert precision.effective_precision(hardware, target="slurm", missing=None) == "fp32"  # nodes unseen
    with_ds = hardware.model_copy(update={"deepspeed": "zero2", "gpus": 2})
    assert precision.effective_precision(with_ds, missing=None) == "fp32"  # bf16 on cpu runs without DeepSpeed
    fixed = hardware.model_copy(update={"precision": "fp32"})
    assert precision.effective_precision(fixed, missing=None) == "fp32"
    gpu = hardware.model_copy(update={"device": "cuda", "attention": "sdpa"})
    assert precision.effective_precision(gpu, missing="x") == "bf16"


@pytest.mark.model
def test_a_planned_run_records_the_precision_auto_chose(run_cli, project):
    code, out, err = run_cli("plan", "tiny-cpu")
    assert code == 0, err
    import yaml

    from runner.runs import rundir

    run = sorted((project / "runs" / "tiny-cpu").glob("2*"))[-1]
    chosen = "bf16" if cpufeatures.missing_bf16() is None else "fp32"
    assert rundir.RunDir(run).recipe().hardware.precision == chosen
    config = yaml.safe_load((run / "axolotl.yaml").read_text())
    assert config["bf16"] is (chosen == "bf16")
    # evaluating it with the same recipe file notes no change (auto is compared as the run decided it)
    _, changed = rundir.recipe_for_eval(rundir.RunDir(run), loading.load("tiny-cpu").recipe)
    assert changed == []


@pytest.mark.model
def test_the_session_run_trained_in_the_precision_auto_chose(trained_tiny_run):
    seen = trained_tiny_run.manifest().train.precision
    assert seen is not None
    if trained_tiny_run.recipe().hardware.precision == "bf16":
        assert seen.trainer_bf16 is True and seen.autocast_dtype == "bfloat16"
    else:
        assert seen.trainer_bf16 is False and seen.autocast_dtype is None and seen.activation_dtype == "float32"
        assert set(seen.param_dtypes) == {"float32"}


@pytest.mark.model
@pytest.mark.skipif(cpufeatures.missing_bf16() is not None, reason="this CPU has no bf16 instructions")
def test_bf16_cpu_run_trains_in_autocast_and_evaluates_in_bf16(run_cli, session_dirs, tiny_model_dir, tmp_path,
                                                                monkeypatch):
    import torch

    from runner.evaluate import generate, harness
    from runner.runs import rundir

    monkeypatch.setenv("RECIPE_RUNS_DIR", str(tmp_path / "runs"))  # `latest` of the shared runs stays as it is

    code, _, err = run_cli("train", "tiny-cpu", "hardware.precision=bf16", "train.max_steps=2")
    assert code == 0, err
    run = rundir.find("tiny-cpu", None)
    train = run.manifest().train
    seen = train.precision  # recorded inside the trainer: the first forward pass ran under bf16 autocast
    assert seen.trainer_bf16 and seen.mixed_precision == "bf16"
    assert seen.autocast_dtype == "bfloat16" and seen.activation_dtype == "bfloat16"
    assert set(seen.trainable_dtypes) == {"float32"} and "bfloat16" in seen.param_dtypes  # fp32 LoRA, bf16 base
    assert train.steps == 2 and train.final_loss is not None

    recipe = run.recipe()
    assert harness.device_and_dtype(recipe) == ("cpu", "bfloat16")
    code, _, err = run_cli("eval", "tiny-cpu", "--run", run.run_id, "eval.max_items=2", "eval.compare_base=false")
    assert code == 0, err
    results = json.loads(run.file("eval", "results-finetuned.json").read_text())
    assert {out["config"]["model_args"]["dtype"] for out in results.values()} == {"bfloat16"}
    pair = generate.load_pair(run, max_new_tokens=4)
    assert pair.finetuned.get_base_model().dtype == torch.bfloat16
    assert isinstance(pair.answer("What is 2 + 2?")["finetuned"], str)
