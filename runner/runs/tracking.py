"""Experiment tracking inside the run directory: W&B and TensorBoard files, and the eval metrics added to them.

A recipe with `tracking.wandb` gets a W&B run whose id is the run directory's name (launch.sh exports
WANDB_DIR, WANDB_RUN_ID and WANDB_RESUME=allow, so a relaunched trainer continues the same run); its files sit
in <run>/wandb/. The mode comes from WANDB_MODE: unset means `offline` (local files only, nothing leaves the
machine; `wandb sync <run>/wandb/offline-run-*` uploads them later), `online` logs live and needs WANDB_API_KEY
(or `wandb login`) and network, `disabled` turns W&B off. A recipe without it never starts W&B.
`tracking.tensorboard` has the trainer write event files to <run>/tensorboard/ (TENSORBOARD_LOGGING_DIR).

After `recipe eval`, log_eval adds the EvalSummary figures: to the W&B run's summary by resuming it by id
(offline: one more offline-run-*-<id>/ folder, which `wandb sync` uploads in order into the same run) and to
the TensorBoard log dir at the last training step. The manifest's `tracking` record says where the files are.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from runner.core import paths
from runner.core.console import say
from runner.recipe.schema import Recipe
from runner.runs.manifest import Tracking
from runner.runs.rundir import RunDir

if TYPE_CHECKING:
    from runner.runs.eval_summary import EvalSummary

WANDB_FOLDER = "wandb"
TENSORBOARD_FOLDER = "tensorboard"
TEST_PREFIX = "test"  # held-out test figures from `recipe eval`; the trainer's own `eval/` is the val split
_RUN_FOLDER = re.compile(r"^(?P<mode>offline-run|run)-(?P<stamp>\d{8}_\d{6})-(?P<id>[^/]+)$")


def wandb_mode(recipe: Recipe) -> str:
    """WANDB_MODE for the trainer: the caller's, else offline for a recipe with tracking.wandb, else disabled."""
    mode = os.environ.get("WANDB_MODE", "")
    return mode or ("offline" if recipe.tracking.wandb else "disabled")


def announce(run: RunDir, recipe: Recipe, mode: str) -> None:
    """Say where this run's tracking goes (before training)."""
    where = paths.display(run.file(WANDB_FOLDER))
    if recipe.tracking.wandb:
        project = recipe.tracking.wandb.project
        say({"offline": f"W&B: offline run {run.run_id} (project {project}) in {where}; upload it later with "
                        f"`wandb sync {where}/offline-run-*`",
             "disabled": "W&B: tracking.wandb is set but WANDB_MODE=disabled: no W&B run"}.get(
            mode, f"W&B: {mode} run {run.run_id} in project {project} (needs WANDB_API_KEY or `wandb login`, and "
                  f"network); local files in {where}"))
    if recipe.tracking.tensorboard:
        logdir = paths.display(run.file(TENSORBOARD_FOLDER))
        say(f"TensorBoard: event files in {logdir} (`tensorboard --logdir {logdir}`)")


def _wandb_folders(run: RunDir) -> list[re.Match]:
    folder = run.file(WANDB_FOLDER)
    found = [_RUN_FOLDER.match(p.name) for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    return sorted((m for m in found if m and m["id"] == run.run_id), key=lambda m: m["stamp"])


def locate(run: RunDir, recipe: Recipe) -> Tracking | None:
    """The record of where this run's W&B and TensorBoard files are, from what is on disk; None when neither."""
    folders = _wandb_folders(run) if recipe.tracking.wandb else []
    tensorboard = run.file(TENSORBOARD_FOLDER)
    has_events = recipe.tracking.tensorboard and any(tensorboard.glob("events.out.tfevents.*"))
    if not folders and not has_events:
        return None
    record = Tracking(tensorboard_dir=TENSORBOARD_FOLDER if has_events else None)
    if folders:
        spec = recipe.tracking.wandb
        record = record.model_copy(update={
            "wandb_project": spec.project, "wandb_entity": spec.entity, "wandb_run_id": run.run_id,
            "wandb_mode": "offline" if folders[-1]["mode"] == "offline-run" else "online",
            "wandb_run_dirs": [f"{WANDB_FOLDER}/{m.string}" for m in folders]})
    return record


def eval_scalars(summary: EvalSummary) -> dict[str, float]:
    """test/<metric> (fine-tuned), test_base/<metric>, test_delta/<metric>, the judge's win rate, the item count."""
    scalars: dict[str, float] = {f"{TEST_PREFIX}/n_items": float(summary.n_items)}
    for name, metric in summary.versus_base().items():
        for prefix, value in ((TEST_PREFIX, metric.value), (f"{TEST_PREFIX}_base", metric.reference),
                              (f"{TEST_PREFIX}_delta", metric.delta)):
            if value is not None:
                scalars[f"{prefix}/{name}"] = float(value)
    judge = summary.judge_versus_base()
    if judge is not None and judge.win_rate is not None:
        scalars[f"{TEST_PREFIX}/judge_win_rate"] = float(judge.win_rate)
    return scalars


def _to_tensorboard(run: RunDir, scalars: dict[str, float], step: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run.file(TENSORBOARD_FOLDER)))
    try:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=step)
    finally:
        writer.close()


def _to_wandb(run: RunDir, recipe: Recipe, scalars: dict[str, float], mode: str) -> None:
    """Resume the training's W&B run by id (in this mode) and put the eval figures into its summary."""
    import wandb

    spec = recipe.tracking.wandb
    settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True, save_code=False)
    resumed = wandb.init(project=spec.project, entity=spec.entity, id=run.run_id, name=run.run_id, resume="allow",
                         dir=str(run.path), mode=mode, settings=settings)
    try:
        resumed.summary.update(scalars)
    finally:
        resumed.finish()


def log_eval(run: RunDir, recipe: Recipe, summary: EvalSummary) -> None:
    """Add the eval figures to the run's W&B run and TensorBoard log dir (those its recipe turns on), then record
    where the files are in the manifest. A tracker that fails is reported, never fails the evaluated run."""
    if not (recipe.tracking.wandb or recipe.tracking.tensorboard):
        return
    scalars = eval_scalars(summary)
    manifest = run.manifest()
    step = manifest.train.steps if manifest.train else 0
    mode = wandb_mode(recipe)
    writers = [("TensorBoard", lambda: _to_tensorboard(run, scalars, step))] if recipe.tracking.tensorboard else []
    if recipe.tracking.wandb and mode != "disabled":
        writers.append(("W&B", lambda: _to_wandb(run, recipe, scalars, mode)))
    for name, write in writers:
        try:
            write()
            say(f"eval: {len(scalars)} figures logged to {name}")
        except Exception as err:  # noqa: BLE001 (any tracker failure: the eval itself is done and recorded)
            say(f"eval: could not log the figures to {name}: {type(err).__name__}: {err}")
    run.update(tracking=locate(run, recipe))
