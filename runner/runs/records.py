"""The rows of a run's JSON Lines files and its judge file, typed and shared by writer and reader.

MetricsRow    a row of metrics.jsonl: written by the axolotl plugin (runner.train.plugin) per logging step; read
              by runner.train.summary, the report and its plots, `recipe compare`'s loss plot and the model card.
SampleRow     a row of eval/samples-<slug>-<task>.jsonl: written by runner.evaluate.harness; read by the judge
              (runner.evaluate.judge_run), the report's samples and `recipe compare`/`recipe gate` (runner.decide).
JudgeFile     eval/judge.json (a Contract, version 2; written before versions = 0): the judge's per-item verdicts
              and grades, written by runner.evaluate.judge_run. Versions 0 and 1 are migrated on reading.

A JSONL file carries no version in its rows (the shape axolotl's and lm-eval's own tools read): its row schema is a
Record whose VERSION names the row shape this code writes and reads (a change that old rows do not fit bumps it,
with the reading of older rows kept), and the files are read through the one JSONL reader (runner.core.jsonl).
Tolerant reading (a file cut off by a killed process) skips and counts a row that is not valid JSON or does not fit
the schema; strict reading makes it a UserError naming file and line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import ConfigDict, Field, ValidationError

from runner.core import jsonl, paths
from runner.core.contracts import Contract, Record
from runner.core.errors import Problem, UserError
from runner.core.validation import describe

R = TypeVar("R", bound=Record)


class MetricsRow(Record):
    """One trainer logging step (rank 0). trl's reward metrics (rewards/chosen, eval_rewards/margins, reward, ...)
    are kept under trl's own names beside the named fields, as numbers."""

    VERSION: ClassVar[int] = 1
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float] = Field(init=False)

    step: int | None = None
    epoch: float | None = None
    elapsed_s: float | None = None
    world_size: int | None = None
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    eval_loss: float | None = None
    train_loss: float | None = None
    tokens_seen: int | None = None  # summed over all ranks by the trainer
    tokens_per_s: float | None = None

    def value(self, key: str) -> float | None:
        """A named field or a reward metric by its trl name; None when this step did not log it."""
        if key in type(self).model_fields:
            return getattr(self, key)
        return (self.model_extra or {}).get(key)

    def keys(self) -> set[str]:
        """The names this row logged (named fields and reward metrics)."""
        return set(self.model_fields_set) | set(self.model_extra or {})

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True)  # only what was logged, as the plugin wrote it


class SampleRow(Record):
    """One evaluated item of one candidate. Generation tasks: prediction and scores; perplexity: loglikelihood and
    tokens (scores.perplexity); lm-eval's own tasks: response and scores. Rows written by other tools may carry
    their scores flat beside the text (numbers), which `score_values` reads."""

    VERSION: ClassVar[int] = 1
    model_config = ConfigDict(extra="allow")

    doc_id: Any = None
    index: Any = None  # another tool's item id
    prompt: Any = None
    reference: Any = None
    prediction: Any = None
    response: Any = None
    scores: dict[str, Any] | None = None
    loglikelihood: float | None = None
    tokens: int | None = None

    @property
    def answer(self) -> Any:
        """The prediction (generation tasks), else lm-eval's filtered response."""
        return self.prediction if "prediction" in self.model_fields_set else self.response

    def score_values(self) -> dict[str, Any]:
        """The row's scores: its `scores`, or (a flat row) every key beside the text."""
        if isinstance(self.scores, dict):
            return self.scores
        return self.model_dump(mode="json", exclude_unset=True)

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True)


class JudgedItem(Record):
    doc_id: Any
    answers: dict[str, Any]  # label -> its answer
    outcome: str  # win | tie | loss, from a's side
    verdict_b_first: str | None = None
    verdict_a_first: str | None = None
    raw: list[Any] = []
    unparseable: bool | int = False
    position_bias: bool | int = False


class JudgedPair(Record):
    a: str
    b: str
    items: list[JudgedItem]


class GradedItem(Record):
    model_config = ConfigDict(extra="allow")  # what the grader returned beside the rating

    doc_id: Any
    rating: float | None = None
    raw: Any = None


class RankedCandidate(Record):
    candidate: str
    strength: float
    ci95: list[float] | None = None


class JudgeFile(Contract):
    """eval/judge.json: pairs holds each judged pair's per-item verdicts, grades each candidate's per-item grades."""

    VERSION: ClassVar[int] = 2
    version: Literal[2] = 2
    kind: str
    model: str
    prompts: dict[str, str] = {}
    skipped: str | None = None
    pairs: list[JudgedPair] = []
    ranking: list[RankedCandidate] | None = None
    grades: dict[str, list[GradedItem]] | None = None
    reference_guided: bool | None = None

    def to_json(self) -> dict:
        return {"version": self.version} | self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class _V1Item(Record):
    """Fine-tuned vs base, per item, as versions 0 and 1 held it beside the pairs (read by migration only)."""

    doc_id: Any
    base: Any = None
    finetuned: Any = None
    outcome: str  # the fine-tuned model's
    verdict_base_first: str | None = None
    verdict_ft_first: str | None = None
    raw: list[Any] = []


_V1_TALLY = ("wins", "ties", "losses", "n", "win_rate", "adjusted_win_rate", "items")  # summary.judge's copy


def _from_v1(data: dict) -> dict:
    """Version 2 drops version 1's fine-tuned-vs-base tally and its `items` (a copy of that pair's verdicts); a file
    written before candidates had no pairs: its items become the finetuned-vs-base pair."""
    if data.get("pairs") or not data.get("items"):
        return {k: v for k, v in data.items() if k not in _V1_TALLY}
    try:
        items = [_V1Item.model_validate(i) for i in data["items"]]
    except (ValidationError, TypeError):
        return data  # damaged: version 2's check names the key
    pair = {"a": "finetuned", "b": "base", "items": [
        {"doc_id": i.doc_id, "answers": {"finetuned": i.finetuned, "base": i.base}, "outcome": i.outcome,
         "verdict_b_first": i.verdict_base_first, "verdict_a_first": i.verdict_ft_first, "raw": i.raw}
        for i in items]}
    return {k: v for k, v in data.items() if k not in _V1_TALLY} | {"pairs": [pair]}


JudgeFile.MIGRATIONS = {0: lambda data: data,  # the same keys before versions
                        1: _from_v1}


def read_rows(path: Path, row: type[R], strict: bool = True) -> tuple[list[R], int]:
    """The rows of a JSONL file as `row` records, and how many lines were skipped (tolerant mode: lines that are
    not JSON objects or do not fit the schema)."""
    lines = jsonl.read(path, strict=strict)
    rows, skipped = [], lines.skipped
    for number, data in zip(lines.numbers, lines.rows, strict=True):
        try:
            rows.append(row.model_validate(data))
        except ValidationError as err:
            if not strict:
                skipped += 1
                continue
            raise UserError([Problem(paths.display(path), key, f"line {number}: {message}", number)
                             for key, message in (describe(e, row) for e in err.errors())]) from None
    return rows, skipped


def write_rows(path: Path, rows: list[Record]) -> Path:
    """Write records as JSON Lines, atomically, each as its writer set it."""
    return jsonl.write(path, [r.to_json() if hasattr(r, "to_json") else r.model_dump(mode="json") for r in rows])
