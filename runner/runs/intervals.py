"""Interval: one metric over n items, the figure every decision reads (eval/summary.json's candidates, gate.json's
rows, compare.json's paired deltas): the value and, against another side on the same items, the paired
difference delta = value - other with its 95% paired-bootstrap interval and the two-sided sign-test p. Without
another side delta and p_sign are None; ci95 is then the interval of the value itself where one was drawn (a
gate's floor or ceiling)."""
from __future__ import annotations

from runner.core.contracts import Record


class Interval(Record):
    value: float | None = None
    delta: float | None = None
    ci95: list[float] | None = None
    n: int = 0
    p_sign: float | None = None

    def reversed(self, value: float | None) -> dict:
        """The same comparison read from the other side (whose value is `value`): delta and interval negated."""
        return {"value": value, "delta": _neg(self.delta), "n": self.n, "p_sign": self.p_sign,
                "ci95": None if self.ci95 is None else [_neg(self.ci95[1]), _neg(self.ci95[0])]}


def _neg(x: float | None) -> float | None:
    return None if x is None else (0.0 if x == 0 else -x)  # no "-0.0" in JSON
