"""Packaging hook (the metadata lives in pyproject.toml): a built wheel carries the shipped library.

The checkout keeps the library at the top level (recipes/, templates/, eval_suites/, data/); an editable
install reads it there. A wheel (`pip install .`, `pip wheel .`, `python -m build`) gets a copy under
runner/library/, where runner/core/paths.py:library_root() finds it once the package is installed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent

# folder -> file patterns (recursive) shipped as the library; MANIFEST.in lists the same for the sdist
LIBRARY = {
    "recipes": ("*.yaml",),  # runnable recipes and _base/; not resolved/ (review snapshots)
    "templates": ("*.jinja",),
    "eval_suites": ("*.yaml",),
    "data/samples": ("*.jsonl", "*.md"),  # tiny-cpu's data and the tiny model's corpus, with their sources
    "data/sql-demo": ("*.sql", "*.jsonl", "*.md"),  # the sql suite's databases and the demo's data
}
SKIP = {"resolved"}


def library_files() -> list[Path]:
    """The shipped library's files, relative to the checkout."""
    found = []
    for folder, patterns in LIBRARY.items():
        for pattern in patterns:
            for path in (ROOT / folder).rglob(pattern):
                relative = path.relative_to(ROOT)
                if path.is_file() and not SKIP & set(relative.parts):
                    found.append(relative)
    return sorted(set(found))


class BuildPyWithLibrary(build_py):
    """build_py, then copy the library into <build>/runner/library/ (not for an editable install)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "runner" / "library"
        shutil.rmtree(target, ignore_errors=True)  # no stale file from an earlier build
        for relative in library_files():
            destination = target / relative
            self.mkpath(str(destination.parent))
            self.copy_file(str(ROOT / relative), str(destination))


setup(cmdclass={"build_py": BuildPyWithLibrary})
