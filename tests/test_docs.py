"""The docs cannot rot: every shell block in docs/ says where it runs, the `cpu` ones are run, every recipe shown
validates and plans, and every recipe key has a description for the generated reference.

Marking shell blocks. A fenced block whose info string is a shell (`bash`, `sh`, `shell`, `console`) must be preceded
by an HTML comment on its own line, the nearest non-blank line above the fence:

    <!-- cpu -->       run by test_cpu_blocks_run, verbatim, in a fresh temporary folder (the same one for every cpu
                       block of a page, in order, as one bash script with `set -euo pipefail`), with .venv/bin on
                       PATH and HF_HUB_OFFLINE=1; keep them to seconds (the tiny model, train.max_steps=2 ...)
    <!-- cpu-long -->  runs on a CPU but is not run here: minutes long or until stopped (a full training, `make demo`,
                       a server), or a how-to's training that another test covers (it says which), to keep
                       these tests within their ~3 minutes
    <!-- gpu -->       needs a GPU: not run here
    <!-- network -->   needs the network (the hub, an API endpoint): not run here

A page that continues another page's workspace says so with `<!-- docs-test: after tutorials/first-recipe.md -->`;
the test runs that page first, in the same folder. YAML blocks (fenced ```yaml blocks, and the YAML files a shell block
writes with `cat > x.yaml <<'YAML'` outside cpu blocks, which run): a full recipe (a top-level `schema:` key) is written
into a workspace as recipes/<name>.yaml and must pass `recipe validate` and `recipe plan`; an eval suite (a
top-level `suite:` key) must pass `recipe validate`; every other YAML block must parse. The site build itself
(`mkdocs build --strict`) is `make docs-check`.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tests.helpers import ROOT

DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
SHELLS = {"bash", "sh", "shell", "console"}
MARKERS = {"cpu", "cpu-long", "gpu", "network"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<info>[^\n`]*)$")
MARKER = re.compile(r"^\s*<!--\s*(?P<name>[a-z-]+)\s*-->\s*$")
AFTER = re.compile(r"<!--\s*docs-test:\s*after\s+(?P<page>\S+)\s*-->")


class Block(typing.NamedTuple):
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    marker: str | None
    text: str


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, with the marker comment right above each (None when there is none)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, index = [], 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        lang = (match["info"].split() or [""])[0].lower()
        above = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.match(above)
        end = next((i for i in range(index + 1, len(lines))
                    if lines[i].strip().startswith(fence[0] * len(fence)) and not lines[i].strip().strip(fence[0])),
                   len(lines))
        body = "\n".join(line[indent:] for line in lines[index + 1:end])
        found.append(Block(page, index + 1, lang, marker["name"] if marker else None, body + "\n"))
        index = end + 1
    return found


def where(block: Block) -> str:
    return f"{block.page.relative_to(ROOT)}:{block.line}"


ALL_BLOCKS = [b for p in pages() for b in blocks(p)]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in SHELLS]
HEREDOC = re.compile(r"^cat > \S+\.ya?ml <<'?(?P<tag>\w+)'?\n(?P<body>.*?)\n(?P=tag)$", re.M | re.S)


def heredocs(block: Block) -> list[Block]:
    """YAML files a shell block writes (`cat > recipes/x.yaml <<'YAML' ... YAML`), as YAML blocks of their own."""
    return [Block(block.page, block.line + block.text[:m.start()].count("\n") + 1, "yaml", block.marker,
                  m["body"] + "\n") for m in HEREDOC.finditer(block.text)]


YAML_BLOCKS = ([b for b in ALL_BLOCKS if b.lang in ("yaml", "yml")]
               + [h for b in ALL_BLOCKS if b.lang in SHELLS and b.marker != "cpu" for h in heredocs(b)])
# A cpu block's own YAML files are not checked apart: the block runs, so they meet the real commands (a page may
# also show a broken recipe on purpose, to show the error).
CPU_PAGES = sorted({b.page for b in SHELL_BLOCKS if b.marker == "cpu"})


# ---------------------------------------------------------------- fast checks (no model)


def test_every_shell_block_is_marked():
    unmarked = [f"{where(b)}: ```{b.lang} block without <!-- cpu|cpu-long|gpu|network --> on the line above"
                for b in SHELL_BLOCKS if b.marker not in MARKERS]
    assert not unmarked, "\n".join(unmarked)


def test_the_block_reader_sees_markers_and_fences(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n\n<!-- cpu -->\n```bash\necho hi\n```\n\n```console\n$ x\n```\n"
                    "- item\n\n  <!-- gpu -->\n  ```bash\n  nvidia-smi\n  ```\n", encoding="utf-8")
    found = blocks(page)
    assert [(b.lang, b.marker, b.text) for b in found] == [
        ("bash", "cpu", "echo hi\n"), ("console", None, "$ x\n"), ("bash", "gpu", "nvidia-smi\n")]


def test_every_tutorial_has_a_cpu_path():
    tutorials = [p for p in pages() if p.parent.name == "tutorials" and p.name != "index.md"]
    assert tutorials
    missing = [str(p.relative_to(ROOT)) for p in tutorials if p not in CPU_PAGES]
    assert not missing, f"tutorials with no <!-- cpu --> block that the tests run: {missing}"


def test_every_yaml_block_parses():
    bad = []
    for block in YAML_BLOCKS:
        try:
            yaml.safe_load(block.text)
        except yaml.YAMLError as err:
            bad.append(f"{where(block)}: {err}")
    assert not bad, "\n".join(bad)


def _submodels(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _submodels(arg)]


def undescribed(model: type[BaseModel], prefix: str = "", seen: frozenset = frozenset()) -> list[str]:
    """Dotted keys of model (and every section inside it, recursively) whose Field has no description."""
    missing = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        if not (field.description or "").strip():
            missing.append(key)
        for sub in _submodels(field.annotation):
            if sub not in seen:
                missing += undescribed(sub, f"{key}.", seen | {sub})
    return missing


def test_every_recipe_key_has_a_description():
    from runner.recipe.schema import Recipe

    missing = undescribed(Recipe)
    assert not missing, ("recipe keys without a description (the generated reference, docs/reference/recipe-schema, "
                         "shows it; add Field(description=...) in runner/recipe/schema.py): " + ", ".join(missing))


def test_the_description_walk_finds_nested_keys():
    from pydantic import Field

    class Inner(BaseModel):
        a: int = Field(1, description="described")
        b: int = 2

    class Outer(BaseModel):
        inner: list[Inner] | None = Field(None, description="a list of sections")
        c: str = "x"

    assert undescribed(Outer) == ["inner.b", "c"]


# ---------------------------------------------------------------- recipes and suites shown in the docs


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECIPE_", "PYTEST_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="disabled", HOME=str(home), NO_MKDOCS_2_WARNING="1", PYTHONUNBUFFERED="1")
    return env


def test_every_recipe_and_suite_shown_validates_and_plans(tmp_path, monkeypatch, capsys):
    """Each full recipe in the docs is written into a throw-away workspace (the shipped library behind it) and must
    pass `recipe validate` and `recipe plan`; each eval suite must pass `recipe validate` (in process: the same
    `recipe` entry point, without a Python start per command)."""
    from runner import cli
    from runner.recipe import templates

    workspace = tmp_path / "ws"
    for folder in ("recipes", "eval_suites", "data"):
        (workspace / folder).mkdir(parents=True)
    settings = {"RECIPE_RUNNER_HOME": workspace, "RECIPE_RUNS_DIR": tmp_path / "runs",
                "RECIPE_CACHE_DIR": tmp_path / "cache", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for name, value in settings.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.chdir(workspace)
    templates.load.cache_clear()

    def recipe(args: list[str]) -> tuple[int, str]:
        code = cli.main(args)
        out, err = capsys.readouterr()
        return code, err.strip() or out.strip()
    recipes, suites = {}, {}
    for block in YAML_BLOCKS:
        data = yaml.safe_load(block.text)
        if isinstance(data, dict) and "schema" in data:
            recipes.setdefault(data["name"], []).append(block)
        elif isinstance(data, dict) and "suite" in data:
            suites.setdefault(data["name"], []).append(block)
    assert recipes, "no full recipe found in docs/: the tutorials show at least one"
    problems = []
    for kind, found, folder in (("suite", suites, "eval_suites"), ("recipe", recipes, "recipes")):
        for name, shown in found.items():
            if len(shown) > 1 and len({b.text for b in shown}) > 1:
                problems.append(f"{kind} {name} is shown differently at {', '.join(where(b) for b in shown)}")
            (workspace / folder / f"{name}.yaml").write_text(shown[0].text, encoding="utf-8")
        if kind == "suite" and suites:  # `recipe validate` with no name checks the workspace's suites (no recipes yet)
            code, said = recipe(["validate"])
            if code:
                problems.append(f"suites shown at {', '.join(where(b[0]) for b in suites.values())}: {said}")
    for name, shown in recipes.items():
        for verb in (["validate", name], ["plan", name]):
            code, said = recipe(verb)
            if code:
                problems.append(f"{where(shown[0])}: recipe {verb[0]} {name}: {said[-2000:]}")
                break
    templates.load.cache_clear()
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the cpu blocks, run


def _script(page: Path) -> str:
    parts = ["set -euo pipefail"]
    for block in blocks(page):
        if block.lang in SHELLS and block.marker == "cpu":
            parts += [f"echo '>>> {where(block)}' >&2", block.text]
    return "\n".join(parts)


def _after(page: Path) -> Path | None:
    match = AFTER.search(page.read_text(encoding="utf-8"))
    return DOCS / match["page"] if match else None


@pytest.fixture(scope="module")
def docs_home(tmp_path_factory):
    """One folder per chain of pages (a page and the pages that continue it), with shared runs of each page."""
    return {"root": tmp_path_factory.mktemp("docs"), "done": {}}


def run_page(page: Path, docs_home) -> Path:
    """Run a page's cpu blocks (after the page it continues), once per session; returns its folder."""
    if page in docs_home["done"]:
        return docs_home["done"][page]
    before = _after(page)
    if before is not None:
        home = run_page(before, docs_home)
    else:
        home = docs_home["root"] / page.relative_to(DOCS).with_suffix("").as_posix().replace("/", "-")
        home.mkdir()
    env = _env(home) | {"RECIPE_CACHE_DIR": str(docs_home["root"] / "cache")}  # converted models, shared
    result = subprocess.run(["bash", "-c", _script(page)], cwd=home, env=env, capture_output=True, text=True,
                            timeout=900)
    if result.returncode:
        pytest.fail(f"{page.relative_to(ROOT)}: a cpu block failed (exit {result.returncode}); the last block "
                    f"started is the last '>>>' line:\n{result.stderr[-6000:]}\n--- stdout:\n{result.stdout[-3000:]}",
                    pytrace=False)
    docs_home["done"][page] = home
    return home


@pytest.mark.model
@pytest.mark.parametrize("page", CPU_PAGES, ids=[str(p.relative_to(DOCS)) for p in CPU_PAGES])
def test_cpu_blocks_run(page, docs_home):
    run_page(page, docs_home)
