"""Shared fixtures: a throw-away copy of the project (recipes, templates, suites) and an in-process CLI.

Plain helpers and constants shared by test modules live in tests/helpers.py; test modules import from there,
never from this file or from one another (tests/test_suite_rules.py checks it).

The `model` marker: a test that builds, loads, converts, trains or evaluates a model carries it, and
`make test-fast` (-m "not model") skips it. Two checks keep the marker honest: a test that asks for a fixture
in helpers.MODEL_FIXTURES without the marker stops the session at collection, and an unmarked test that reaches
runner.models.tiny.build (directly, or through a recipe naming models/tiny-llama) fails.
"""
from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from absl import logging as absl_logging

from runner import cli
from runner.models import tiny
from runner.recipe import templates
from tests.helpers import ROOT, ImportOnSessionStreams, schedule_for_workers, unmarked_model_tests

# absl (imported by rouge_score) keeps the stream it first sees, and axolotl's logging setup closes every
# handler, absl's included, closing that stream: point absl at the real stderr instead.
absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__

# deepspeed attaches a logging handler to the sys.stdout of the moment it is first imported. Imported inside a test
# that uses capsys, that handler would keep a stream pytest closes after the test, and a later log line kills the
# run ("lost sys.stderr"). Importing deepspeed here, for every session, fixed that but cost every session ~8 s,
# `make test-fast` included. Instead deepspeed still loads only where something imports it (a test, axolotl's
# config checks through runner.train.cpu_shims, a model load), and that first import runs on the streams the
# session had when this file was loaded.
if "deepspeed" not in sys.modules:
    sys.meta_path.insert(0, ImportOnSessionStreams("deepspeed"))

# Under pytest-xdist (make test: two workers on two cores) each worker and what it starts (the trainer, `recipe`
# subprocesses) computes on one thread: two workers each spinning two OpenMP threads on two cores slowed the
# training tests by half or more. runner.models.numerics and the trainer read RECIPE_RUNNER_THREADS, torch
# OMP_NUM_THREADS; both paths of a comparison run in one worker, so they still share their numerics.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("RECIPE_RUNNER_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    if "torch" in sys.modules:  # imported already (by runner's imports above): its pool may have read the old value
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of the project's registries in tmp_path, used as RECIPE_RUNNER_HOME; returns its root."""
    for folder in ("recipes", "templates", "eval_suites"):
        if (ROOT / folder).exists():
            shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.setenv("RECIPE_RUNNER_HOME", str(tmp_path))
    monkeypatch.setenv("RECIPE_RUNS_DIR", str(tmp_path / "runs"))
    templates.load.cache_clear()
    yield tmp_path
    templates.load.cache_clear()


@pytest.fixture
def write_recipe(project):
    """write_recipe(name, yaml_text) -> path of recipes/<name>.yaml in the throw-away project."""

    def write(name: str, text: str) -> Path:
        path = project / "recipes" / f"{name}.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_cli(capsys):
    """run_cli(*argv) -> (exit code, stdout, stderr) of the `recipe` command, in process."""

    def run(*argv: str):
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random-init Llama in models/tiny-llama (built once; a no-op when current). Model tests only: a
    test that asks for it without the `model` marker stops the session (pytest_collection_modifyitems)."""
    return tiny.build()


@pytest.fixture(scope="session")
def session_dirs(tmp_path_factory):
    """Runs and cache folders shared by the model tests of one session (kept out of the checkout)."""
    root = tmp_path_factory.mktemp("session")
    patch = pytest.MonkeyPatch()
    patch.setenv("RECIPE_RUNS_DIR", str(root / "runs"))
    patch.setenv("RECIPE_CACHE_DIR", str(root / "cache"))
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("HF_DATASETS_OFFLINE", "1")
    yield root
    patch.undo()


@pytest.fixture(scope="session")
def trained_tiny_run(session_dirs, tiny_model_dir):
    """One real `recipe train tiny-cpu` through axolotl on CPU, shared by the tests that need a trained run: the
    train stage, then what the verb does after it (the model card)."""
    from runner.cli.followups import after_train
    from runner.recipe import loading
    from runner.train.launch import train

    return after_train(train(loading.load("tiny-cpu")))


@pytest.fixture
def own_run(tmp_path, monkeypatch):
    """own_run(run) -> a private copy of a shared run (session or module scoped), for a test that writes into it.

    The copy keeps the run's layout, <tmp>/runs/<recipe>/<run id> with `latest` pointing at it, and RECIPE_RUNS_DIR
    points at <tmp>/runs for the test, so `rundir.find` and --resume by id or latest find the copy, never the shared
    run. A run folder names its own files by relative paths (its data/ files are hard links into the cache), so
    the copy is complete."""
    from runner.runs import rundir

    runs = tmp_path / "runs"
    monkeypatch.setenv("RECIPE_RUNS_DIR", str(runs))

    def copy(run):
        target = runs / run.path.parent.name / run.run_id
        shutil.copytree(run.path, target)  # links followed: nothing in the copy points back at the shared run
        copied = rundir.RunDir(target)
        rundir.point_latest(copied)
        return copied

    return copy


@pytest.fixture
def own_trained_run(trained_tiny_run, own_run):
    """A private copy of trained_tiny_run (see own_run): for tests that resume, merge or otherwise change it."""
    return own_run(trained_tiny_run)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """A test that asks for the tiny model or a trained run must be marked `model`, or `make test-fast` would build
    and train models: checked over every collected test, before -m deselects any. Then the tests are ordered and
    grouped for the two xdist workers of `make test` (helpers.schedule_for_workers)."""
    unmarked = unmarked_model_tests(items)
    if unmarked:
        raise pytest.UsageError("these tests use a model fixture but are not marked @pytest.mark.model:\n  "
                                + "\n  ".join(unmarked))
    schedule_for_workers(items)


def _unmarked_build(nodeid: str):
    def build(*args, **kwargs):
        pytest.fail(f"{nodeid} builds or loads the tiny model (runner.models.tiny.build) but is not marked "
                    "@pytest.mark.model, so `make test-fast` would run it: mark it `model`", pytrace=False)

    return build


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """An unmarked test (its setup, module fixtures included, its call and teardown) may not reach tiny.build."""
    if item.get_closest_marker("model"):
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny, "build", _unmarked_build(item.nodeid))
        return (yield)
