"""Where things live: the workspace (the user's recipes, runs and cache), the shipped library, and paths
written in recipes and suites.

Two layers are searched, in order: the workspace, then the library shipped with recipe-runner.

- The workspace is RECIPE_RUNNER_HOME when set, else the nearest folder at or above the working directory
  that holds a `recipes/` folder, else the working directory itself. Its runs/ and .cache/ live in it
  (RECIPE_RUNS_DIR and RECIPE_CACHE_DIR override).
- The library is the recipes (bases included), templates, eval suites and data files that ship with the
  tool: the checkout's top-level folders when running from a checkout (or an editable install), and
  runner/library/ inside the installed package otherwise (a wheel carries them there; see setup.py).

A name (a template, an eval suite, a recipe, an `extends: _base/...` base) is looked up in the workspace
first, so a team can replace any shipped file with its own of the same name. A relative path written in a
file (a dataset, a local model, a suite's SQL databases or lm-eval include folders) resolves against the
workspace first and then against the root of the layer the file came from: a shipped suite's
`data/sql-demo/{db}.sql` is the library's file unless the workspace holds its own, and a workspace
recipe's data never silently comes from the library.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # runner/
PACKAGED_LIBRARY = PACKAGE_DIR / "library"  # present in an installed wheel only
CHECKOUT = PACKAGE_DIR.parent


def workspace() -> Path:
    """RECIPE_RUNNER_HOME, else the nearest folder at or above the working directory holding recipes/,
    else the working directory."""
    home = os.environ.get("RECIPE_RUNNER_HOME")
    if home:
        return Path(home).expanduser().resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "recipes").is_dir():
            return folder
    return here


def project_root() -> Path:
    """The workspace (the older name, kept for callers that predate workspaces)."""
    return workspace()


def library_root() -> Path:
    """The shipped library: runner/library/ in an installed package, else the checkout the package runs from."""
    if (PACKAGED_LIBRARY / "recipes").is_dir():
        return PACKAGED_LIBRARY
    return CHECKOUT


def layers() -> list[Path]:
    """The roots searched for recipes, bases, templates, suites and data: the workspace, then the library
    (one root when the workspace is the checkout itself)."""
    first, library = workspace(), library_root()
    return [first] if first == library else [first, library]


def layer_of(path: Path) -> Path | None:
    """The layer root a file lies under (the innermost, should one layer hold the other), or None."""
    path = Path(path).resolve()
    inside = [root for root in layers() if path.is_relative_to(root)]
    return max(inside, key=lambda root: len(root.parts)) if inside else None


def origin(path: Path) -> str:
    """'workspace', 'library' or 'elsewhere': where a file came from, for `recipe list` and `validate`."""
    root = layer_of(path)
    if root is None:
        return "elsewhere"
    return "workspace" if root == workspace() else "library"


def find_in_layers(*parts: str) -> Path | None:
    """The first existing <layer>/<parts...>, workspace first; None when no layer has it."""
    for root in layers():
        candidate = root.joinpath(*parts)
        if candidate.exists():
            return candidate
    return None


def glob_layers(folder: str, pattern: str) -> dict[str, Path]:
    """{stem: path} of the files matching pattern in <layer>/<folder>/, workspace first (it wins a name)."""
    found: dict[str, Path] = {}
    for root in layers():
        for path in sorted((root / folder).glob(pattern)):
            found.setdefault(path.stem, path)
    return found


def recipes_dir() -> Path:
    return workspace() / "recipes"


def templates_dir() -> Path:
    return workspace() / "templates"


def eval_suites_dir() -> Path:
    return workspace() / "eval_suites"


def sweeps_dir() -> Path:
    return workspace() / "sweeps"


def resolved_dir() -> Path:
    return recipes_dir() / "resolved"


def runs_dir() -> Path:
    """Run directories: runs/<recipe>/<run-id>/ in the workspace (RECIPE_RUNS_DIR overrides)."""
    return Path(os.environ.get("RECIPE_RUNS_DIR", workspace() / "runs")).resolve()


def cache_dir() -> Path:
    """Prepared data and converted models, keyed by content hash, in the workspace's .cache/ (RECIPE_CACHE_DIR
    overrides)."""
    return Path(os.environ.get("RECIPE_CACHE_DIR", workspace() / ".cache")).resolve()


def display(path: Path) -> str:
    """A path as the user should read it: relative to the workspace when inside it."""
    try:
        return str(Path(path).resolve().relative_to(workspace()))
    except ValueError:
        return str(path)


def _candidates(path: str, root: Path | None) -> list[Path]:
    candidate = Path(os.path.expanduser(path))
    if candidate.is_absolute():
        return [candidate]
    first = workspace()
    return [first / candidate] + ([Path(root) / candidate] if root is not None and Path(root) != first else [])


def resolve_local(path: str, root: Path | None = None) -> Path:
    """A path written in a recipe or suite: absolute, or relative to the workspace, then to `root` (the
    layer the file that wrote it came from). When neither has it, the workspace's path (for the error)."""
    candidates = _candidates(path, root)
    return next((c for c in candidates if c.exists()), candidates[0])


def resolve_pattern(pattern: str, root: Path | None = None, field: str = "{db}") -> str:
    """A path pattern such as data/sql-demo/{db}.sql: the first candidate root holding any file that matches
    (the workspace, then `root`); the workspace's when none does."""
    candidates = _candidates(pattern, root)
    for candidate in candidates:
        if field not in str(candidate):
            found = candidate.exists()
        else:  # the field may sit in the file name or a folder name: any match will do
            found = any(Path(candidate.anchor).glob(str(candidate.relative_to(candidate.anchor)).replace(field, "*")))
        if found:
            return str(candidate)
    return str(candidates[0])
