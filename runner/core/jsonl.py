"""The one JSON Lines reader and writer.

strict: the input is the user's (a dataset) or a file this runner must trust; a bad line is a UserError
        with file and line. tolerant: the file may have been cut off mid-write (a killed trainer, a full
        disk); bad lines are skipped and counted, never silently.
Lines are split on "\\n" only: str.splitlines() would also break at U+2028 and other separators that
json.dumps(ensure_ascii=False) leaves inside strings.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from runner.core import paths
from runner.core.atomic import write_text_atomic
from runner.core.errors import Problem, UserError


@dataclass
class Lines:
    """Rows read from a JSONL file, and how many lines were skipped (tolerant mode only)."""

    rows: list[dict] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)  # the line each row came from (for later errors)
    skipped: int = 0


def parse(text: str, where: str, strict: bool = True, key: str = "") -> Lines:
    """JSON objects, one a line; blank lines are ignored."""
    out = Lines()
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if not strict:
                out.skipped += 1
                continue
            raise UserError(Problem(where, key, f"line {number} is not valid JSON ({err.msg} at column {err.colno}); "
                                    "every line of a .jsonl file is one JSON object", number)) from None
        if not isinstance(row, dict):
            if not strict:
                out.skipped += 1
                continue
            raise UserError(Problem(where, key, f"line {number} is a JSON {type(row).__name__}, not an object", number))
        out.rows.append(row)
        out.numbers.append(number)
    return out


def read(path: Path, strict: bool = True, key: str = "") -> Lines:
    """parse() of a file (undecodable bytes are replaced in tolerant mode, an error in strict mode)."""
    where = paths.display(path)
    try:
        text = Path(path).read_text(encoding="utf-8", errors="strict" if strict else "replace")
    except FileNotFoundError:
        raise UserError(Problem(where, key, "file not found")) from None
    except UnicodeDecodeError as err:
        raise UserError(Problem(where, key, f"not UTF-8 ({err.reason} at byte {err.start})")) from None
    return parse(text, where, strict, key)


def dumps(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write(path: Path, rows: Iterable[dict]) -> Path:
    """Write rows atomically (all or nothing)."""
    return write_text_atomic(path, dumps(rows))
