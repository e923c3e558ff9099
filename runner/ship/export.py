"""`recipe export`: a run's model in the form it will be deployed, into run/export/ with export/export.json.

  merged          run/merged/ (the adapter folded into its base; `recipe merge`), recorded as an artifact
  gguf-f16        llama.cpp's own converter (convert_hf_to_gguf.py) on the merged model (a full fine-tune: model/)
  gguf-q8_0       llama.cpp's quantizer on the f16 file
  gguf-q4_k_m
Each GGUF file carries the recipe's template as its chat template (runner.recipe.chat_template: what
`recipe serve` uses) and the stop strings (`recipe_runner.stop`), and has an Ollama Modelfile beside it (template,
system, stop, greedy decoding as eval measured it). Each folder is staged and renamed into place, so a failed
export leaves the earlier ones as they were.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runner.core import paths
from runner.core.atomic import file_lock, staging_dir
from runner.core.console import say
from runner.core.errors import Problem, UserError
from runner.evaluate.generate import render_prompt
from runner.models import llamacpp, resolve
from runner.recipe import chat_template
from runner.runs import rundir
from runner.runs.export_info import GGUF_QUANTS, Artifact, ExportInfo, artifact_name
from runner.serve.folder import stop_strings
from runner.ship import gguf_convert

MODELFILE = "Modelfile"
QUANT_TYPES = {"q8_0": "Q8_0", "q4_k_m": "Q4_K_M"}  # llama.cpp's LLAMA_FTYPE_MOSTLY_<type>


@dataclass(frozen=True)
class Prompting:
    """What a GGUF file carries besides its weights: how to prompt it and where its answers end."""

    chat_template: str
    stop: list[str]
    system: str | None
    go_template: str  # the same prompt as an Ollama (Go) template
    context_length: int | None


def needs_merge(run: rundir.RunDir) -> bool:
    """An adapter run whose merged model is not there yet (GGUF and `merged` are made from it)."""
    manifest = run.trained()
    return bool(manifest.adapter) and not (run.merged_path / "config.json").is_file()


def source_folder(run: rundir.RunDir) -> Path:
    """The Hugging Face folder a GGUF file is converted from: merged/ for an adapter, model/ for a full fine-tune."""
    manifest = run.trained()
    return run.merged_path if manifest.adapter else run.file(manifest.model_dir)


def prompting(run: rundir.RunDir) -> Prompting:
    from transformers import AutoTokenizer

    manifest, recipe = run.trained(), run.recipe()
    base = Path(manifest.base_model_dir)
    tokens = resolve.tokenizer_tokens(base, AutoTokenizer.from_pretrained(base))
    system = recipe.data.system
    go = render_prompt(recipe, "{{ .Prompt }}", tokens, system="{{ .System }}" if system else "")
    return Prompting(chat_template=chat_template.chat_template(recipe, tokens.chat_template),
                     stop=stop_strings(recipe, manifest, tokens), system=system, go_template=go,
                     context_length=recipe.model.context_length)


def pre_tokenizer_fallback(base: str, folder: Path) -> tuple[str | None, str]:
    """The pre-tokenizer to name when llama.cpp's converter does not recognise the tokenizer of `folder`: that of
    the base model's GGUF file (model.base `base`), whose tokenizer this is, or gpt-2 for a byte-level BPE tokenizer
    that splits as GPT-2 does; (None, "") when neither applies."""
    carried = resolve.gguf_string(base, "tokenizer.ggml.pre")
    if carried:
        return carried, f"carried over from the base model's GGUF file {base}"
    try:
        pre = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    except (OSError, ValueError):
        return None, ""
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        return "gpt-2", "the tokenizer is a byte-level BPE that splits text with GPT-2's pattern"
    return None, ""


def tokenizer_source(base: str, folder: Path) -> Path | None:
    """The base model's GGUF file when the model was trained on one and keeps its vocabulary: its tokenizer fields
    go into the export in place of the converted ones (runner.ship.gguf_convert)."""
    import gguf

    path = resolve.gguf_path(base)
    if path is None:
        return None
    try:
        tokens = gguf.GGUFReader(path).get_field("tokenizer.ggml.tokens")
        vocab = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError):
        return None
    return path if tokens is not None and len(tokens.data) == vocab else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(args: list[str], log: Path) -> int:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        return subprocess.call([sys.executable, "-m", "runner.ship.gguf_convert", *args], stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _log_tail(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _convert(run: rundir.RunDir, folder: Path, out: Path, how: Prompting, log: Path) -> tuple[str, str | None]:
    """llama.cpp's converter, folder -> out (f16); the pre-tokenizer written into it and, when it is not the
    converter's own recognition, why."""
    manifest, recipe = run.trained(), run.recipe()
    fallback, why = pre_tokenizer_fallback(manifest.base_model, folder)
    carried = tokenizer_source(manifest.base_model, folder)
    settings = {"llama_cpp": str(llamacpp.converter_dir()), "pre_tokenizer": fallback, "pre_tokenizer_why": why,
                "tokenizer_from": str(carried) if carried else None,
                "args": [str(folder), "--outfile", str(out), "--outtype", "f16"],
                "metadata": {"tokenizer.chat_template": how.chat_template, "recipe_runner.stop": how.stop,
                             "general.name": f"{recipe.name} {recipe.version} (run {manifest.run_id})"}}
    settings_file = out.parent / "convert.json"
    settings_file.write_text(json.dumps(settings), encoding="utf-8")
    code = _run(["convert", str(settings_file)], log)
    settings_file.unlink()
    where = f"recipe export {recipe.name}@{manifest.run_id}"
    if code == gguf_convert.EXIT_UNRECOGNISED:
        raise UserError(Problem(where, "", f"llama.cpp {llamacpp.VERSION}'s converter does not recognise the "
                                f"tokenizer of {paths.display(folder)} and its pre-tokenizer could not be told from "
                                "the base model; export --format merged and serve it with transformers, or use a "
                                "base model llama.cpp supports"))
    if code != 0:
        tail = _log_tail(log)
        hint = ("llama.cpp cannot convert this architecture; export --format merged instead"
                if "not supported" in tail else f"the whole log is {paths.display(log)}")
        raise UserError(Problem(where, "", f"llama.cpp's converter failed ({tail}); {hint}"))
    written = _gguf_pre(out)
    if carried:
        return written, ("the tokenizer fields are the base model's own, carried over from its GGUF file "
                         f"{manifest.base_model}")
    text = log.read_text(encoding="utf-8", errors="replace")
    return written, (why if fallback and "pre-tokenizer not recognised by llama.cpp" in text else None)


