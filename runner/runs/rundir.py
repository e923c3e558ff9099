"""Run directories: runs/<recipe>/<run-id>/ with manifest.json, and runs/<recipe>/latest pointing at the newest.

Every file a run holds is named here, once (a constant below and a RunDir property or method); no module
outside runner/runs/ spells a run file's name (tests/test_run_files.py checks). Each stage writes its own
files; later stages read them, never the raw recipe YAML:
  manifest.json          manifest_path: runner.runs.manifest.Manifest: recipe, fingerprint, versions, data info,
                         seeds, hardware, timings, status (planned|training|submitted|trained|evaluated|failed), error
  recipe.resolved.yaml   resolved_path: the recipe as validated
  axolotl.yaml, launch.sh, deepspeed.json, accelerate.yaml, serve.sh: AXOLOTL, LAUNCH, DEEPSPEED, ACCELERATE,
                         VLLM_SCRIPT (written by `recipe plan`; relative names, since the launch runs in the run)
  data/                  data_dir; split_path(split): train/val/test.jsonl (axolotl input_output segments; test
                         rows also carry prompt/reference); data_info_path: data.json (runner.runs.data_info.DataInfo)
  logs/                  logs_dir; log_path(name): logs/<name>.log (train, eval, generate, publish, serve, chat)
  metrics.jsonl          metrics_path: one runner.runs.records.MetricsRow per trainer logging step
  ranks/                 ranks_dir: rank-N.jsonl and rank-N.engine.json, written by every training process
  model/                 MODEL: adapter or full model (checkpoint-N/ inside while training; manifest.model_dir)
  merged/                merged_path: the adapter merged into its base (`recipe merge`; manifest.merged_dir)
  export/                export_dir(name): export/<format>-<quant>/ (`recipe export`); export_info_path:
                         export/export.json (runner.runs.export_info.ExportInfo)
  eval/                  eval_dir: lm-eval task folders (tasks_dir(slug)), results_path(slug),
                         samples_path(slug, task): rows of runner.runs.records.SampleRow, summary_path
                         (runner.runs.eval_summary.EvalSummary), judge_path (runner.runs.records.JudgeFile)
  gate.json              gate_path: runner.runs.gate_result.GateResult (`recipe gate`)
  report.md, plots/      report_path, plots_dir (`recipe report`)
  serve/                 serve_dir: the folder `recipe serve` loads
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from runner.core import paths
from runner.core.errors import Problem, UserError, unknown_name
from runner.recipe import precision
from runner.recipe.schema import Recipe
from runner.runs.data_info import DATA_FILE, SPLITS
from runner.runs.export_info import EXPORT_FILE
from runner.runs.gate_result import GATE_FILE
from runner.runs.manifest import Manifest

MANIFEST = "manifest.json"
RESOLVED = "recipe.resolved.yaml"
LATEST = "latest"
AXOLOTL = "axolotl.yaml"
LAUNCH = "launch.sh"
DEEPSPEED = "deepspeed.json"
ACCELERATE = "accelerate.yaml"
VLLM_SCRIPT = "serve.sh"
METRICS = "metrics.jsonl"
REPORT = "report.md"
GATE = GATE_FILE
DATA = "data"
EVAL = "eval"
LOGS = "logs"
RANKS = "ranks"
MODEL = "model"
MERGED = "merged"
EXPORT = "export"
PLOTS = "plots"
SERVE = "serve"
PREPARED = "prepared"  # axolotl's tokenized dataset cache (dataset_prepared_path)

DATA_INFO = f"{DATA}/{DATA_FILE}"
SUMMARY = f"{EVAL}/summary.json"
EXPORT_INFO = f"{EXPORT}/{EXPORT_FILE}"
JUDGE = f"{EVAL}/judge.json"
SAMPLES = f"{EVAL}/samples-*.jsonl"  # eval/samples-<slug>-<task>.jsonl
# Checked by tests/test_run_files.py: no string outside runner/runs/ equals one of RUN_FILES (or the last part of
# one), starts with a RUN_FOLDERS entry and "/", or starts with one of EVAL_PREFIXES.
RUN_FILES = (MANIFEST, RESOLVED, AXOLOTL, LAUNCH, DEEPSPEED, ACCELERATE, VLLM_SCRIPT, METRICS, REPORT, GATE,
             DATA_INFO, SUMMARY, JUDGE, SAMPLES, EXPORT_INFO, *(f"{DATA}/{split}.jsonl" for split in SPLITS))
# A workspace has a data/ folder of its own (data/<dataset>/..., data/samples/), so data/ is checked by its files.
RUN_FOLDERS = (EVAL, LOGS, RANKS, MODEL, MERGED, EXPORT, PLOTS, SERVE, PREPARED)
EVAL_PREFIXES = ("samples-", "results-", "tasks-")


def split_file(split: str) -> str:
    """data/<split>.jsonl, relative to the run (as axolotl.yaml names it)."""
    return f"{DATA}/{split}.jsonl"


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def resolved_path(self) -> Path:
        return self.path / RESOLVED

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def report_path(self) -> Path:
        return self.path / REPORT

    @property
    def gate_path(self) -> Path:
        return self.path / GATE

    @property
    def plots_dir(self) -> Path:
        return self.path / PLOTS

    @property
    def merged_path(self) -> Path:
        return self.path / MERGED

    def export_dir(self, name: str | None = None) -> Path:
        """export/ or export/<name>/ (gguf-q8_0, ...): one exported artifact's folder."""
        return self.path / EXPORT / name if name else self.path / EXPORT

    @property
    def export_info_path(self) -> Path:
        return self.path / EXPORT_INFO

    @property
    def serve_dir(self) -> Path:
        return self.path / SERVE

    @property
    def ranks_dir(self) -> Path:
        return self.path / RANKS

    @property
    def logs_dir(self) -> Path:
        return self.path / LOGS

    def log_path(self, name: str) -> Path:
        """logs/<name>.log (name without .log), or logs/<name> when it has a suffix (slurm-<job>.out)."""
        return self.logs_dir / (name if "." in name else f"{name}.log")

    @property
    def data_dir(self) -> Path:
        return self.path / DATA

    def split_path(self, split: str) -> Path:
        return self.path / split_file(split)

    @property
    def data_info_path(self) -> Path:
        return self.path / DATA_INFO

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def judge_path(self) -> Path:
        return self.path / JUDGE

    def samples_path(self, slug: str, task: str) -> Path:
        """eval/samples-<slug>-<task>.jsonl: a candidate's (base, finetuned, ...) rows of one task."""
        return self.eval_dir / f"samples-{slug}-{task}.jsonl"

    def samples_files(self, slug: str) -> dict[str, Path]:
        """task -> eval/samples-<slug>-<task>.jsonl of every task a candidate answered (a longer slug that starts
        with this one, base-fewshot-3 for base, matches too: callers that know the slugs claim longest first)."""
        prefix = f"samples-{slug}-"
        return {p.name[len(prefix):-len(".jsonl")]: p for p in sorted(self.eval_dir.glob(f"{prefix}*.jsonl"))}

    def results_path(self, slug: str) -> Path:
        return self.eval_dir / f"results-{slug}.json"

    def tasks_dir(self, slug: str | None = None) -> Path:
        """eval/tasks (the lm-eval task files of the base and fine-tuned models) or eval/tasks-<slug>."""
        return self.eval_dir / (f"tasks-{slug}" if slug else "tasks")

    def stale_eval_files(self) -> list[Path]:
        """What a previous evaluation left in eval/ (samples, results, judge, summary, per-candidate task folders)."""
        found = [p for pattern in ("samples-*.jsonl", "results-*.json") for p in self.eval_dir.glob(pattern)]
        return found + [p for p in (self.judge_path, self.summary_path) if p.exists()]

    def stale_task_dirs(self) -> list[Path]:
        return sorted(self.eval_dir.glob("tasks-*"))

    @property
    def run_id(self) -> str:
        return self.path.name

    def manifest(self) -> Manifest:
        if not self.manifest_path.is_file():
            raise UserError(Problem(paths.display(self.path), "", "not a run directory (no manifest.json)"))
        return Manifest.read(self.manifest_path)

    def update(self, **fields) -> Manifest:
        """Set manifest fields (models or plain values), validate the whole and rewrite it atomically."""
        data = self.manifest().to_json()
        for key, value in fields.items():
            data[key] = value.model_dump(mode="json", by_alias=True) if isinstance(value, BaseModel) else value
        manifest = Manifest.from_data(data, paths.display(self.manifest_path))
        manifest.write(self.manifest_path)
        return manifest

    def trained(self) -> Manifest:
        """The manifest of a run that has a trained model (and its base), or a UserError saying what to do."""
        manifest = self.manifest()
        model = self.file(manifest.model_dir)
        # the weights, not a config: axolotl writes adapter_config.json and config.json when training starts
        weights = ADAPTER_WEIGHTS if manifest.adapter else MODEL_WEIGHTS
        if not any((model / name).is_file() for name in weights):
            raise UserError(Problem(paths.display(self.path), "model", f"no trained model in {paths.display(model)} "
                                    f"(status: {manifest.status.value}); train it first: recipe train "
                                    f"{manifest.recipe}"))
        base = manifest.base_model_dir
        if Path(base).is_absolute() and not Path(base).is_dir():
            raise UserError(Problem(paths.display(self.manifest_path), "base_model_dir", f"base model {base!r} not "
                                    "found; rebuild it (e.g. `recipe tiny-model`) or train the run again"))
        return manifest

    def recipe(self) -> Recipe:
        """The recipe this run was planned with (its recipe.resolved.yaml), not the recipe file as it is now."""
        from pydantic import ValidationError

        from runner.core.validation import describe
        from runner.core.yamlio import read_yaml

        path, where = self.file(RESOLVED), paths.display(self.file(RESOLVED))
        if not path.is_file():
            raise UserError(Problem(paths.display(self.path), RESOLVED, "missing; this run's recipe is unknown; "
                                    "train it again"))
        try:
            return Recipe.model_validate(read_yaml(path, where)[0])
        except ValidationError as err:  # written by an older recipe-runner whose language differed
            raise UserError([Problem(where, *describe(e, Recipe)) for e in err.errors()]) from None

    def file(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)


