"""export/export.json (ExportInfo, version 1): what `recipe export` wrote (runner.ship.export), read by eval's
`export:` candidates, `recipe serve --artifact`, the model card and the report.

One artifact per `<format>-<quant>` name (gguf-f16, gguf-q8_0, gguf-q4_k_m) or `merged`: the file or folder
relative to the run, its size and sha256, what it was made from and with, the chat template and stop strings
written into it.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from runner.core import paths
from runner.core.contracts import Contract, Record
from runner.core.errors import Problem, UserError

EXPORT_FILE = "export.json"
GGUF_QUANTS = ("f16", "q8_0", "q4_k_m")
FORMATS = ("merged", "gguf")


def artifact_name(fmt: str, quant: str | None) -> str:
    """merged, or gguf-<quant>: the folder under export/ and the name an `export:` candidate gives."""
    return fmt if fmt == "merged" else f"{fmt}-{quant}"


class Artifact(Record):
    format: Literal["merged", "gguf"]
    quant: str | None = None  # gguf: f16 | q8_0 | q4_k_m
    path: str  # relative to the run: export/gguf-q8_0/<recipe>-q8_0.gguf, merged
    size_bytes: int
    sha256: str | None = None  # gguf: of the file (a merged folder: None)
    source: str  # relative to the run: the Hugging Face folder it was converted from (merged, model)
    tool: str  # what made it: "llama.cpp <llama-cpp-python version>", "peft <version>"
    pre_tokenizer: str | None = None  # gguf: the pre-tokenizer name written into the file
    pre_tokenizer_note: str | None = None  # why it was not the converter's own recognition
    chat_template: str | None = None  # gguf: the recipe's template as a chat template, written into the file
    stop: list[str] = []
    modelfile: str | None = None  # gguf: relative to the run, the Ollama Modelfile beside it
    created: str  # ISO time


class ExportInfo(Contract):
    VERSION: ClassVar[int] = 1
    version: Literal[1] = 1
    recipe: str
    run_id: str
    artifacts: dict[str, Artifact] = {}


def exported_gguf(run, name: str, where: str) -> tuple[Path, Artifact]:
    """The GGUF file of artifact `name` (gguf-q8_0...) that export/export.json records for `run`, and its record;
    exit 2 naming the `recipe export` line when it is not there (eval and serve never export)."""
    info = ExportInfo.read(run.export_info_path) if run.export_info_path.is_file() else None
    found = info.artifacts.get(name) if info else None
    if found is None or not run.file(found.path).is_file():
        manifest = run.manifest()
        line = f"recipe export {manifest.recipe}@{manifest.run_id} --format gguf --quant {name.split('-', 1)[1]}"
        raise UserError(Problem(where, "", f"no {name} export in {paths.display(run.export_dir())}; it is never "
                                f"exported here: run `{line}` first"))
    return run.file(found.path), found
