"""Read dataset rows from a recipe's sources: hf:<id> through `datasets`, local .jsonl/.json/.csv/.parquet.

Errors name the file (and line for JSONL) and the recipe key that points at it.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from dataclasses import dataclass

from runner.core import paths
from runner.core.errors import Problem, UserError
from runner.recipe.schema import DatasetSpec


@dataclass(frozen=True)
class SourceRows:
    rows: list[dict]
    fingerprint: str  # sha256 of the file bytes, or hub id@revision/config/split
    label: str  # what to call this source in messages and stats


def _decode(raw: bytes, where: str, key: str) -> str:
    try:
        return raw.removeprefix(codecs.BOM_UTF8).decode("utf-8")  # spreadsheet exports start with a BOM
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(Problem(where, key, f"line {line} is not UTF-8 (byte 0x{raw[err.start]:02x}); re-save the "
                                "file as UTF-8", line)) from None


def _read_jsonl(text: str, where: str, key: str) -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(Problem(where, key, f"line {number} is not valid JSON ({err.msg} at column {err.colno});"
                                    " every line of a .jsonl file is one JSON object", number)) from None
        if not isinstance(row, dict):
            raise UserError(Problem(where, key, f"line {number} is a JSON {type(row).__name__}, not an object",
                                    number))
        rows.append(row)
    return rows


def _read_json(text: str, where: str, key: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(Problem(where, key, f"not valid JSON ({err.msg} at line {err.lineno}); a .json dataset is "
                                "an array of objects (use .jsonl for one object per line)", err.lineno)) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} / {"train": [...]}
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(Problem(where, key, "a .json dataset must be an array of objects"))
    return data


def _read_csv(text: str, where: str, key: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _read_parquet(raw: bytes, where: str, key: str) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(io.BytesIO(raw)).to_pylist()
    except Exception as err:  # pyarrow raises several unrelated types for a damaged file
        raise UserError(Problem(where, key, f"not a readable parquet file ({err})")) from None


def _read_file(spec: DatasetSpec, key: str) -> SourceRows:
    path = paths.resolve_local(spec.source.removeprefix("file:"))
    where = paths.display(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(Problem(where, key, f"dataset file not found; fix {key} in the recipe (paths are relative "
                                f"to the project root {paths.project_root()})")) from None
    except OSError as err:
        raise UserError(Problem(where, key, f"cannot read the dataset: {err.strerror}")) from None
    suffix = path.suffix
    if suffix == ".parquet":
        rows = _read_parquet(raw, where, key)
    else:
        text = _decode(raw, where, key)
        rows = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}[suffix](text, where, key)
    if not rows:
        raise UserError(Problem(where, key, "the dataset is empty; point the recipe at a file with rows"))
    return SourceRows(rows=rows, fingerprint=hashlib.sha256(raw).hexdigest(), label=where)


def _read_hub(spec: DatasetSpec, key: str) -> SourceRows:
    import datasets

    dataset_id = spec.source.removeprefix("hf:")
    try:
        loaded = datasets.load_dataset(dataset_id, spec.config, revision=spec.revision, split=spec.split)
    except Exception as err:  # offline, gated, missing: all mean "cannot read it from here"
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise UserError(Problem("recipe", key, f"cannot load hub dataset {dataset_id!r} ({reason}). Without hub "
                                "access, download it elsewhere (e.g. `hf download --repo-type dataset "
                                f"{dataset_id}`), copy the files here and set {key} to file:<path>")) from None
    revision = spec.revision or getattr(loaded.info, "version", None) or "latest"
    return SourceRows(rows=list(loaded), fingerprint=f"{dataset_id}@{revision}/{spec.config}/{spec.split}/"
                      f"{loaded._fingerprint}", label=spec.source)


def read(spec: DatasetSpec, index: int) -> SourceRows:
    """Rows of the index-th dataset of a recipe."""
    key = f"data.datasets.{index}.source"
    return _read_file(spec, key) if spec.source.startswith("file:") else _read_hub(spec, key)
