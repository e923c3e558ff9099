"""Where things live: the project's registries (folders) and the run and cache directories."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # runner/


def project_root() -> Path:
    """The folder holding recipes/, templates/, eval_suites/ (RECIPE_RUNNER_HOME overrides)."""
    return Path(os.environ.get("RECIPE_RUNNER_HOME", PACKAGE_DIR.parent)).resolve()


def recipes_dir() -> Path:
    return project_root() / "recipes"


def templates_dir() -> Path:
    return project_root() / "templates"


def eval_suites_dir() -> Path:
    return project_root() / "eval_suites"


def resolved_dir() -> Path:
    return recipes_dir() / "resolved"


def runs_dir() -> Path:
    """Run directories: runs/<recipe>/<run-id>/ (RECIPE_RUNS_DIR overrides)."""
    return Path(os.environ.get("RECIPE_RUNS_DIR", project_root() / "runs")).resolve()


def cache_dir() -> Path:
    """Prepared data and converted models, keyed by content hash (RECIPE_CACHE_DIR overrides)."""
    return Path(os.environ.get("RECIPE_CACHE_DIR", project_root() / ".cache")).resolve()


def display(path: Path) -> str:
    """A path as the user should read it: relative to the project when inside it."""
    try:
        return str(Path(path).resolve().relative_to(project_root()))
    except ValueError:
        return str(path)


def resolve_local(path: str) -> Path:
    """A path written in a recipe: absolute, or relative to the project root."""
    candidate = Path(os.path.expanduser(path))
    return candidate if candidate.is_absolute() else project_root() / candidate
