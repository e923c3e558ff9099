"""Shared fixtures: a throw-away copy of the project (recipes, templates, suites) and an in-process CLI."""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import sys

import deepspeed  # noqa: F401  (see below)
import pytest
from absl import logging as absl_logging

from runner import cli
from runner.recipe import templates

# deepspeed attaches a logging handler to the sys.stdout of the moment it is first imported. Imported inside a
# test that uses capsys, that handler would keep a stream pytest closes after the test, and a later log line
# kills the run ("lost sys.stderr"). Importing it here binds it to the session's stream.
# absl (imported by rouge_score) keeps the stream it first sees too, and axolotl's logging setup closes every
# handler, absl's included, closing that stream: point absl at the real stderr instead.
absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__

ROOT = Path(__file__).resolve().parent.parent


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
    """The tiny random-init Llama in models/tiny-llama (built once; a no-op when current)."""
    from runner.models import tiny

    return tiny.build()


@pytest.fixture(scope="session")
def session_dirs(tmp_path_factory):
    """Runs and cache folders shared by the slow tests of one session (kept out of the checkout)."""
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
    """One real `recipe train tiny-cpu` through axolotl on CPU, shared by the tests that need a trained run."""
    from runner.recipe import loading
    from runner.train.launch import train

    return train(loading.load("tiny-cpu"))