def recipe_for_eval(run: RunDir, current: Recipe) -> tuple[Recipe, list[str]]:
    """The run's own recipe with the current file's `eval` section, and the top-level sections (other than eval)
    in which the current recipe differs from the run's (`precision: auto` compared as the run decided it)."""
    trained = run.recipe()
    current = precision.concrete(current, run.manifest().target)
    now, then = current.model_dump(mode="json", by_alias=True), trained.model_dump(mode="json", by_alias=True)
    changed = [key for key in now if key != "eval" and now[key] != then.get(key)]
    return trained.model_copy(update={"eval": current.eval}), changed


def recipe_runs(recipe: str) -> Path:
    return paths.runs_dir() / recipe


def runs_in(recipe_dir: Path) -> list[RunDir]:
    """Every run folder of a recipe's folder (runs/<recipe>/), in name order (oldest first); `latest` left out."""
    if not recipe_dir.is_dir():
        return []
    return [RunDir(p) for p in sorted(recipe_dir.iterdir())
            if p.is_dir() and not p.is_symlink() and (p / MANIFEST).is_file()]


def create(recipe: str, fingerprint: str) -> RunDir:
    """A new, empty run directory named <UTC time>-<fingerprint prefix>; unique even when runs start together."""
    parent = recipe_runs(recipe)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(Problem(paths.display(parent), "", f"cannot create the runs folder: {err.strerror}; set "
                                "RECIPE_RUNS_DIR to a writable place")) from None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for attempt in range(1, 1000):
        name = f"{stamp}-{fingerprint[:8]}" + (f"-{attempt}" if attempt > 1 else "")
        try:
            (parent / name).mkdir()  # atomic: exactly one process gets each name
        except FileExistsError:
            continue
        except OSError as err:
            raise UserError(Problem(paths.display(parent), "",
                                    f"cannot create a run directory: {err.strerror}")) from None
        return RunDir(parent / name)
    raise UserError(Problem(paths.display(parent), "", "could not find a free run directory name"))


def point_latest(run: RunDir) -> None:
    """Atomically repoint runs/<recipe>/latest at this run (a relative symlink)."""
    link = run.path.parent / LATEST
    temporary = run.path.parent / f".{LATEST}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(run.path.name)
    os.replace(temporary, link)


def find(recipe: str, run_id: str | None = None) -> RunDir:
    """A recipe's run by id, or its latest run."""
    parent = recipe_runs(recipe)
    name = run_id or LATEST
    path = parent / name
    if not path.exists():
        existing = (sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name != LATEST)
                    if parent.exists() else [])
        if run_id is None:
            raise UserError(Problem(paths.display(parent), "", f"recipe {recipe!r} has no runs yet; run "
                                    f"`recipe train {recipe}` first"))
        raise UserError(Problem(paths.display(parent), "", unknown_name("run", run_id, existing)))
    return RunDir(path.resolve())
