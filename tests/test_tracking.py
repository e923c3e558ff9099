"""Experiment tracking, verified for real: a short tiny-cpu run with tracking.wandb and tracking.tensorboard on
(WANDB_MODE=offline), then `recipe eval`; the training loss and the eval figures are read back from the W&B run
(W&B's own reader of its .wandb transaction log, `wandb leet inspect --json`) and from the TensorBoard event files
(tensorboard's EventAccumulator), and no planted key or token is in any file of the run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.recipe import loading
from runner.report import markdown
from runner.runs import tracking
from runner.runs.eval_summary import EvalSummary
from runner.runs.rundir import RunDir
from runner.train import engine
from tests.helpers import MANIFEST, build_run

WANDB = str(Path(sys.executable).parent / "wandb")
PLANTED = {"WANDB_API_KEY": "planted-secret-wandb-7f3a9c", "HF_TOKEN": "hf_plantedSecretToken91b2"}
# no val split: axolotl would spend ~10 s saving it (datasets' save_to_disk spawns a process even for 15 rows)
TRAIN = ["train.max_steps=4", "train.save_steps=null", "data.split.val=0", "tracking.wandb.project=recipe-runner-tests",
         "tracking.tensorboard=true"]
EVAL = ["eval.max_items=3", "eval.compare_base=false", "eval.max_new_tokens=4", "eval.batch_size=3"]


def _wandb_records(folder: Path) -> list[dict]:
    """The records of one W&B run folder's .wandb file, as W&B's own reader prints them."""
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(folder)], capture_output=True, text=True,
                         check=True, timeout=60, env=os.environ | {"WANDB_SILENT": "true"}).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _losses(run: RunDir) -> dict[int, float]:
    rows = [json.loads(line) for line in run.file("metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _check_wandb(run: RunDir, record, figures: dict[str, float], losses: dict[int, float]) -> None:
    assert record.wandb_project == "recipe-runner-tests" and record.wandb_mode == "offline"
    assert record.wandb_run_id == run.run_id and len(record.wandb_run_dirs) == 2  # training, then eval's resume
    runs, history, summary = [], {}, {}
    for folder in record.wandb_run_dirs:  # oldest first, the order `wandb sync` uploads them into one run
        for rec in _wandb_records(run.file(folder)):
            if rec["type"] == "run":
                runs.append(rec["run"])
            elif rec["type"] == "history" and "train/loss" in rec["history"]["item"]:
                item = rec["history"]["item"]
                history[item["train/global_step"]] = item["train/loss"]
            elif rec["type"] == "summary":
                summary |= rec["summary"].get("update", {})
    assert [(r["run_id"], r["project"], r.get("resume", False)) for r in runs] == \
        [(run.run_id, "recipe-runner-tests", True)] * 2  # WANDB_RESUME=allow from the start, so a relaunch continues
    assert history.keys() == losses.keys() == {1, 2, 3, 4}
    assert all(math.isclose(history[s], losses[s], rel_tol=1e-6) for s in losses)
    assert math.isclose(summary["train/loss"], losses[4], rel_tol=1e-6)
    assert {k: v for k, v in summary.items() if k.startswith("test")} == pytest.approx(figures)


def _check_tensorboard(run: RunDir, record, figures: dict[str, float], losses: dict[int, float]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert record.tensorboard_dir == "tensorboard"
    events = EventAccumulator(str(run.file(record.tensorboard_dir)))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(losses, rel=1e-6)
    for tag, value in figures.items():
        [event] = events.Scalars(tag)
        assert event.step == 4 and event.value == pytest.approx(value, rel=1e-6), tag


def _files_holding(root: Path, secrets: list[str]) -> list[str]:
    found = []
    for folder, _, names in os.walk(root):  # links not followed: wandb/latest-run points inside the run
        for name in names:
            path = Path(folder, name)
            if not path.is_symlink() and any(s.encode() in path.read_bytes() for s in secrets):
                found.append(str(path.relative_to(root)))
    return found


@pytest.mark.model
def test_offline_wandb_and_tensorboard_hold_the_loss_and_the_eval_figures(session_dirs, tiny_model_dir, tmp_path,
                                                                          monkeypatch, run_cli):
    from runner.train.launch import train

    monkeypatch.setenv("RECIPE_RUNS_DIR", str(tmp_path / "runs"))  # its own `latest`, not the shared runs'
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    run = train(loading.load("tiny-cpu", TRAIN))
    assert run.manifest().tracking.wandb_run_dirs[0].startswith("wandb/offline-run-")
    code, out, err = run_cli("eval", "tiny-cpu", "--run", run.run_id, *EVAL)
    assert code == 0, err
    record = run.manifest().tracking
    summary = EvalSummary.read(run.file("eval", "summary.json"))
    figures = tracking.eval_scalars(summary)
    assert {"test/perplexity", "test/exact_match", "test/n_items"} <= figures.keys()
    losses = _losses(run)
    _check_wandb(run, record, figures, losses)
    _check_tensorboard(run, record, figures, losses)
    report = run.file("report.md").read_text()
    assert f"| W&B run | `{run.run_id}` (offline, project `recipe-runner-tests`)" in report
    assert "| TensorBoard | `tensorboard/`" in report
    assert _files_holding(run.path, list(PLANTED.values())) == []
    assert not any(s in out + err for s in PLANTED.values())


def test_launch_script_keeps_tracking_files_in_the_run_directory(project):
    plain = engine.launch_script(loading.load("tiny-cpu").recipe, "local")
    assert "WANDB" not in plain and "TENSORBOARD" not in plain
    tracked = engine.launch_script(loading.load("tiny-cpu", TRAIN).recipe, "local")
    assert 'export WANDB_DIR="$PWD" WANDB_RUN_ID="${PWD##*/}" WANDB_NAME="${PWD##*/}" WANDB_RESUME=allow' in tracked
    assert "export TENSORBOARD_LOGGING_DIR=tensorboard" in tracked
    assert tracked.index('cd "$(dirname "$0")"') < tracked.index("WANDB_DIR")


@pytest.mark.parametrize("overrides, environment, mode", [
    (TRAIN, None, "offline"), ([], None, "disabled"), (TRAIN, "online", "online"), (TRAIN, "disabled", "disabled"),
    ([], "offline", "offline")])
def test_wandb_is_offline_unless_told_otherwise_and_off_without_tracking(project, monkeypatch, overrides,
                                                                         environment, mode):
    from runner.train.launch import launch_env

    if environment is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", environment)
    assert launch_env(loading.load("tiny-cpu", overrides).recipe)["WANDB_MODE"] == mode


def test_report_says_where_the_tracking_files_are(tmp_path):
    folders = ["wandb/offline-run-20261122_101700-r1", "wandb/offline-run-20261122_103000-r1"]
    run = build_run(tmp_path / "r1", MANIFEST | {"tracking": {
        "wandb_project": "sql", "wandb_run_id": "r1", "wandb_mode": "offline", "wandb_run_dirs": folders,
        "tensorboard_dir": "tensorboard"}})
    text = markdown.write_report(run).read_text()
    assert ("| W&B run | `r1` (offline, project `sql`): `wandb/offline-run-20261122_101700-r1`, "
            "`wandb/offline-run-20261122_103000-r1`; upload them into one run with `wandb sync wandb/offline-run-*` |"
            ) in text
    assert "| TensorBoard | `tensorboard/` (`tensorboard --logdir tensorboard`) |" in text
    assert "W&B" not in markdown.write_report(build_run(tmp_path / "r2")).read_text()


@pytest.mark.parametrize("mode, says", [
    ("offline", "W&B: offline run r1 (project recipe-runner-tests) in"),
    ("disabled", "W&B: tracking.wandb is set but WANDB_MODE=disabled: no W&B run"),
    ("online", "W&B: online run r1 in project recipe-runner-tests (needs WANDB_API_KEY or `wandb login`, and "
               "network)")])
def test_training_says_where_tracking_goes(project, tmp_path, capsys, mode, says):
    tracking.announce(RunDir(tmp_path / "r1"), loading.load("tiny-cpu", TRAIN).recipe, mode)
    err = capsys.readouterr().err
    assert says in err and "TensorBoard: event files in" in err
    assert ("wandb sync" in err) == (mode == "offline")
