"""`recipe compare A B [C ...]`: runs (or seed groups) side by side, written as compare.json (Comparison, this
contract) and compare.md (compare_md) with the loss curves in loss.png (loss_plot).

Side A is the reference: every other side's metrics carry the paired 95% interval of (side - A) over the items both
answered. A side that shares no items with A (another test split) gets no interval and a note saying so, never a
zero. Built only from the run directories' own files.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Literal

from runner.core import paths
from runner.core.contracts import Contract, Record
from runner.decide import items as it
from runner.decide.runs_select import Side
from runner.runs.eval_summary import BOOTSTRAP_ITERS, SEED, JudgeVersusBase
from runner.runs.intervals import Interval

FLIP_KEYS = ("exact_match", "sql_execution", "sql_exact_match")  # preferred for "right in one, wrong in the other"


class RunInfo(Record):
    run_id: str
    recipe: str
    recipe_version: str
    fingerprint: str
    seed: int | None = None
    suite: str
    suite_version: str
    n_items: int
    first_loss: float | None = None
    final_loss: float | None = None


class SideInfo(Record):
    label: str
    group: str | None = None
    runs: list[RunInfo]


class Change(Record):
    """A key whose value differs between sides; per side its value, or `varies: [...]` within a seed group."""

    key: str
    values: list[Any]


class Paired(Interval):
    """A side against side 0 over the items both answered: delta = side - side 0 (value: not recorded)."""

    delta: float


class MetricRow(Record):
    name: str
    higher_is_better: bool
    values: list[float | None]  # per side: the run's value, or the mean over a group's seeds
    seed_sd: list[float | None]  # per side: standard deviation between seeds (None: one run)
    seed_range: list[list[float] | None]
    paired: list[Paired | None]  # per side against side 0 (None for side 0, and where no items are shared)


class Shared(Record):
    """Items side `side` shares with the reference (same doc_id and prompt)."""

    side: int
    shared: int
    reference_items: int
    side_items: int
    prompts_differ: int = 0
    note: str | None = None


class Flip(Record):
    side: int  # compared with side 0
    metric: str
    doc_id: Any
    right_in: Literal["reference", "side"]
    prompt: str | None = None
    reference: str | None = None
    answers: list[str | None]  # [side 0's answer, this side's answer] (a group: its first run's)


class JudgeInfo(JudgeVersusBase):
    """One run's own judge tally (its fine-tuned model against its base), on its side."""

    side: int
    run_id: str


class Comparison(Contract):
    VERSION: ClassVar[int] = 1
    version: Literal[1] = 1
    sides: list[SideInfo]
    recipe_changes: list[Change] = []
    data_changes: list[Change] = []
    items: list[Shared] = []
    metrics: list[MetricRow] = []
    flips: list[Flip] = []
    judges: list[JudgeInfo] = []
    loss_plot: str | None = None
    notes: list[str] = []
    bootstrap_iters: int = BOOTSTRAP_ITERS
    seed: int = SEED


def _flatten(value, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out |= _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: value}


def _per_side(values_by_side: list[list[Any]]) -> list[Any]:
    """A side's value, or {'varies': [...]} when its runs differ (a seed group's train.seed)."""
    out = []
    for values in values_by_side:
        distinct = [v for i, v in enumerate(values) if v not in values[:i]]
        out.append(distinct[0] if len(distinct) == 1 else {"varies": distinct})
    return out


def _changes(flat_by_side: list[list[dict]]) -> list[Change]:
    keys = sorted({k for side in flat_by_side for flat in side for k in flat})
    changes = []
    for key in keys:
        values = _per_side([[flat.get(key) for flat in side] for side in flat_by_side])
        if any(v != values[0] or isinstance(v, dict) and "varies" in v for v in values):
            changes.append(Change(key=key, values=values))
    return changes


def _data_facts(data: it.RunData) -> dict:
    info = data.manifest.data
    if info is None:
        return {"data": None}
    return {"prepared data (key)": info.key[:12], "template": info.template,
            **{f"source {name}": fp[:12] for name, fp in info.fingerprints.items()},
            **{f"rows {split}": n for split, n in info.counts.items()}}


def _run_info(data: it.RunData) -> RunInfo:
    m, train = data.manifest, data.manifest.train
    return RunInfo(run_id=m.run_id, recipe=m.recipe, recipe_version=m.recipe_version, fingerprint=m.fingerprint,
                   seed=m.seeds.train if m.seeds else None, suite=data.summary.suite,
                   suite_version=data.summary.suite_version, n_items=data.summary.n_items,
                   first_loss=train.first_loss if train else None, final_loss=train.final_loss if train else None)


def _metric_names(runs: list[list[it.RunData]]) -> list[str]:
    names: list[str] = []
    for side in runs:
        for data in side:
            names += [n for n in data.metrics if n not in names]
    return names


def _mean(values: list[float | None]) -> float | None:
    numbers = [v for v in values if v is not None]
    return it.rounded(sum(numbers) / len(numbers)) if numbers else None


def _metrics(names: list[str], runs: list[list[it.RunData]], tables: dict, ids: dict) -> list[MetricRow]:
    rows = []
    for name in names:
        task, _ = it.task_and_key(name)
        per_run = [[(d.metrics[name].value if name in d.metrics else None) for d in side]
                   for side in runs]
        spreads = [it.seed_spread(values) for values in per_run]
        paired = [None] + [it.paired(name, tables[task][0], tables[task][i], ids[task][i]) for i in
                           range(1, len(runs))]
        values = [_mean(vs) for vs in per_run]
        rows.append(MetricRow(name=name, higher_is_better=it.higher_is_better(name, [d for s in runs for d in s]),
                              values=values, seed_sd=[s[0] for s in spreads], seed_range=[s[1] for s in spreads],
                              paired=[Paired(**p) if p else None for p in paired]))
    return rows


