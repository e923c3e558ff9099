"""DataInfo: data.json, written last into a prepared data folder (cache and run/data/), read by train,
eval and the report."""
from __future__ import annotations

from typing import ClassVar, Literal

from runner.core.contracts import Contract, Record

SPLITS = ("train", "val", "test")
DATA_FILE = "data.json"  # in a prepared data folder (the cache's, and a run's data/)


class TokenPercentiles(Record):
    min: int
    p50: int
    p90: int
    p99: int
    max: int
    mean: float


class SplitStats(Record):
    rows: int
    tokens: int
    tokens_per_row: TokenPercentiles | None = None  # None for an empty split
    over_max_seq_len: int = 0
    overlength_action: Literal["drop", "truncate"]
    dropped_overlength: int = 0
    rows_by_source: dict[str, int] = {}


class SourceReport(Record):
    """What one dataset gave: rows read, rows incomplete (dropped or an error per data.incomplete) and why."""

    rows: int
    incomplete: int = 0
    incomplete_reasons: dict[str, int] = {}
    identical_pairs: int = 0  # preference pairs whose chosen equals rejected: always dropped


class DataInfo(Contract):
    VERSION: ClassVar[int] = 1
    version: Literal[1] = 1
    format: int  # the prepared layout's version (prepare.FORMAT_VERSION), part of the cache key
    key: str
    rows: Literal["segments", "pairs", "kto", "prompts"] = "segments"  # a train/val row's shape (data/preference.py)
    template: str
    stop: list[str]
    counts: dict[str, int]
    rows_by_source: dict[str, dict[str, int]]
    sources: dict[str, SourceReport]
    fingerprints: dict[str, str]
    duplicates_removed: int = 0
    stats: dict[str, SplitStats]


def _from_unversioned(data: dict) -> dict:
    return data  # the layout before versions had the same keys


DataInfo.MIGRATIONS = {0: _from_unversioned}
