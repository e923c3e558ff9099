"""gate.json: the verdict of `recipe gate` on a run (written by runner.decide.gate, shown by runner.report)."""
from __future__ import annotations

from typing import ClassVar, Literal

from runner.core.contracts import Contract
from runner.runs.intervals import Interval

GATE_FILE = "gate.json"


class GateRow(Interval):
    """value: the run's value (min/max; ci95 its own interval) or the paired delta run - baseline (max_drop; delta
    and p_sign beside it)."""

    metric: str
    candidate: str | None = None  # the eval candidate checked (None: the fine-tuned model; max_drop then against it)
    rule: Literal["min", "max", "max_drop"]
    bound: float
    higher_is_better: bool
    seed_sd: float | None = None  # spread between the seeds of a group (beside the item interval)
    verdict: Literal["pass", "fail"]
    why: str


class GateResult(Contract):
    VERSION: ClassVar[int] = 2  # 2: rows name the candidate they check
    version: Literal[2] = 2
    suite: str
    suite_version: str
    runs: list[str]
    baseline: list[str] = []
    passed: bool
    rows: list[GateRow]
    notes: list[str] = []


GateResult.MIGRATIONS = {1: lambda data: data}  # version 2 only added GateRow.candidate (None: the fine-tuned model)
