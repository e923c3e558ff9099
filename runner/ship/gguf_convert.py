"""Run llama.cpp's own `convert_hf_to_gguf.py` (in a child process: it puts its own gguf-py first on sys.path) with
what a recipe's export adds, and quantize with llama.cpp's quantizer.

  python -m runner.ship.gguf_convert convert SETTINGS.json   converter, with settings["metadata"] written into the
                                                             file (chat template, stop strings, name),
                                                             settings["pre_tokenizer"] used where the converter does
                                                             not recognise the tokenizer's pre-tokenizer, and the
                                                             tokenizer fields of settings["tokenizer_from"] (a GGUF
                                                             file) in place of the converted ones
  python -m runner.ship.gguf_convert quantize IN OUT TYPE    llama_cpp.llama_model_quantize (TYPE: Q8_0, Q4_K_M...)

The converter knows a BPE tokenizer's pre-tokenizer by a hash of how it splits a test text; a tokenizer it has not
seen (the tiny test model's, a local one) stops it with NotImplementedError. The caller then names the pre-tokenizer
it knows from elsewhere: the base model's GGUF file, or a GPT-2-style byte-level tokenizer.
"""
from __future__ import annotations

import json
import logging
import runpy
import sys
from pathlib import Path

UNRECOGNISED = "BPE pre-tokenizer was not recognized"
EXIT_UNRECOGNISED = 3


def _convert(settings: dict) -> int:
    folder = Path(settings["llama_cpp"])
    sys.path[:0] = [str(folder), str(folder / "gguf-py")]
    import gguf
    from conversion import base

    fallback = settings.get("pre_tokenizer")
    original_pre = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original_pre(self, tokenizer)
        except NotImplementedError as err:
            if UNRECOGNISED not in str(err) or not fallback:
                raise
            logging.getLogger("recipe-runner").warning("pre-tokenizer not recognised by llama.cpp; using %r (%s)",
                                                       fallback, settings.get("pre_tokenizer_why", ""))
            return fallback

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    original_header = gguf.GGUFWriter.write_header_to_file
    metadata = settings.get("metadata", {})
    tokenizer_from = settings.get("tokenizer_from")

    def write_header_to_file(self, *args, **kwargs):  # the header counts the keys: add ours before it is written
        if tokenizer_from:
            _carry_tokenizer(self, gguf, tokenizer_from)
        for key, value in metadata.items():
            if isinstance(value, list):
                self.add_array(key, value)
            else:
                self.add_string(key, value)
        return original_header(self, *args, **kwargs)

    gguf.GGUFWriter.write_header_to_file = write_header_to_file
    sys.argv = ["convert_hf_to_gguf.py", *settings["args"]]
    try:
        runpy.run_path(str(folder / "convert_hf_to_gguf.py"), run_name="__main__")
    except NotImplementedError as err:
        print(f"recipe-runner: {err}", file=sys.stderr)
        return EXIT_UNRECOGNISED if UNRECOGNISED in str(err) else 1
    return 0


def _carry_tokenizer(writer, gguf, source: str) -> None:
    """Replace the converted tokenizer.* fields with those of the GGUF file the model's base came from: the
    tokenizer llama.cpp itself wrote and reads (a tokenizer.json that transformers rebuilt from a GGUF file can
    differ in how it spells byte tokens, which llama.cpp then cannot tokenize with)."""
    for key in [k for k in writer.kv_data[0] if k.startswith("tokenizer.")]:
        writer.remove_key(key)
    reader = gguf.GGUFReader(source)
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    logging.getLogger("recipe-runner").warning("tokenizer metadata carried over from %s", source)


def _quantize(source: str, target: str, kind: str) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    return int(llama_cpp.llama_model_quantize(source.encode(), target.encode(), params))


def main(argv: list[str]) -> int:
    if argv[:1] == ["convert"] and len(argv) == 2:
        return _convert(json.loads(Path(argv[1]).read_text(encoding="utf-8")))
    if argv[:1] == ["quantize"] and len(argv) == 4:
        return _quantize(*argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
