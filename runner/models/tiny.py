"""A deterministic tiny Llama for tests and demos, built locally in seconds (no hub needed).

The tokenizer is a byte-level BPE trained with `tokenizers` on the sample corpus, with ChatML
special tokens; the model is a 2-layer random-init Llama seeded with 0. Same corpus, same library
versions -> byte-identical files, recorded in `tiny-model.json` so a rebuild is skipped when current.
"""
from __future__ import annotations

import hashlib
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path

from runner.core import paths
from runner.core.atomic import file_lock, staging_dir
from runner.core.console import say
from runner.core.errors import Problem, UserError

STAMP = "tiny-model.json"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")
SETTINGS = {"builder": 1, "vocab_size": 1500, "min_frequency": 2, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
            "max_position_embeddings": 512, "seed": 0}


def default_dir() -> Path:
    """Where the tiny model lives by default: <workspace>/models/tiny-llama (git-ignored)."""
    return paths.project_root() / "models" / "tiny-llama"


def default_corpus() -> list[Path]:
    """The shipped sample datasets, data/samples/*.jsonl of the library, in name order."""
    return sorted((paths.library_root() / "data" / "samples").glob("*.jsonl"))


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _corpus_texts(files: list[Path]):
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(Problem(str(file), "", f"not JSON: {err.msg}", line=number)) from None
            yield "\n".join(_strings(row))


def fingerprint(corpus_files: list[Path]) -> str:
    """Hash of the corpus bytes, the builder settings and the library versions that shape the output."""
    import tokenizers
    import torch
    import transformers

    digest = hashlib.sha256(json.dumps({**SETTINGS, "tokenizers": tokenizers.__version__,
                                        "transformers": transformers.__version__,
                                        "torch": torch.__version__}, sort_keys=True).encode())
    for file in corpus_files:
        digest.update(hashlib.sha256(Path(file).read_bytes()).digest())
    return digest.hexdigest()


def _tokenizer(corpus_files: list[Path]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=SETTINGS["vocab_size"], min_frequency=SETTINGS["min_frequency"],
                                  special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus_texts(corpus_files), trainer=trainer)
    # No post-processor: nothing is added around the text; templates write BOS/EOS themselves.
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=SPECIAL_TOKENS[4:],
                                   chat_template=CHATML, clean_up_tokenization_spaces=False,
                                   model_max_length=SETTINGS["max_position_embeddings"])


def _model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=SETTINGS["hidden_size"],
                         num_hidden_layers=SETTINGS["num_hidden_layers"],
                         num_attention_heads=SETTINGS["num_attention_heads"],
                         num_key_value_heads=SETTINGS["num_key_value_heads"],
                         intermediate_size=SETTINGS["intermediate_size"],
                         max_position_embeddings=SETTINGS["max_position_embeddings"],
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype="float32")
    torch.manual_seed(SETTINGS["seed"])
    return LlamaForCausalLM(config).to(torch.float32)


def build(out_dir: Path | None = None, corpus_files: list[Path] | None = None) -> Path:
    """Build the tiny model into out_dir (skipped when its stamp matches); returns out_dir."""
    out_dir = Path(out_dir or default_dir()).resolve()
    corpus_files = [Path(f) for f in (corpus_files if corpus_files is not None else default_corpus())]
    missing = [str(f) for f in corpus_files if not f.is_file()]
    if missing or not corpus_files:
        raise UserError(Problem(", ".join(missing) or "data/samples/", "",
                                "tiny-model corpus file not found; give existing .jsonl files"))
    want = fingerprint(corpus_files)
    if _current(out_dir, want):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out_dir.parent / f".{out_dir.name}.lock"):
        if _current(out_dir, want):  # another process built it while we waited
            return out_dir
        say(f"building tiny model in {paths.display(out_dir)} (a few seconds)")
        with staging_dir(out_dir) as tmp, redirect_stdout(sys.stderr):  # deepspeed logs to stdout on save
            tokenizer = _tokenizer(corpus_files)
            tokenizer.save_pretrained(tmp)
            _model(tokenizer).save_pretrained(tmp)
            (tmp / STAMP).write_text(json.dumps({"fingerprint": want, "settings": SETTINGS,
                                                 "corpus": [f.name for f in corpus_files]}, indent=2) + "\n")
    return out_dir


def _current(out_dir: Path, want: str) -> bool:
    try:
        return json.loads((out_dir / STAMP).read_text())["fingerprint"] == want
    except (OSError, ValueError, KeyError, TypeError):
        return False

