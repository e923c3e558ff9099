"""Rules of the test suite itself (fast, no model): test modules import shared code from tests/helpers.py, never
from one another or from conftest; markers are the registered ones; an unmarked test cannot build the tiny model;
deepspeed's first import binds the session's streams."""
from __future__ import annotations

import ast
import io
import sys
import tomllib
from types import SimpleNamespace

import pytest

from runner.models import tiny
from tests.helpers import ROOT, ImportOnSessionStreams, unmarked_model_tests

TESTS = ROOT / "tests"
BUILTIN_MARKS = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings",
                 "xdist_group"}  # pytest's own, and pytest-xdist's (helpers.schedule_for_workers)


def _is_test_module(dotted: str) -> bool:
    """tests.test_x, test_x, tests.conftest, conftest (and anything under them)."""
    parts = dotted.split(".")
    if parts[0] == "tests":
        parts = parts[1:]
    return bool(parts) and (parts[0] == "conftest" or parts[0].startswith("test_"))


def forbidden_imports(source: str) -> list[str]:
    """The imports in `source` (a file under tests/) of a test module or conftest, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _is_test_module(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and _is_test_module(module):
                found.append(module)
            elif node.level and module and _is_test_module(module):  # from .test_x import ..., from .conftest ...
                found.append("." * node.level + module)
            elif (node.level and not module) or module == "tests":  # from . import test_x, from tests import conftest
                found += [f"{'.' * node.level}{module}.{a.name}".replace("..", ".") for a in node.names
                          if _is_test_module(a.name)]
    return found


@pytest.mark.parametrize("source, expected", [
    ("from tests.conftest import ROOT", ["tests.conftest"]),
    ("from tests.test_report import MANIFEST", ["tests.test_report"]),
    ("import tests.test_demo", ["tests.test_demo"]),
    ("from .test_recipe_errors import VALID", [".test_recipe_errors"]),
    ("from . import conftest", [".conftest"]),
    ("from tests import test_demo", ["tests.test_demo"]),
    ("import conftest", ["conftest"]),
    ("def f():\n    from tests.test_report import build_run\n", ["tests.test_report"]),
    ("from tests.helpers import ROOT\nimport tests.helpers\nfrom runner import cli\nimport pytest", []),
])
def test_the_import_rule_sees_every_spelling(source, expected):
    assert forbidden_imports(source) == expected


def test_no_test_module_imports_another_test_module_or_conftest():
    files = sorted(TESTS.glob("test_*.py")) + [TESTS / "conftest.py", TESTS / "helpers.py"]
    assert len(files) > 30
    offenders = {f.name: found for f in files if (found := forbidden_imports(f.read_text(encoding="utf-8")))}
    assert offenders == {}, "move what they share to tests/helpers.py (fixtures to conftest.py)"


def test_every_marker_used_in_tests_is_registered():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    registered = {line.split(":")[0] for line in config["tool"]["pytest"]["ini_options"]["markers"]}
    assert "model" in registered and "slow" not in registered  # one marker for "runs a model"
    used = {}
    for file in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == "mark" and isinstance(node.value.value, ast.Name) \
                    and node.value.value.id == "pytest":
                used.setdefault(node.attr, set()).add(file.name)
    assert "model" in used
    assert {m: sorted(f) for m, f in used.items() if m not in registered | BUILTIN_MARKS} == {}


def _item(nodeid: str, fixtures: tuple[str, ...], model: bool):
    return SimpleNamespace(nodeid=nodeid, fixturenames=list(fixtures),
                           get_closest_marker=lambda name: object() if model and name == "model" else None)


def test_a_model_fixture_without_the_model_marker_is_named():
    items = [_item("t.py::a", ("tmp_path", "tiny_model_dir"), model=False),
             _item("t.py::b", ("tiny_model_dir", "trained_tiny_run"), model=True),
             _item("t.py::c", ("project", "own_trained_run", "trained_tiny_run"), model=False),
             _item("t.py::d", ("project", "run_cli"), model=False)]
    assert unmarked_model_tests(items) == ["t.py::a (uses tiny_model_dir)",
                                           "t.py::c (uses own_trained_run, trained_tiny_run)"]


def test_an_unmarked_test_that_reaches_the_tiny_model_builder_fails(tmp_path):
    """This test is not marked `model`: conftest.py swaps runner.models.tiny.build for a failure."""
    with pytest.raises(pytest.fail.Exception, match="not marked @pytest.mark.model"):
        tiny.build(tmp_path / "tiny")
    assert not (tmp_path / "tiny").exists()


def test_a_package_imported_under_capsys_binds_the_session_streams(tmp_path, monkeypatch, capsys):
    """What conftest.py does for deepspeed, on a stand-in package that keeps the sys.stdout it is imported with."""
    for name in ("grabs_stdout", "grabs_stdout_too"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("import sys\nSTREAMS = sys.stdout, sys.stderr\n")
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    session = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "meta_path", [ImportOnSessionStreams("grabs_stdout", session), *sys.meta_path])
    under_capsys = sys.stdout, sys.stderr

    import grabs_stdout
    import grabs_stdout_too  # another name: imported as usual

    assert grabs_stdout.STREAMS == session and (sys.stdout, sys.stderr) == under_capsys
    assert grabs_stdout_too.STREAMS == under_capsys
    assert grabs_stdout.__spec__.origin == str(tmp_path / "grabs_stdout" / "__init__.py")


def test_conftest_sends_deepspeeds_first_import_to_the_session_streams():
    finders = [f for f in sys.meta_path if isinstance(f, ImportOnSessionStreams) and f.name == "deepspeed"]
    assert finders or "deepspeed" in sys.modules  # already imported before conftest.py: nothing to arrange
    assert all(stream is not None and not getattr(stream, "closed", False) for f in finders for stream in f.streams)
