"""runs/_sweep/<recipe>-<key>/sweep.json (SweepFile, version 1): what `recipe sweep` ran and decided, written after
every run it finishes (so an interrupted sweep shows how far it got), read again by the next invocation, and by
sweep.md.

variants   every point of the grid: its overrides and, per seed, the run that trained it (id, status, error)
decision   per variant: the metric's mean over its seeds, the spread between seeds, and against the best variant
           the difference with a 95% interval from a two-level paired bootstrap (items and each variant's seeds),
           and a verdict: best | indistinguishable from best | worse, interval excludes 0
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from runner.core import paths
from runner.core.contracts import Contract, Record

SWEEP_FILE = "sweep.json"
SWEEP_MD = "sweep.md"
SWEEP_PLOT = "sweep-loss.png"


def sweep_dir(recipe: str, key: str) -> Path:
    """runs/_sweep/<recipe>-<key>/ (as compare writes runs/_compare/)."""
    return paths.runs_dir() / "_sweep" / f"{recipe}-{key}"


class SeedRun(Record):
    seed: int | None = None  # None: the recipe's own train.seed
    run_id: str | None = None
    status: str = "pending"  # pending | reused | trained | evaluated | failed
    error: str | None = None


class VariantEntry(Record):
    name: str
    overrides: list[str]
    runs: list[SeedRun] = []


class VariantRow(Record):
    variant: str
    mean: float | None = None  # the metric over the variant's evaluated seeds
    seed_sd: float | None = None  # sample standard deviation between its seeds (None with one seed)
    seeds: int = 0  # seeds evaluated
    n_items: int = 0  # items every compared run answered
    delta: float | None = None  # mean - best's mean
    ci95: list[float] | None = None  # two-level paired bootstrap of delta
    verdict: str  # best | indistinguishable from best | worse, interval excludes 0 | not evaluated


class Decision(Record):
    metric: str
    higher_is_better: bool
    best: str | None = None
    bootstrap_iters: int
    rows: list[VariantRow] = []


class SweepFile(Contract):
    VERSION: ClassVar[int] = 1
    version: Literal[1] = 1
    recipe: str
    key: str
    fixed: list[str] = []  # overrides every variant shares
    axes: dict[str, list[str]]
    seeds: list[int] | None = None
    metric: str
    variants: list[VariantEntry] = []
    decision: Decision | None = None
    cost_s: float | None = None  # training and eval seconds of every run, from their manifests
