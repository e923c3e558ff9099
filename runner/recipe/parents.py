"""Stages of training: `model.base: run:<recipe>` (or `run:<recipe>@<run-id>`) starts from another recipe's model.

This module reads the reference and checks what needs no run: the named recipe exists and the chain of parents
has no cycle, so `recipe validate` and `recipe lock` work before any parent is trained. Finding the parent's run
and its model is runner/models/parent.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from runner.core.errors import UserError, unknown_name

RUN = "run:"
KEY = "model.base"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # Recipe.name's pattern
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ParentRef:
    """The parent of a staged recipe: its recipe name and, when pinned, one run id (else its latest run)."""

    recipe: str
    run_id: str | None = None

    def __str__(self) -> str:
        return f"{RUN}{self.recipe}" + (f"@{self.run_id}" if self.run_id else "")


def is_run(base: str) -> bool:
    return base.strip().startswith(RUN)


def parse(base: str) -> ParentRef | None:
    """run:<recipe>[@<run-id>] -> ParentRef; another kind of base -> None; a malformed reference -> ValueError."""
    base = base.strip()
    if not base.startswith(RUN):
        return None
    name, at, run_id = base[len(RUN):].partition("@")
    if not _NAME.match(name) or (at and not _RUN_ID.match(run_id)):
        raise ValueError(f"{base!r} is not a run reference; write run:<recipe> (its latest run) or "
                         "run:<recipe>@<run-id> (one run), e.g. run:smollm2-135m-sql-chatml")
    return ParentRef(name, run_id or None)


def load_parent(base: str):
    """The parent recipe of a run: base, loaded and validated (its own chain of stages included)."""
    from runner.recipe import loading

    return loading.load(parse(base).recipe)


def _parent_base(name: str, files: dict) -> str | None:
    """model.base of recipe `name` as its files write it (merged, not validated): enough to follow the chain."""
    from runner.recipe import loading  # late: loading calls problems() below

    try:
        data, _, _ = loading.merged_document(files[name])
    except UserError:
        return None  # that recipe's own validation reports it
    model = data.get("model")
    base = model.get("base") if isinstance(model, dict) else None
    return base if isinstance(base, str) else None


def problems(name: str, base: str) -> list[tuple[str, str]]:
    """(key, message) for a run: base of recipe `name`: malformed, an unknown recipe, or a cycle of stages."""
    try:
        ref = parse(base)
    except ValueError as err:
        return [(KEY, str(err))]
    if ref is None:
        return []
    from runner.recipe import loading

    files = loading.recipe_files()
    chain = [name]
    while ref is not None:
        if ref.recipe not in files:  # deeper in the chain, the parent's own validation names it
            return [(KEY, unknown_name("recipe", ref.recipe, sorted(set(files) - {name})))] if len(chain) == 1 else []
        if ref.recipe in chain:
            cycle = " -> ".join([*chain, ref.recipe])
            return [(KEY, f"stages form a cycle: {cycle}; a recipe cannot start from its own model")]
        chain.append(ref.recipe)
        try:
            ref = parse(_parent_base(ref.recipe, files) or "")
        except ValueError:
            return []  # malformed in the parent: its own validation says so
    return []

