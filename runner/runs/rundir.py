"""Run directories: runs/<recipe>/<run-id>/ with manifest.json, and runs/<recipe>/latest pointing at the newest.

Layout of a run (each stage writes its own files; later stages read them, never the raw recipe YAML):
  manifest.json          runner.runs.manifest.Manifest: recipe, fingerprint, versions, data info, seeds,
                         hardware, timings, status (planned|training|submitted|trained|evaluated|failed), error
  recipe.resolved.yaml   the recipe as validated
  data/                  train/val/test.jsonl (axolotl input_output segments; test rows also carry
                         prompt/reference) and data.json (runner.data.info.DataInfo)
  axolotl.yaml, launch.sh, deepspeed.json, accelerate.yaml
  logs/train.log, metrics.jsonl, ranks/rank-N.jsonl
  model/                 adapter or full model (checkpoint-N/ inside while training)
  eval/                  lm-eval task files, results, samples, summary.json
  report.md, plots/
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from runner.core import cpufeatures, paths
from runner.core.errors import Problem, UserError, unknown_name
from runner.recipe.schema import Recipe
from runner.runs.manifest import Manifest

MANIFEST = "manifest.json"
RESOLVED = "recipe.resolved.yaml"
LATEST = "latest"


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
    current = cpufeatures.concrete(current, run.manifest().target)
    now, then = current.model_dump(mode="json", by_alias=True), trained.model_dump(mode="json", by_alias=True)
    changed = [key for key in now if key != "eval" and now[key] != then.get(key)]
    return trained.model_copy(update={"eval": current.eval}), changed


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
