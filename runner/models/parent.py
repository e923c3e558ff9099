"""The model of a parent run (`model.base: run:<recipe>[@<run-id>]`): its merged/ folder, its full fine-tuned
model/, or its base with its LoRA adapter merged once into the cache (locked, staged, then published).

A parent that is missing, still planned, running or failed is a UserError naming the command that makes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.core import paths
from runner.core.atomic import build_once
from runner.core.errors import Problem, UserError
from runner.recipe.parents import KEY, ParentRef, parse
from runner.runs import rundir
from runner.runs.manifest import Manifest, ParentRun, Status

USABLE = (Status.TRAINED, Status.EVALUATED)


@dataclass(frozen=True)
class Parent:
    run: rundir.RunDir
    manifest: Manifest
    model_dir: Path

    def record(self) -> ParentRun:
        m = self.manifest
        return ParentRun(recipe=m.recipe, run_id=m.run_id, fingerprint=m.fingerprint, recipe_version=m.recipe_version,
                         model_dir=str(self.model_dir), base_model=m.base_model, base_model_dir=m.base_model_dir)


def _problem(where: str, message: str) -> UserError:
    return UserError(Problem(where, KEY, message))


def find_run(ref: ParentRef, where: str = "recipe") -> tuple[rundir.RunDir, Manifest]:
    """The parent's run and manifest, checked to hold a finished training; else a UserError with the fix."""
    make = f"`recipe train {ref.recipe}`"
    try:
        run = rundir.find(ref.recipe, ref.run_id)
    except UserError as err:
        detail = err.problems[0].message.split(";")[0]
        raise _problem(where, f"{ref} has no run to start from ({detail}); train the parent first: {make}, then "
                       f"this recipe") from None
    manifest = run.manifest()
    if manifest.status == Status.FAILED:
        why = f" ({manifest.error.stage}: {manifest.error.message})" if manifest.error else ""
        raise _problem(where, f"{ref}: parent run {manifest.run_id} failed{why}; fix it and train it again: {make}"
                       + ("" if ref.run_id is None else ", then name the new run (or drop @<run-id> for the latest)"))
    if manifest.status not in USABLE:
        raise _problem(where, f"{ref}: parent run {manifest.run_id} has not finished training (status: "
                       f"{manifest.status.value}); wait for it, or train the parent: {make}")
    try:
        run.trained()
    except UserError as err:
        raise _problem(where, f"{ref}: {err.problems[0].message}") from None
    return run, manifest


def merged_target(manifest: Manifest) -> Path:
    """Where a parent's adapter is merged into its base when its run has no merged/ folder."""
    return paths.cache_dir() / "models" / f"run-{manifest.recipe}-{manifest.run_id}"


def model_dir(run: rundir.RunDir, manifest: Manifest) -> Path:
    """A complete Hugging Face model directory holding the parent run's trained model."""
    if manifest.merged_dir and (run.file(manifest.merged_dir) / "config.json").is_file():
        return run.file(manifest.merged_dir)
    if not manifest.adapter:
        return run.file(manifest.model_dir)
    target = merged_target(manifest)
    from runner.models.merge import merge_into

    try:
        build_once(target, f"merging the adapter of {paths.display(run.path)} into its base for this stage: {target}",
                   lambda staging: merge_into(Path(manifest.base_model_dir), run.file(manifest.model_dir), staging))
    except OSError as err:
        raise _problem(paths.display(target.parent), f"cannot write the merged parent model: {err.strerror}; free "
                       "some disk space or set RECIPE_CACHE_DIR to a writable folder") from None
    return target


def resolve(base: str, where: str = "recipe") -> Parent:
    """The parent run and its model for model.base `run:<recipe>[@<run-id>]`."""
    ref = parse(base)
    if ref is None:
        raise ValueError(f"{base!r} is not a run reference")
    run, manifest = find_run(ref, where)
    return Parent(run, manifest, model_dir(run, manifest))


def record(base: str) -> ParentRun | None:
    """The manifest's record of the parent for a staged base (None for any other base)."""
    return resolve(base).record() if parse(base) is not None else None
