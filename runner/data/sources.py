"""Read dataset rows from a recipe's sources: hf:<id> through `datasets`, local .jsonl/.json/.csv/.parquet.

Errors name the file (and line for JSONL and CSV) and the recipe key that points at it. A row that cannot be
parsed, or a mapped text column holding a list or an object, is an error: no row is lost or mangled silently.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from runner.core import jsonl, paths
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


def _read_jsonl(text: str, where: str, key: str) -> tuple[list[dict], list[int]]:
    """The rows and the line number of each (lines end at "\n" only; see runner.core.jsonl)."""
    lines = jsonl.parse(text, where, strict=True, key=key)
    return lines.rows, lines.numbers


def _read_json(text: str, where: str, key: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(Problem(where, key, f"not valid JSON ({err.msg} at line {err.lineno}); a .json dataset is "
                                "an array of objects (use .jsonl for one object per line)", err.lineno)) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} / {"train": [...]}
    elif isinstance(data, dict):
        lists = [name for name, value in data.items() if isinstance(value, list)]
        if lists:
            holders = ", ".join(repr(name) for name in lists)
            path = f".{lists[0]}" if lists[0].isidentifier() else f".[{json.dumps(lists[0])}]"
            raise UserError(Problem(where, key, f"a .json dataset must be an array of objects, but this file is an "
                                    f"object with {len(data)} keys ({', '.join(map(repr, list(data)[:8]))}"
                                    f"{', ...' if len(data) > 8 else ''}); the key(s) holding lists: {holders}. "
                                    f"Write the rows alone to their own file (e.g. `jq '{path}' "
                                    f"{where} > rows.json`) and point {key} at it"))
        raise UserError(Problem(where, key, f"a .json dataset must be an array of objects, but this file is an "
                                f"object with keys {sorted(data)[:8]} and none holds a list of rows"))
    if not isinstance(data, list):
        raise UserError(Problem(where, key, f"a .json dataset must be an array of objects, not a JSON "
                                f"{type(data).__name__}"))
    bad = next((i for i, row in enumerate(data) if not isinstance(row, dict)), None)
    if bad is not None:
        raise UserError(Problem(where, key, f"a .json dataset must be an array of objects, but item {bad} (counting "
                                f"from 0) is a JSON {type(data[bad]).__name__}"))
    return data


def _read_csv(text: str, where: str, key: str) -> tuple[list[dict], list[int]]:
    """Rows as {header: value} and the line each starts on. A row with more or fewer fields than the header,
    or a quote that is never closed (a file cut short: the quoted field would swallow the rest of the file),
    is an error with its line, never a silently merged or shortened row."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, lines, header, end = [], [], None, 0
    while True:
        start = end + 1  # the physical line this record starts on
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            if "unexpected end of data" in str(err) or "newline inside string" in str(err):
                message = (f"line {start}: a quoted field opened on this line is never closed, so it would run to "
                           f"the end of the file (line {reader.line_num}); the file may be cut short, or a quote "
                           'inside a field is not doubled (write " inside a quoted field as ""). Fix or remove '
                           "this row")
            elif reader.line_num > start:
                message = (f"line {start}: this row runs on inside a quoted field to line {reader.line_num} and "
                           f"cannot be parsed there ({err}): a quote opened on line {start} is probably never "
                           'closed (a file cut short, or a " inside a field not doubled as ""). Fix or remove this '
                           "row")
            else:
                message = (f"line {start}: not valid CSV ({err}); quote fields that contain commas, quotes or "
                           'newlines, and write " inside a quoted field as ""')
            raise UserError(Problem(where, key, message, start)) from None
        end = reader.line_num
        if not record:  # a blank line
            continue
        if header is None:
            header = record
            seen = {name for name in record if record.count(name) > 1}
            if seen:
                raise UserError(Problem(where, key, f"line {start}: the header names column(s) {sorted(seen)} more "
                                        "than once; give every column its own name", start))
            continue
        if len(record) != len(header):
            spans = f"lines {start}-{end}" if end > start else f"line {start}"
            raise UserError(Problem(where, key, f"{spans}: a row with {len(record)} field(s) where the header has "
                                    f"{len(header)} ({', '.join(header)}); quote fields that contain commas or "
                                    'newlines, write " inside a quoted field as "", and check for a row cut short',
                                    start))
        rows.append(dict(zip(header, record, strict=True)))
        lines.append(start)
    return rows, lines


