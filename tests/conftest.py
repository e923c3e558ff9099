"""Shared fixtures: a throw-away copy of the project (recipes, templates, suites) and an in-process CLI."""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from runner import cli, templates

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