def _gguf_pre(file: Path) -> str | None:
    import gguf

    field = gguf.GGUFReader(file).get_field("tokenizer.ggml.pre")
    return field.contents() if field is not None else None


def _quantize(source: Path, out: Path, quant: str, log: Path) -> None:
    code = _run(["quantize", str(source), str(out), QUANT_TYPES[quant]], log)
    if code != 0 or not out.is_file():
        raise UserError(Problem(paths.display(out), "", f"llama.cpp's quantizer failed to write {quant} ("
                                f"{_log_tail(log)}); the whole log is {paths.display(log)}"))


def modelfile(gguf_name: str, how: Prompting, recipe) -> str:
    """An Ollama Modelfile: `ollama create NAME -f Modelfile` in the file's folder."""
    lines = [f"# Ollama Modelfile for {gguf_name}, written by recipe-runner from recipe {recipe.name} {recipe.version}",
             f"FROM ./{gguf_name}", f'TEMPLATE """{how.go_template}"""']
    if how.system:
        lines.append(f'SYSTEM """{how.system}"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in how.stop]
    lines.append("PARAMETER temperature 0")  # greedy, as eval measured it
    if how.context_length:
        lines.append(f"PARAMETER num_ctx {how.context_length}")
    return "\n".join(lines) + "\n"


def read_info(run: rundir.RunDir) -> ExportInfo:
    manifest = run.manifest()
    if run.export_info_path.is_file():
        return ExportInfo.read(run.export_info_path)
    return ExportInfo(recipe=manifest.recipe, run_id=manifest.run_id)


def _record(run: rundir.RunDir, artifacts: dict[str, Artifact]) -> ExportInfo:
    run.export_dir().mkdir(parents=True, exist_ok=True)
    with file_lock(run.export_dir() / ".export.lock"):
        info = read_info(run)
        info.artifacts = {**info.artifacts, **artifacts}
        info.write(run.export_info_path)
    return info


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _relative(run: rundir.RunDir, path: Path) -> str:
    return str(path.relative_to(run.path))


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def export_merged(run: rundir.RunDir) -> ExportInfo:
    """Record run/merged/ (already written by `recipe merge`) as the `merged` artifact."""
    from importlib.metadata import version

    folder = run.merged_path
    artifact = Artifact(format="merged", path=_relative(run, folder), size_bytes=_folder_size(folder),
                        source=run.trained().model_dir, tool=f"peft {version('peft')}", created=_now())
    return _record(run, {"merged": artifact})


def export_gguf(run: rundir.RunDir, quants: list[str], log: Path) -> ExportInfo:
    """GGUF files of the run's model, one folder per quant (see the module's docstring)."""
    unknown = [q for q in quants if q not in GGUF_QUANTS]
    if unknown:
        raise UserError(Problem("--quant", "", f"{', '.join(unknown)}: llama.cpp's GGUF export here offers "
                                f"{', '.join(GGUF_QUANTS)}"))
    recipe = run.recipe()
    folder = source_folder(run)
    if not (folder / "config.json").is_file():
        raise UserError(Problem(paths.display(folder), "", "no model to convert; run `recipe merge` first"))
    llamacpp.ensure(log)
    how = prompting(run)
    run.export_dir().mkdir(parents=True, exist_ok=True)
    tool = f"llama.cpp (llama-cpp-python {llamacpp.VERSION})"
    artifacts: dict[str, Artifact] = {}
    f16_name = artifact_name("gguf", "f16")
    keep_f16 = "f16" in quants  # else only the quantizer's input, converted in a temporary folder
    place = (staging_dir(run.export_dir(f16_name)) if keep_f16 else
             tempfile.TemporaryDirectory(dir=run.export_dir(), prefix=f".{f16_name}.tmp-"))
    with place as f16_folder:
        f16 = Path(f16_folder) / f"{recipe.name}-f16.gguf"
        say(f"export: converting {paths.display(folder)} to GGUF f16 with llama.cpp's converter")
        pre, why = _convert(run, folder, f16, how, log)
        for quant in [q for q in quants if q != "f16"]:
            name = artifact_name("gguf", quant)
            with staging_dir(run.export_dir(name)) as staging:
                out = staging / f"{recipe.name}-{quant}.gguf"
                say(f"export: quantizing to {quant} with llama.cpp's quantizer")
                _quantize(f16, out, quant, log)
                artifacts[name] = _artifact(run, run.export_dir(name) / out.name, quant, folder, tool, how, pre, why)
                (staging / MODELFILE).write_text(modelfile(out.name, how, recipe), encoding="utf-8")
        if keep_f16:
            (f16.parent / MODELFILE).write_text(modelfile(f16.name, how, recipe), encoding="utf-8")
            artifacts[f16_name] = _artifact(run, run.export_dir(f16_name) / f16.name, "f16", folder, tool, how, pre,
                                            why)
    for artifact in artifacts.values():
        artifact.size_bytes = run.file(artifact.path).stat().st_size
        artifact.sha256 = _sha256(run.file(artifact.path))
    return _record(run, artifacts)


def _artifact(run, final: Path, quant: str, folder: Path, tool: str, how: Prompting, pre: str | None,
              why: str | None) -> Artifact:
    return Artifact(format="gguf", quant=quant, path=_relative(run, final), size_bytes=0, source=_relative(run, folder),
                    tool=tool, pre_tokenizer=pre, pre_tokenizer_note=why, chat_template=how.chat_template,
                    stop=how.stop, modelfile=_relative(run, final.parent / MODELFILE), created=_now())


def describe(info: ExportInfo, names: list[str]) -> str:
    lines = []
    for name in names:
        a = info.artifacts[name]
        lines.append(f"  {name:<13} {a.size_bytes / 1e6:8.1f} MB  {a.path}")
    return "\n".join(lines)

