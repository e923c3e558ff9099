"""Run directories: runs/<recipe>/<run-id>/ with manifest.json, and runs/<recipe>/latest pointing at the newest.

Layout of a run (each stage writes its own files; later stages read them, never the raw recipe YAML):
  manifest.json          resolved recipe, fingerprint, versions, data fingerprints, seeds, hardware,
                         timings, status (planned|prepared|training|trained|evaluated|failed) and error
  recipe.resolved.yaml   the recipe as validated
  data/                  train/val/test.jsonl (axolotl input_output segments; test rows also carry
                         prompt/reference) and data.json (counts, stats)
  axolotl.yaml, launch.sh, deepspeed.json, accelerate.yaml
  logs/train.log, metrics.jsonl, ranks/rank-N.jsonl
  model/                 adapter or full model (checkpoint-N/ inside while training)
  eval/                  lm-eval task files, results, samples, summary.json
  report.md, plots/
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from runner.core import paths
from runner.core.errors import Problem, UserError, unknown_name
from runner.core.atomic import write_json_atomic

MANIFEST = "manifest.json"
LATEST = "latest"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def run_id(self) -> str:
        return self.path.name

    def manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(Problem(paths.display(self.path), "", "not a run directory (no manifest.json)")) from None

    def update(self, **fields) -> dict:
        """Merge fields into the manifest and rewrite it atomically."""
        manifest = self.manifest() if self.manifest_path.exists() else {}
        manifest.update(fields)
        write_json_atomic(self.manifest_path, manifest)
        return manifest

    def file(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)


def recipe_runs(recipe: str) -> Path:
    return paths.runs_dir() / recipe


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
            raise UserError(Problem(paths.display(parent), "", f"cannot create a run directory: {err.strerror}"))
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
        existing = sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name != LATEST) if parent.exists() else []
        if run_id is None:
            raise UserError(Problem(paths.display(parent), "", f"recipe {recipe!r} has no runs yet; run "
                                    f"`recipe train {recipe}` first"))
        raise UserError(Problem(paths.display(parent), "", unknown_name("run", run_id, existing)))
    return RunDir(path.resolve())