def _read_parquet(raw: bytes, where: str, key: str, spec: DatasetSpec, index: int) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(raw))
    except Exception as err:  # pyarrow raises several unrelated types for a damaged file
        raise UserError(Problem(where, key, f"not a readable parquet file ({err})")) from None
    for key_path, variable, column in _text_columns(spec, index):  # a whole column of the wrong type: say so once
        if column in table.column_names:
            kind = table.schema.field(column).type
            if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
                raise UserError(Problem(where, key_path, f"column {column!r} (for {variable}) holds {kind}, not "
                                        "text; map a text column, or flatten this one to text first"))
    return table.to_pylist()


def _text_columns(spec: DatasetSpec, index: int) -> list[tuple[str, str, str]]:
    """(recipe key, variable, column) for every column that must hold text: the mapped fields but messages,
    and the extract column."""
    found = [(f"data.datasets.{index}.fields.{variable}", variable, column)
             for variable, column in spec.fields.items() if variable != "messages"]
    if spec.extract:
        found.append((f"data.datasets.{index}.extract.column", "extract", spec.extract.column))
    return found


def _check_values(rows: list[dict], lines: list[int] | None, spec: DatasetSpec, index: int, where: str) -> None:
    """A mapped text column holding a list, an object or bytes is an error naming the row: str() of it would
    train on Python's repr of the value."""
    columns = _text_columns(spec, index)
    for position, row in enumerate(rows):
        for key_path, variable, column in columns:
            value = row.get(column)
            if isinstance(value, (dict, list, tuple, bytes, bytearray)):
                kind = "an object" if isinstance(value, dict) else "a list" if isinstance(value, (list, tuple)) \
                    else "bytes"
                line = lines[position] if lines else None
                at = f"line {line}" if line else f"row {position + 1}"
                raise UserError(Problem(where, key_path, f"{at}: column {column!r} (for {variable}) holds {kind}, "
                                        "not text; map a column that holds text (a list of chat turns maps to "
                                        "`messages`)", line))


def local_path(spec: DatasetSpec, root: Path | None = None) -> Path:
    """Where a `file:` source lives (relative paths from root, else the workspace)."""
    return paths.resolve_local(spec.source.removeprefix("file:"), root)


def _read_file(spec: DatasetSpec, key: str, index: int, root: Path | None = None) -> SourceRows:
    path = local_path(spec, root)
    where = paths.display(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(Problem(where, key, f"dataset file not found; fix {key} in the recipe (paths are relative "
                                f"to the workspace {paths.workspace()})")) from None
    except OSError as err:
        raise UserError(Problem(where, key, f"cannot read the dataset: {err.strerror}")) from None
    suffix, lines = path.suffix, None
    if suffix == ".parquet":
        rows = _read_parquet(raw, where, key, spec, index)
    elif suffix == ".json":
        rows = _read_json(_decode(raw, where, key), where, key)
    else:
        rows, lines = {".jsonl": _read_jsonl, ".csv": _read_csv}[suffix](_decode(raw, where, key), where, key)
    if not rows:
        raise UserError(Problem(where, key, "the dataset is empty; point the recipe at a file with rows"))
    _check_values(rows, lines, spec, index, where)
    return SourceRows(rows=rows, fingerprint=hashlib.sha256(raw).hexdigest(), label=where)


def _read_hub(spec: DatasetSpec, key: str, index: int) -> SourceRows:
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
    rows = list(loaded)
    _check_values(rows, None, spec, index, spec.source)
    return SourceRows(rows=rows, fingerprint=f"{dataset_id}@{revision}/{spec.config}/{spec.split}/"
                      f"{loaded._fingerprint}", label=spec.source)


def read(spec: DatasetSpec, index: int, root: Path | None = None) -> SourceRows:
    """Rows of the index-th dataset of a recipe. A relative file: path is under the workspace, else under
    `root`, the root of the layer the recipe file that wrote it came from (Loaded.root_of)."""
    key = f"data.datasets.{index}.source"
    return _read_file(spec, key, index, root) if spec.source.startswith("file:") else _read_hub(spec, key, index)
