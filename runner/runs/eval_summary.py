"""eval/summary.json (EvalSummary, version 4): written by `recipe eval` (runner.evaluate.run_suite, its figures
computed by runner.evaluate.scoring), read by the report, the model card, tracking, `recipe compare` and `recipe gate`.

candidates  every candidate's metrics; against the reference candidate (default: finetuned) on the same items, the
            paired delta = candidate - reference, its 95% bootstrap interval and the sign-test p (runs.intervals)
judges      the suite's judge over the candidates: pairwise tallies, ranking, single-answer grades
Version 4 added each candidate's engine, size on disk and answer tokens/s (absent, None, in older files).
The base-vs-fine-tuned view that version 1 stored (`metrics`, `judge`) is read from these: versus_base() and
judge_versus_base(). Versions 1 and 2 are migrated on reading (their `metrics` become the base and finetuned
candidates where version 2 had none; their `judge` a pair of `judges` where it had none).
"""
from __future__ import annotations

import copy
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationError

from runner.core.contracts import Contract, Record
from runner.runs.intervals import Interval

BOOTSTRAP_ITERS = 2000
SEED = 0
BASE, FINETUNED = "base", "finetuned"


class CandidateMetric(Interval):
    """One metric of one candidate: value; against the reference on the same items, delta = value - reference."""

    reference: float | None = None  # the reference candidate's value on the same items
    higher_is_better: bool | None = None  # recorded direction (None: the metric registry's)


class CandidateSummary(Record):
    kind: str  # base | finetuned | merged | export | fewshot | run | model (runner.recipe.candidates)
    slug: str  # its files: eval/samples-<slug>-<task>.jsonl, eval/results-<slug>.json
    source: str | None = None  # the model directory or run it answered with (None: not recorded, version 1)
    template: str | None = None
    shots: int = 0
    engine: str | None = None  # transformers | llama.cpp (None: not recorded)
    size_bytes: int | None = None  # its weights on disk (an adapter with its base)
    answer_tokens_per_s: float | None = None  # generated answer tokens per second on the machine that evaluated
    metrics: dict[str, CandidateMetric] = {}


class PairTally(Record):
    """Pairwise judge verdicts of a against b over the same items (both answer orders per item)."""

    a: str
    b: str
    wins: int  # a better in both orders
    ties: int  # an explicit tie, orders disagreeing, or a verdict missing
    losses: int
    n: int
    win_rate: float | None = None  # (wins + ties / 2) / n
    position_bias: int | None = 0  # items whose two verdicts named the same position (None: not recorded, version 1)
    unparseable: int | None = 0  # replies with no [[A]]/[[B]]/[[C]] (out of 2 n)


class RankEntry(Record):
    candidate: str
    strength: float  # Bradley-Terry log-strength, mean 0 over the candidates
    ci95: list[float] | None = None  # bootstrap over items


class GradeSummary(Record):
    mean: float | None = None  # 1-10 over the items with a parseable [[rating]]
    ci95: list[float] | None = None
    n: int
    unparseable: int = 0


class JudgesSummary(Record):
    """The suite's judge over every candidate: pairwise tallies and ranking, single-answer grades."""

    kind: str | None = None  # None: not recorded (a version-1 tally written without it)
    model: str | None = None
    prompts: dict[str, str] = {}  # prompt file -> its version
    skipped: str | None = None
    pairs: list[PairTally] = []
    ranking: list[RankEntry] | None = None  # with three or more candidates
    grades: dict[str, GradeSummary] | None = None
    reference_guided: bool = False


class JudgeVersusBase(Record):
    """The fine-tuned model's tally against the base: judge_versus_base(), read from judges (the report, the model
    card, tracking; compare.json's per-run judge rows). Version 1 stored it as `judge`."""

    kind: str | None = None
    model: str | None = None
    skipped: str | None = None
    wins: int | None = None
    ties: int | None = None
    losses: int | None = None
    n: int | None = None
    win_rate: float | None = None  # wins / n
    adjusted_win_rate: float | None = None  # (wins + ties / 2) / n


