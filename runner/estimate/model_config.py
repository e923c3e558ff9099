"""A model's config.json, without its weights and without the network.

`model.base` is read the way runner/models/resolve.py reads it, but only the architecture is needed:
- pkg://<package>/<file> or a local .gguf: the converted copy's config.json when the GGUF was converted
  already, else the GGUF file's own metadata (transformers reads it; nothing is dequantized);
- a local directory: its config.json (a directory holding only a config.json is enough);
- run:<recipe>: the parent recipe's model (no run needed: training keeps the architecture);
- a hub id: the local Hugging Face cache, else the copy kept in runner/estimate/configs/<org>--<name>/
  (the shipped recipes' models and those of the published measurements in bench/published_memory.json).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from runner.core import paths
from runner.core.atomic import write_json_atomic
from runner.core.errors import Problem, UserError
from runner.models import resolve
from runner.recipe import parents
from runner.recipe.schema import ModelSpec

KEPT = Path(__file__).resolve().parent / "configs"
KEY = "model.base"


@dataclass(frozen=True)
class ModelConfig:
    data: dict  # the parsed config.json (or the GGUF metadata as transformers maps it)
    source: str  # where it was found, for people
    key: str  # sha256 of the bytes it came from: the key of the estimate cache


def kept_ids() -> list[str]:
    """Hub ids whose config.json is kept in the repository."""
    return sorted(folder.name.replace("--", "/", 1) for folder in KEPT.iterdir() if (folder / "config.json").is_file())


def kept_dir(hub_id: str) -> Path:
    return KEPT / hub_id.replace("/", "--", 1)


def _problem(where: str, message: str) -> UserError:
    return UserError(Problem(where, KEY, message))


def _from_file(path: Path, source: str, where: str) -> ModelConfig:
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise _problem(where, f"{paths.display(path)} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise _problem(where, f"{paths.display(path)} has no model_type, so it is not a transformers config.json")
    return ModelConfig(data, source, hashlib.sha256(raw).hexdigest())


def _from_gguf(gguf: Path, where: str) -> ModelConfig:
    converted = resolve.gguf_target(gguf)
    if (converted / "config.json").is_file():
        return _from_file(converted / "config.json", f"the converted copy of {paths.display(gguf)}", where)
    source = f"the GGUF metadata of {paths.display(gguf)}"
    kept = paths.cache_dir() / "estimate" / f"{converted.name}.config.json"  # reading the metadata takes seconds
    if kept.is_file():
        return ModelConfig(json.loads(kept.read_text(encoding="utf-8")), source, converted.name)
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        data = load_gguf_checkpoint(str(gguf), return_tensors=False)["config"]
    except Exception as err:  # noqa: BLE001 - the file is user input; any parse failure is theirs to fix
        raise _problem(where, f"cannot read the GGUF metadata of {gguf} ({type(err).__name__}: {err})") from None
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    with contextlib.suppress(OSError):  # a read-only cache is only slower
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(kept, data)
    return ModelConfig(data, source, converted.name)


def _from_hub(repo_id: str, revision: str, where: str) -> ModelConfig:
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - a malformed id or an unreadable cache: fall back to the kept copy
        cached = None
    if isinstance(cached, str):
        return _from_file(Path(cached), f"the Hugging Face cache ({paths.display(Path(cached))})", where)
    kept = kept_dir(repo_id) / "config.json"
    if kept.is_file():
        return _from_file(kept, f"the copy kept in {paths.display(kept)}", where)
    raise _problem(where, f"no config.json for {repo_id!r}: it is not in the local Hugging Face cache (offline) and "
                   f"not among the configs kept in {paths.display(KEPT)} ({', '.join(kept_ids())}). Fix: on a machine "
                   f"with hub access run `hf download {repo_id} config.json`, or point model.base at a local "
                   "directory holding its config.json (the weights are not needed to estimate)")


def find(spec: ModelSpec, root: Path | None = None, where: str = "recipe") -> ModelConfig:
    """The config of spec.base; problems are reported against `where` (the recipe file)."""
    base = spec.base.strip()
    if parents.is_run(base):  # a staged recipe: the parent's trained model has the parent's base's architecture
        parent = parents.load_parent(base)
        return find(parent.recipe.model, parent.root_of(KEY), paths.display(parent.path))
    if base.startswith(resolve.PKG):
        try:
            return _from_gguf(resolve.package_file(base), where)
        except UserError as err:
            raise UserError([Problem(where, p.key, p.message) for p in err.problems]) from None
    path = paths.resolve_local(base, root)
    if path.is_file():
        if path.suffix != ".gguf":
            raise _problem(where, f"{path} is a file but not .gguf; give a .gguf file or a model directory")
        return _from_gguf(path, where)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _problem(where, f"{path} has no config.json; a model directory (or one holding only its "
                           "config.json) is needed to estimate memory")
        return _from_file(path / "config.json", paths.display(path / "config.json"), where)
    if resolve._is_tiny_model(path):
        from runner.models import tiny

        return _from_file(tiny.build(path) / "config.json", paths.display(path / "config.json"), where)
    if base.endswith(".gguf") or base.startswith(("/", ".", "~")) or not resolve._HUB_ID.match(base):
        raise _problem(where, f"{base!r}: {path} does not exist; give an existing model directory, .gguf file, "
                       "pkg://<package>/<file> or a hub id like org/name")
    return _from_hub(base, spec.revision, where)
