"""`recipe fit`: memory per GPU from the model built on the meta device, the verdict, the changes that would make a
recipe fit, time and cost; the GPU table in the schema; the fit section of `recipe plan`.

No GPU exists here: GPU memory is estimated, never allocated. The tests that build models on the meta device
import transformers and peft (marked `model`); the arithmetic tests use hand-made architectures."""
from __future__ import annotations

import json
import shutil

import pytest

from runner.estimate import memory, meta, model_config, throughput
from runner.estimate.data_size import DataSize
from runner.recipe import gpus, loading
from runner.recipe.schema import LoraSpec, ModelSpec

SHIPPED = sorted(loading.recipe_files())


@pytest.fixture(scope="session")
def _fit_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fit-cache")


@pytest.fixture
def fit_cache(_fit_cache_dir, monkeypatch):
    """One estimate cache for these tests: each model is built and measured on the meta device once."""
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(_fit_cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return _fit_cache_dir


def arch(**changes) -> meta.Architecture:
    """A 7B-like architecture written by hand, for the arithmetic tests."""
    base = dict(model_type="llama", hidden_size=4096, layers=32, heads=32, kv_heads=8, intermediate_size=14336,
                vocab_size=32000, tied_embeddings=False, params_total=7_000_000_000, params_embedding=131_072_000,
                params_lm_head=131_072_000, params_quantizable=6_700_000_000, params_layer_max=218_000_000,
                linear_max=58_720_256, linear_names=["q_proj"])
    return meta.Architecture(**(base | changes))


ACTS = meta.Activations(per_token=200_000.0, outside=10_000.0, loss=128_000.0, checkpoint=8192.0, how="test")


def setup(**changes) -> memory.Setup:
    base = dict(method="full", precision="bf16", device="cuda", world_size=8, deepspeed="zero3", micro_batch=1,
                seq_len=1024)
    return memory.Setup(**(base | changes))


def part(estimate: memory.MemoryEstimate, name: str) -> float:
    return next(p.gib for p in estimate.parts if p.name == name)


# ---------------------------------------------------------------- arithmetic, no model


def test_zero3_divides_weights_gradients_and_optimizer_states_by_the_world_size():
    eight, sixteen = (memory.estimate(setup(world_size=n, nodes=n // 8), arch(), ACTS, 0) for n in (8, 16))
    for name in ("weights", "gradients", "optimizer states", "trainable parameters"):
        assert part(eight, name) == pytest.approx(2 * part(sixteen, name), abs=0.02), name
    # 7e9 parameters x 8 bytes of fp32 AdamW states (DeepSpeed) / 8 GPUs
    assert part(eight, "optimizer states") == pytest.approx(7e9 * 8 / 8 / 2 ** 30, abs=0.01)
    zero2 = memory.estimate(setup(deepspeed="zero2"), arch(), ACTS, 0)
    assert part(zero2, "weights") == pytest.approx(7e9 * 2 / 2 ** 30, abs=0.01)  # ZeRO-2 keeps every weight
    assert part(zero2, "optimizer states") == part(eight, "optimizer states")
    offload = memory.estimate(setup(deepspeed="zero3-offload"), arch(), ACTS, 0)
    assert part(offload, "weights") == 0 and part(offload, "optimizer states") == 0 and offload.host_gib > 100


def test_qlora_stores_linear_weights_in_4_bits_with_double_quantization():
    lora = memory.estimate(setup(method="lora", world_size=1, deepspeed="none"), arch(), ACTS, 40_000_000)
    qlora = memory.estimate(setup(method="qlora", world_size=1, deepspeed="none"), arch(), ACTS, 40_000_000)
    # 6.7e9 linear weights at 0.5 + 1/64 + 4/(64*256) bytes, 0.3e9 others in bf16
    assert part(qlora, "weights") == pytest.approx((6.7e9 * 0.51587 + 0.3e9 * 2) / 2 ** 30, abs=0.01)
    assert part(lora, "weights") == pytest.approx(7e9 * 2 / 2 ** 30, abs=0.01)
    assert part(lora, "trainable parameters") == pytest.approx(40e6 * 4 / 2 ** 30, abs=0.01)  # fp32 adapters


def test_gradient_checkpointing_keeps_each_layer_input_and_recomputes_one_layer():
    off = memory.activation_bytes(setup(micro_batch=2), arch(), ACTS, checkpointing=False)
    on = memory.activation_bytes(setup(micro_batch=2), arch(), ACTS, checkpointing=True)
    assert off == 2 * (32 * 200_000 * 1024 + 138_000 * 1024)
    assert on == 2 * (32 * 8192 * 1024 + 200_000 * 1024 + 138_000 * 1024)
    eager = ACTS.model_copy(update={"per_token2": 96.0})  # 32 heads x (4 + 2) bytes: probabilities per query
    fused = memory.activation_bytes(setup(), arch(), ACTS, False)
    assert memory.activation_bytes(setup(), arch(), eager, False) - fused == 32 * 96 * 1024 ** 2


def test_the_gpu_table_is_the_one_table_for_memory_peak_and_mfu():
    from runner.train import summary

    assert gpus.get("h200-141g").memory_gib == pytest.approx(140.4, abs=0.1)
    assert summary.peak_tflops("a100-80g") == 312.0 and summary.peak_tflops("h100-80g") == 989.0
    assert summary.peak_tflops("NVIDIA H100 PCIe") == 756.0  # device names of older manifests still resolve
    assert gpus.get("NVIDIA A100-SXM4-40GB").name == "a100-40g" and gpus.get("NVIDIA L40S").name == "l40s-48g"
    assert summary.peak_tflops("tpu-v5") is None


def test_time_and_cost_multiply_out_with_the_stated_mfu():
    loaded = loading.load("gemma7b-dolly-chatml", ["hardware.price_per_gpu_hour=4.10"])
    gpu = gpus.get("a100-80g")
    data = DataSize(tokens=13_107_200, source="given")  # 6,400 packed sequences of 2048 tokens per epoch
    timing = throughput.estimate(loaded.recipe, data, gpu, 8_500_000_000, 50_000_000, mfu=0.5)
    assert timing.steps == 3 * 100  # 3 epochs x 6,400 sequences / global batch 64
    per_token = 4 * 8.5e9 + 2 * 5e7
    hours = 300 * 64 * 2048 * per_token / (312e12 * 0.5) / 3600
    assert timing.hours == pytest.approx(hours, rel=1e-3)
    assert timing.cost_usd == pytest.approx(hours * 4.10, rel=1e-3)
    assert any("MFU 0.50: given" in note for note in timing.assumptions)


def test_an_unknown_gpu_model_is_a_schema_error_with_the_table_names(run_cli):
    code, out, err = run_cli("fit", "gemma7b-dolly-chatml", "hardware.gpu_model=a100-80gb")
    assert code == 2 and "Traceback" not in err
    assert "hardware.gpu_model" in err and "did you mean a100-80g" in err and "h200-141g" in err


def test_an_impossible_mfu_or_token_count_is_a_user_error(run_cli):
    code, out, err = run_cli("fit", "gemma7b-dolly-chatml", "--mfu", "40")
    assert code == 2 and "--mfu 40.0" in err and "at most 1" in err
    code, out, err = run_cli("fit", "gemma7b-dolly-chatml", "--tokens", "0")
    assert code == 2 and "--tokens 0" in err


def test_every_shipped_hardware_profile_names_a_gpu_of_the_table():
    for path in loading.base_files():
        text = path.read_text(encoding="utf-8")
        if "gpu_model:" in text:
            name = text.split("gpu_model:")[1].split()[0]
            assert name in gpus.NAMES, (path, name)


# ---------------------------------------------------------------- the model on the meta device


@pytest.mark.model
@pytest.mark.parametrize(("hub_id", "published"), [("mistralai/Mistral-7B-v0.1", 7_241_732_096),
                                                    ("google/gemma-7b", 8_537_680_896),  # tied embeddings: once
                                                    ("EleutherAI/pythia-70m", 70_426_624)])
def test_meta_device_parameter_count_equals_the_published_size(fit_cache, hub_id, published):
    config = model_config.find(ModelSpec(base=hub_id))
    assert "runner/estimate/configs" in config.source
    assert meta.architecture(config).params_total == published


@pytest.mark.model
def test_lora_trainable_count_is_peft_on_the_meta_model(fit_cache):
    config = model_config.find(ModelSpec(base="mistralai/Mistral-7B-v0.1"))
    architecture = meta.architecture(config)
    # 32 layers x r 16 x (in + out) of q, k, v, o, gate, up, down
    per_layer = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3)
    assert meta.lora_trainable(config, LoraSpec(r=16, target="all-linear"), architecture) == 32 * per_layer


@pytest.mark.model
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("lora", [None, LoraSpec(r=8, dropout=0.05, target="all-linear")], ids=["full", "lora"])
def test_activations_measured_on_meta_equal_what_a_real_cpu_forward_saves(fit_cache, dtype, lora):
    """The meta measurement (fused attention, as torch's CPU flash kernel; autocast's casts emulated) against the
    same forward on real CPU tensors under real autocast: autograd's saved tensors per layer per token agree."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    data = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 500, "num_hidden_layers": 2}
    config = model_config.ModelConfig(data, "test", "f" * 64)
    found = meta.activations(config, meta.architecture(config), dtype=dtype, fused=True, adapter=lora)

    def saved(layers: int) -> int:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**{**data, "num_hidden_layers": layers}),
                                                 dtype=torch.float32 if dtype == "fp32" else torch.bfloat16,
                                                 attn_implementation="sdpa").train()
        if lora is not None:  # peft's defaults: adapters in fp32 on a bf16 model
            model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                     target_modules="all-linear", task_type="CAUSAL_LM")).train()
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in weights:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, 500, (1, 128))
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            model(input_ids=ids, labels=ids)
        return sum(seen.values())

    # within 3%: with fp32 adapters under real autocast a few more small casts are kept than the emulation keeps
    assert (saved(2) - saved(1)) / 128 == pytest.approx(found.per_token, rel=0.03)
    assert found.how == "meta forward pass" and found.per_token2 == 0


# ---------------------------------------------------------------- the verb


@pytest.mark.model
@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_fit_works_for_every_shipped_recipe(fit_cache, run_cli, name):
    code, out, err = run_cli("fit", name, "--no-suggestions")
    assert code == 0, err
    assert "memory per" in out and "peak" in out and "verdict:" in out and "time and cost:" in out
    code, out, err = run_cli("fit", name, "--json", "--no-suggestions")
    assert code == 0, err
    report = json.loads(out)
    parts = {p["name"]: p["gib"] for p in report["memory"]["parts"]}
    assert set(parts) == {"weights", "trainable parameters", "gradients", "optimizer states", "activations",
                          "working buffers", "margin"}
    assert report["memory"]["peak_gib"] == pytest.approx(report["memory"]["allocated_gib"] + parts["margin"], abs=0.02)
    assert report["fits"] in (True, False) and report["device"]["memory_gib"] > 0
    assert report["verdict"] == ("fits" if report["fits"] else "does not fit")
    assert report["model"]["params_total"] > 0 and report["model"]["activations_measured"] == "meta forward pass"


@pytest.mark.model
def test_qlora_lora_full_memory_ordering(fit_cache):
    from runner.estimate import fit

    peaks = {}
    for kind, extra in (("qlora", []), ("lora", []), ("full", ["method.lora=null"])):
        # at micro batch 2: with 16 x 512 tokens, LoRA's per-adapter dropout copies outgrow a full fine-tune's states
        loaded = loading.load("codellama7b-text-to-sql", [f"method.kind={kind}", "train.micro_batch_size=2", *extra])
        peaks[kind] = fit.fit(loaded, suggest=False, timing=False).memory.peak_gib
    assert peaks["qlora"] < peaks["lora"] < peaks["full"], peaks


NO_CHECKPOINTS_ON_A10G = ("hardware.gpu_model=a10g-24g", "train.gradient_checkpointing=false")


@pytest.mark.model
def test_a_recipe_that_does_not_fit_gets_changes_that_each_lower_the_peak(fit_cache, run_cli):
    # the shipped recipe turns gradient checkpointing on (its fit without it: 108.8 GiB on an 80 GB A100)
    code, out, err = run_cli("fit", "codellama7b-text-to-sql", *NO_CHECKPOINTS_ON_A10G, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["fits"] is False
    current, found = report["memory"]["peak_gib"], report["suggestions"]
    assert found and all(s["peak_gib"] < current for s in found)
    assert any(s["fits"] for s in found)
    for s in found:  # each one re-estimated: the suggested overrides give the estimate it shows
        code, again, err = run_cli("fit", "codellama7b-text-to-sql", *NO_CHECKPOINTS_ON_A10G, *s["overrides"],
                                   "--json", "--no-suggestions")
        assert code == 0, err
        assert json.loads(again)["memory"]["peak_gib"] == s["peak_gib"]
        assert json.loads(again)["fits"] == s["fits"]
    code, text, err = run_cli("fit", "codellama7b-text-to-sql", *NO_CHECKPOINTS_ON_A10G)
    assert "does NOT fit" in text and "changes, each re-estimated" in text
    assert "train.gradient_checkpointing=true" in text


@pytest.mark.model
def test_a_local_directory_holding_only_a_config_json_is_enough(fit_cache, run_cli, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    shutil.copy(model_config.kept_dir("EleutherAI/pythia-70m") / "config.json", folder / "config.json")
    code, out, err = run_cli("fit", "pythia70m-medical-qa", f"model.base={folder}", "--json", "--no-suggestions")
    assert code == 0, err
    report = json.loads(out)
    assert report["model"]["params_total"] == 70_426_624 and str(folder) in report["model"]["config_source"]


@pytest.mark.model
def test_a_hub_model_without_a_config_anywhere_is_a_clear_error(fit_cache, run_cli):
    code, out, err = run_cli("fit", "pythia70m-medical-qa", "model.base=nobody/no-such-model")
    assert code == 2 and "Traceback" not in err
    assert "nobody/no-such-model" in err and "config.json" in err and "hf download" in err


@pytest.mark.model
def test_the_demo_recipe_reads_its_architecture_from_the_gguf_metadata(fit_cache, run_cli):
    code, out, err = run_cli("fit", "smollm2-135m-sql-chatml", "--json", "--no-suggestions")
    assert code == 0, err
    report = json.loads(out)
    assert report["model"]["params_total"] == 134_515_008  # SmolLM2-135M, tied embeddings counted once
    assert "GGUF" in report["model"]["config_source"] or "converted copy" in report["model"]["config_source"]
    assert report["device"]["name"] == "cpu" and report["setup"]["precision"] in ("fp32", "bf16")


@pytest.mark.model
def test_plan_output_shows_the_memory_fit_section(fit_cache, project, run_cli):
    code, out, err = run_cli("plan", "mistral7b-text-to-sql")
    assert code == 0, err
    assert "start it with:" in out and "memory per GPU, estimated peak" in out and "verdict: fits" in out
    assert "time and cost:" not in out  # the plan shows the memory section only


@pytest.mark.model
def test_a_cpu_recipe_takes_its_time_from_a_finished_run_and_its_tokens_from_the_prepared_data(own_trained_run,
                                                                                                 run_cli):
    """tiny-cpu after a real training run: the data was prepared (exact tokens), the run measured tokens/s."""
    from runner.runs.data_info import DataInfo

    code, out, err = run_cli("fit", "tiny-cpu", "--json", "--no-suggestions")
    assert code == 0, err
    timing = json.loads(out)["time"]
    stats = DataInfo.read(own_trained_run.file("data", "data.json")).stats["train"]
    assert timing["tokens_per_epoch"] == stats.tokens and timing["rows_per_epoch"] == stats.rows
    assert timing["data_source"] == "prepared data (recipe prepare)"
    rate = own_trained_run.manifest().train.tokens_per_s
    assert timing["steps"] == 30 and timing["hours"] == pytest.approx(30 * timing["tokens_per_step"] / rate / 3600,
                                                                      rel=1e-2)
    assert any(f"measured in run {own_trained_run.run_id}" in note for note in timing["assumptions"])


@pytest.mark.model
@pytest.mark.bench  # a benchmark phase (a minute and more): `make bench-check`
def test_bench_fit_phase_quick_compares_estimates_with_published_and_measured_memory(tmp_path):
    """bench/run.py --quick --only fit: a real tiny-cpu training's peak RSS beside `recipe fit`, and three published
    GPU rows estimated; the user's runs and cache folders are left alone."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from bench.fit import QUICK_ROWS

    root = Path(__file__).resolve().parent.parent
    out, runs, cache = tmp_path / "results.json", tmp_path / "runs", tmp_path / "cache"
    runs.mkdir()
    cache.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", RECIPE_RUNS_DIR=str(runs),
               RECIPE_CACHE_DIR=str(cache))
    argv = [sys.executable, str(root / "bench" / "run.py"), "--quick", "--only", "fit", "--out", str(out)]
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    figures, details = results["figures"], results["details"]["fit"]
    for key in ("fit_published_verdicts_agree", "fit_published_within_25pct", "fit_published_median_abs_error",
                "fit_cpu_lora_error"):
        assert isinstance(figures[key], float), key
    assert [row["id"] for row in details["published"]] == list(QUICK_ROWS)
    for row in details["published"]:
        assert row["estimate"] > 0 and row["agree"] in (True, False) and row["source"] and row["unit"] in ("GB", "GiB")
    cpu = details["cpu"]["lora"]
    assert cpu["measured_rss_mb"] > 100 and cpu["estimate_mb"] > 100 and cpu["recipe"] == "tiny-cpu"
    assert "tables/llama-2-7b-lora-mb4" in done.stdout and "cpu lora: tiny-cpu measured" in done.stdout
    assert list(runs.iterdir()) == [] and list(cache.iterdir()) == []


def test_a_data_file_not_made_yet_leaves_the_data_size_unknown_not_an_error():
    from runner.estimate import data_size
    from runner.recipe import loading

    loaded = loading.load("smollm2-135m-sql-dpo", ["data.datasets.0.source=file:data/sql-demo/not-made-yet.jsonl"])
    size = data_size.measure(loaded)
    assert size.tokens is None and "file:data/sql-demo/not-made-yet.jsonl does not exist yet" in size.source
