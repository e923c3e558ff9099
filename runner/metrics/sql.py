"""Text-to-SQL metrics: execution accuracy on a SQLite dump, and normalised exact match.

execution_match runs the gold and the predicted query on an in-memory database built from a SQL
text dump (such as data/sql-demo/shop.sql) and compares what they return. A prediction is model
output, so it is treated as hostile: only the first statement runs, an authorizer allows nothing
but reading, the connection is query-only, VM steps and value sizes are capped, and any error
counts as a miss. Nothing here raises on bad predictions.
"""
from __future__ import annotations

import functools
import re
import sqlite3
import threading
from collections import Counter
from pathlib import Path

MAX_VM_STEPS = 1_000_000
_PROGRESS_EVERY = 1_000  # the progress handler runs once per this many VM steps
MAX_VALUE_BYTES = 1_000_000  # longest string or blob a query may build
FLOAT_DIGITS = 6  # floats compare after rounding, so summation order does not matter

# Whitelist: reading tables, calling functions, SELECT and recursive CTEs. Everything else
# (INSERT, DELETE, DROP, CREATE, ATTACH, PRAGMA, BEGIN, SAVEPOINT ...) is refused at prepare time.
_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                              getattr(sqlite3, "SQLITE_RECURSIVE", 33)})

# One lexeme of SQL for statement splitting: quoted strings and identifiers, comments, a
# semicolon, or a run of other characters. Unclosed quotes fall through to the single character.
_LEXEME = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]|--[^\n]*|/\*.*?(?:\*/|\Z)|;"""
                     r"""|[^'"`\[;\-/]+|.""", re.S)
_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]|--[^\n]*|/\*.*?(?:\*/|\Z)"""
                    r"""|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+|\w+|<=|>=|<>|!=|==|\|\||\S""", re.S)
_FENCE = re.compile(r"```[ \t]*(?:sql|sqlite)?[ \t]*\n?(.*?)(?:```|\Z)", re.S | re.I)
_ORDER_BY = re.compile(r"\border\s+by\b", re.I)


def clean_sql(text: str) -> str:
    """The first SQL statement of model output: code fences, trailing ';' and whitespace removed."""
    text = (text or "").strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    pieces = []
    for match in _LEXEME.finditer(text):
        if match.group() == ";":
            break
        pieces.append(match.group())
    return "".join(pieces).strip()


def normalized_sql_match(pred: str, gold: str) -> bool:
    """Exact match after normalising whitespace, keyword and identifier case, comments and ';'."""
    return _normalize(pred) == _normalize(gold)


def _normalize(sql: str) -> tuple[str, ...]:
    tokens = []
    for token in _TOKEN.findall(clean_sql(sql)):
        if token.startswith(("--", "/*")):
            continue
        # String literals keep their case; keywords and identifiers are case-insensitive in SQL.
        tokens.append(token if token.startswith("'") else token.lower())
    return tuple(tokens)


def execution_match(predicted_sql: str, gold_sql: str, db_sql: str) -> bool:
    """True when the prediction returns the same rows as the gold query on the database db_sql.

    Rows compare as multisets, or as ordered lists when the gold query has ORDER BY. Invalid,
    writing, too slow or failing predictions are False; this never raises.
    """
    try:
        predicted = clean_sql(predicted_sql)
        if not predicted:
            return False
        database = _database(db_sql)
        gold_rows = database.run(clean_sql(gold_sql))
        if gold_rows is None:
            return False
        predicted_rows = database.run(predicted)
        if predicted_rows is None:
            return False
        if _ORDER_BY.search(gold_sql):
            return predicted_rows == gold_rows
        return Counter(predicted_rows) == Counter(gold_rows)
    except Exception:  # noqa: BLE001 - a metric scores a miss instead of crashing an evaluation
        return False


class _Database:
    """An in-memory SQLite database built once from a dump, then used read-only."""

    def __init__(self, db_sql: str):
        self.lock = threading.Lock()
        self.conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self.conn.executescript(db_sql)
        self.conn.execute("PRAGMA query_only = ON")
        self.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        self.conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        self.conn.set_authorizer(_authorize)

    def run(self, sql: str) -> list[tuple] | None:
        """The rows sql returns (floats rounded), or None on any error or when it runs too long."""
        with self.lock:
            steps = [0]

            def progress() -> int:
                steps[0] += _PROGRESS_EVERY
                return 1 if steps[0] > MAX_VM_STEPS else 0  # non-zero aborts the query

            self.conn.set_progress_handler(progress, _PROGRESS_EVERY)
            try:
                rows = self.conn.execute(sql).fetchall()
            except Exception:  # noqa: BLE001 - sqlite3 raises several classes for bad SQL
                return None
            finally:
                self.conn.set_progress_handler(None, 0)
            return [tuple(round(v, FLOAT_DIGITS) if isinstance(v, float) else v for v in row)
                    for row in rows]


def _authorize(action: int, *_args) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


@functools.lru_cache(maxsize=8)
def _database(db_sql: str) -> _Database:
    return _Database(db_sql)


@functools.lru_cache(maxsize=8)
def database_text(pattern: str, db: str) -> str:
    """The SQL dump for one test row: the suite's database pattern with {db} filled in."""
    return Path(pattern.replace("{db}", db)).read_text(encoding="utf-8")