class EvalSummary(Contract):
    VERSION: ClassVar[int] = 4
    version: Literal[4] = 4
    suite: str
    suite_version: str
    n_items: int
    skipped: dict[str, str] = {}
    bootstrap_iters: int = BOOTSTRAP_ITERS
    seed: int = SEED
    reference: str = FINETUNED
    candidates: dict[str, CandidateSummary] = {}  # every candidate's metrics against the reference
    judges: JudgesSummary | None = None

    def versus_base(self) -> dict[str, CandidateMetric]:
        """Per metric of the fine-tuned model: its value, the base's (`reference`) and, where one of the two is the
        reference, the paired delta fine-tuned - base with its interval (otherwise values only)."""
        ft, base = self.candidates.get(FINETUNED), self.candidates.get(BASE)
        if ft is None:
            return {}
        out = {}
        for name, mine in ft.metrics.items():
            theirs = base.metrics.get(name) if base is not None else None
            if theirs is None:
                out[name] = CandidateMetric(value=mine.value, n=mine.n, higher_is_better=mine.higher_is_better)
            elif self.reference == BASE:
                out[name] = mine
            elif self.reference == FINETUNED:
                out[name] = CandidateMetric(**theirs.reversed(mine.value), reference=theirs.value,
                                            higher_is_better=mine.higher_is_better)
            else:
                out[name] = CandidateMetric(value=mine.value, reference=theirs.value, n=mine.n,
                                            higher_is_better=mine.higher_is_better)
        return out

    def judge_versus_base(self) -> JudgeVersusBase | None:
        """The judge's fine-tuned-vs-base tally, or why there is none; None without a judge."""
        judges = self.judges
        if judges is None:
            return None
        head = {"kind": judges.kind, "model": judges.model}
        if judges.skipped:
            return JudgeVersusBase(**head, skipped=judges.skipped)
        pair = next((p for p in judges.pairs if {p.a, p.b} == {BASE, FINETUNED}), None)
        if pair is None:
            return JudgeVersusBase(**head, skipped="no fine-tuned vs base pair was judged" if judges.pairs else
                                "the suite's judge grades single answers (see judges)")
        wins, losses = (pair.losses, pair.wins) if pair.a == BASE else (pair.wins, pair.losses)
        n = pair.n
        return JudgeVersusBase(**head, wins=wins, ties=pair.ties, losses=losses, n=n,
                            win_rate=wins / n if n else None,
                            adjusted_win_rate=(wins + 0.5 * pair.ties) / n if n else None)


class _V1Metric(Interval):
    """A metric as versions 1 and 2 stored it: value is `finetuned`, delta fine-tuned - base (read by migration)."""

    value: float | None = Field(None, alias="finetuned")
    base: float | None = None
    higher_is_better: bool | None = None


class _V1Shape(Record):
    """The base-vs-fine-tuned sections of versions 1 and 2 (read by migration only)."""

    model_config = ConfigDict(extra="ignore")
    metrics: dict[str, _V1Metric] | None = None
    judge: JudgeVersusBase | None = None


def _candidates_from_v1(metrics: dict[str, _V1Metric]) -> dict:
    """Version 1's base-vs-fine-tuned metrics as the base and finetuned candidates (reference: finetuned)."""
    ft, base = {}, {}
    for name, m in metrics.items():
        ft[name] = {"value": m.value, "n": m.n, "higher_is_better": m.higher_is_better}
        if m.base is not None:
            base[name] = m.reversed(m.base) | {"reference": m.value, "higher_is_better": m.higher_is_better}
    out = {BASE: {"kind": BASE, "slug": BASE, "metrics": base}} if base else {}
    return out | {FINETUNED: {"kind": FINETUNED, "slug": FINETUNED, "metrics": ft}}


def _judges_from_v1(judge: JudgeVersusBase) -> dict:
    """Version 1's fine-tuned-vs-base tally as the judges section's one pair (position bias was not recorded)."""
    out = {"kind": judge.kind, "model": judge.model, "skipped": judge.skipped}
    if judge.skipped or judge.n is None:
        return out
    return out | {"pairs": [{"a": FINETUNED, "b": BASE, "wins": judge.wins, "ties": judge.ties, "losses": judge.losses,
                             "n": judge.n, "win_rate": judge.adjusted_win_rate, "position_bias": None,
                             "unparseable": None}]}


def _from_v2(data: dict) -> dict:
    """Version 3 drops version 2's copies of version 1's shape (`metrics`, `judge`): kept where nothing else holds
    them (a version-1 file has no candidates or judges), and a metric's recorded direction moves onto its records."""
    try:
        legacy = _V1Shape.model_validate(data)
    except ValidationError:
        return data  # damaged: version 3's check names the key
    data = copy.deepcopy({k: v for k, v in data.items() if k not in ("metrics", "judge")})
    metrics = legacy.metrics or {}
    if not data.get("candidates") and metrics:
        data["candidates"] = _candidates_from_v1(metrics)
    candidates = data.get("candidates")
    for candidate in candidates.values() if isinstance(candidates, dict) else ():
        records = candidate.get("metrics") if isinstance(candidate, dict) else None
        for name, record in records.items() if isinstance(records, dict) else ():
            if name in metrics and metrics[name].higher_is_better is not None and isinstance(record, dict):
                record["higher_is_better"] = metrics[name].higher_is_better
    if data.get("judges") is None and legacy.judge is not None:
        data["judges"] = _judges_from_v1(legacy.judge)
    return data


EvalSummary.MIGRATIONS = {0: lambda data: data | {"suite_version": str(data.get("suite_version"))},
                          1: lambda data: data,  # version 2 only added sections (candidates, judges, reference)
                          2: _from_v2,
                          3: lambda data: data}  # version 4 only added optional candidate fields