def _shared(tables: dict, ids: dict, n_sides: int) -> tuple[list[Shared], list[str]]:
    shared, notes = [], []
    task = it.GENERATE_TASK if it.GENERATE_TASK in tables else next(iter(tables), None)
    for i in range(1, n_sides):
        if task is None:
            break
        ref, side = tables[task][0], tables[task][i]
        same, differ = ids[task][i], ids[f"{task}:differ"][i]
        note = None
        if not same:
            note = (f"side {i + 1} shares no items with side 1 ({len(side.prompt)} vs {len(ref.prompt)} items"
                    f"{f', {differ} with the same id but another prompt' if differ else ''}): a different test "
                    "split or prompt format; no paired interval")
        elif len(same) < max(len(ref.prompt), len(side.prompt)):
            note = f"side {i + 1} shares {len(same)} of {len(ref.prompt)} items with side 1: intervals over those"
        if note:
            notes.append(note)
        shared.append(Shared(side=i, shared=len(same), reference_items=len(ref.prompt), side_items=len(side.prompt),
                             prompts_differ=differ, note=note))
    return shared, notes


def _flips(tables: dict, ids: dict, n_sides: int) -> list[Flip]:
    task = it.GENERATE_TASK
    if task not in tables:
        return []
    key = it.binary_key(tables[task], list(FLIP_KEYS))
    if key is None:
        return []
    out = []
    for i in range(1, n_sides):
        ref, side = tables[task][0], tables[task][i]
        for doc_id, right_in_side in it.flips(key, ref, side, ids[task][i]):
            out.append(Flip(side=i, metric=key, doc_id=doc_id, right_in="side" if right_in_side else "reference",
                            prompt=ref.prompt[doc_id], reference=ref.reference[doc_id],
                            answers=[ref.answer[doc_id], side.answer[doc_id]]))
    return out


def _judges(runs: list[list[it.RunData]]) -> list[JudgeInfo]:
    out = []
    for i, side in enumerate(runs):
        for data in side:
            judge = data.summary.judge_versus_base()
            if judge is not None:
                out.append(JudgeInfo(side=i, run_id=data.manifest.run_id, **judge.model_dump()))
    return out


def build(sides: list[Side]) -> tuple[Comparison, list[list[it.RunData]]]:
    """The comparison of evaluated sides (side 0 is the reference) and the runs' data it was built from."""
    runs = [it.side_runs(side) for side in sides]
    names = _metric_names(runs)
    answered = {t for side in runs for d in side for t in d.samples}
    tasks = sorted({it.task_and_key(n)[0] for n in names} | ({it.GENERATE_TASK} & answered))
    tables = {task: [it.side_items(side, task) for side in runs] for task in tasks}
    ids: dict = {}
    for task in tasks:
        pairs = [it.shared_ids(tables[task][0], tables[task][i]) for i in range(len(runs))]
        ids[task], ids[f"{task}:differ"] = [p[0] for p in pairs], [p[1] for p in pairs]
    shared, notes = _shared(tables, ids, len(runs))
    suites = {(d.summary.suite, d.summary.suite_version) for side in runs for d in side}
    if len(suites) > 1:
        notes.append("the runs were evaluated with different suites: " +
                     ", ".join(f"{s} {v}" for s, v in sorted(suites)) + "; a metric one lacks is shown as —")
    recipes = [[_flatten(data.run.recipe().model_dump(mode="json", by_alias=True)) for data in side] for side in runs]
    comparison = Comparison(
        sides=[SideInfo(label=s.label, group=s.group, runs=[_run_info(d) for d in r]) for s, r in zip(sides, runs,
                                                                                                      strict=True)],
        recipe_changes=_changes(recipes), data_changes=_changes([[_data_facts(d) for d in side] for side in runs]),
        items=shared, metrics=_metrics(names, runs, tables, ids), flips=_flips(tables, ids, len(runs)),
        judges=_judges(runs), notes=notes)
    return comparison, runs


def default_dir(sides: list[Side]) -> Path:
    """runs/_compare/<labels>-<hash of the run ids>: the same runs compared again land in the same folder."""
    ids = "\0".join(run.run_id for side in sides for run in side.runs)
    slug = "-vs-".join("".join(c if c.isalnum() or c in "._-" else "_" for c in s.label)[:40] for s in sides)
    return paths.runs_dir() / "_compare" / f"{slug[:120]}-{hashlib.sha256(ids.encode()).hexdigest()[:8]}"


def write(sides: list[Side], out: Path | None = None) -> tuple[Path, Comparison]:
    """Write compare.json, compare.md and loss.png into out (default_dir when None); returns (folder, comparison)."""
    from runner.core.atomic import write_text_atomic
    from runner.decide import compare_md, loss_plot

    folder = Path(out) if out is not None else default_dir(sides)
    comparison, runs = build(sides)
    plot = loss_plot.write(folder / "loss.png", [(s.label, side) for s, side in zip(sides, runs, strict=True)])
    comparison = comparison.model_copy(update={"loss_plot": plot})
    comparison.write(folder / "compare.json")
    write_text_atomic(folder / "compare.md", compare_md.render(comparison))
    return folder, comparison
