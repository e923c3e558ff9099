"""Shared fixtures: a throw-away copy of the project (recipes, templates, suites) and an in-process CLI."""
from __future__ import annotations

import http.server
import json
import shutil
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

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


class ChatCompletionsHandler(http.server.BaseHTTPRequestHandler):
    """A 127.0.0.1 stand-in for an OpenAI-compatible /chat/completions endpoint (a remote API cannot be reached
    here): subclasses define do_POST and answer with `self.reply(text)`."""

    def reply(self, content: str) -> None:
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@contextmanager
def offline_workspace(root: Path, suites: dict[str, str]):
    """A throw-away project in `root` (recipes, templates, suites copied; data and the tiny model linked), offline,
    with extra eval suites {name: YAML text}; for module-scoped fixtures, which cannot use monkeypatch."""
    from runner.models import tiny

    for folder in ("recipes", "templates", "eval_suites"):
        shutil.copytree(ROOT / folder, root / folder)
    (root / "data").symlink_to(ROOT / "data")
    (root / "models").mkdir()
    (root / "models" / "tiny-llama").symlink_to(tiny.build(ROOT / "models" / "tiny-llama"))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"RECIPE_RUNNER_HOME": root, "RECIPE_RUNS_DIR": root / "runs",
                            "RECIPE_CACHE_DIR": root / ".cache", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                            "TOKENIZERS_PARALLELISM": "false"}.items():
            mp.setenv(name, str(value))
        templates.load.cache_clear()
        for name, text in suites.items():
            (root / "eval_suites" / f"{name}.yaml").write_text(textwrap.dedent(text))
        yield root
    templates.load.cache_clear()


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
def pytest_collection_modifyitems(items):
    """`model` (runs a model or a trainer) and `slow` go together, before -m selects: a `model` test is also `slow`,
    so `-m "not slow"` still skips every model test, and a `slow` test is a `model` test (every slow test trains,
    converts or evaluates one), so `make test-fast` (-m "not model") skips a slow test not marked `model` yet."""
    for item in items:
        if item.get_closest_marker("model") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
        elif item.get_closest_marker("slow") and not item.get_closest_marker("model"):
            item.add_marker(pytest.mark.model)
