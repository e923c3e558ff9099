"""runs/_sweep/<recipe>-<key>/sweep.json (SweepFile, version 2): what `recipe sweep` ran and decided, written after
every run it finishes (so an interrupted sweep shows how far it got), read again by the next invocation, and by
sweep.md.

variants   every point of the grid: its overrides and, per seed, the run that trained it (id, status, error)
tasks      the runs not yet evaluated when the sweep started (a search: its workers), each run by `--task i`: a SLURM
           array task, or one of --parallel processes here
array      with --target slurm: the job array of those tasks
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


def lock_path(recipe: str, fingerprint: str) -> Path:
    """runs/_sweep/locks/<recipe>-<fingerprint>.lock: held while a sweep makes the run of one resolved recipe, by
    whichever sweep, task or worker it is."""
    return paths.runs_dir() / "_sweep" / "locks" / f"{recipe}-{fingerprint[:16]}.lock"


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


class ArrayTask(Record):
    index: int  # --task index (SLURM_ARRAY_TASK_ID in an array)
    variant: str | None = None  # a grid's run: its variant and seed; None for a search worker, which asks the study
    seed: int | None = None


class ArrayJob(Record):
    job_id: str  # the array's SLURM job id; a task is <job_id>_<index>
    script: str  # the sbatch script, in the sweep folder
    limit: int  # at most this many tasks at once (--array=...%limit)


class Decision(Record):
    metric: str
    higher_is_better: bool
    best: str | None = None
    bootstrap_iters: int
    rows: list[VariantRow] = []


class FitEstimate(Record):
    """`recipe fit`'s time estimate for every run of the sweep on the recipe's own hardware profile."""

    device: str
    runs: int
    hours: float | None = None
    gpu_hours: float | None = None
    cost_usd: float | None = None
    note: str = ""  # why there is no figure, when there is none


class SweepFile(Contract):
    VERSION: ClassVar[int] = 2
    version: Literal[2] = 2
    recipe: str
    key: str
    fixed: list[str] = []  # overrides every variant shares
    axes: dict[str, list[str]]
    seeds: list[int] | None = None
    metric: str
    search: Literal["grid", "optuna"] = "grid"  # optuna: variants are the study's trials (optuna.journal)
    trials: int | None = None  # optuna: the study's total
    target: Literal["local", "slurm"] = "local"
    parallel: int = 1  # runs at once: processes on this machine (local), the array's task limit (slurm)
    tasks: list[ArrayTask] = []  # what `recipe sweep --task i` runs: an array task, or one of --parallel processes
    array: ArrayJob | None = None
    variants: list[VariantEntry] = []
    decision: Decision | None = None
    cost_s: float | None = None  # training and eval seconds of every run, from their manifests
    estimate: FitEstimate | None = None


# version 2 added search, trials, target, parallel, tasks, array and estimate, each with a default
SweepFile.MIGRATIONS = {1: lambda data: data}
