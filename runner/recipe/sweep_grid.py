"""The sweep language: `--grid key=v1,v2` axes and `--seeds 1,2` become variants, each a list of recipe overrides.

A variant is one point of the cross product of the axes (its name: the overrides that differ, `lr=1e-4` style keys
kept whole); each variant is trained once per seed (train.seed), as an ordinary run with its overrides recorded.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

from runner.core.errors import Problem, UserError


@dataclass(frozen=True)
class Variant:
    name: str  # "train.learning_rate=1e-4 method.lora.r=8"
    overrides: tuple[str, ...]  # key=value, in axis order


def parse_axes(entries: list[str]) -> dict[str, list[str]]:
    """--grid key=v1,v2 (repeatable) -> {key: [values]}; exit 2 naming the fix."""
    axes: dict[str, list[str]] = {}
    for entry in entries:
        key, sep, values = entry.partition("=")
        listed = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not listed:
            raise UserError(Problem("--grid", "", f"{entry!r}: write KEY=V1,V2,..., e.g. --grid "
                                    "train.learning_rate=1e-4,1e-3"))
        if key in axes:
            raise UserError(Problem("--grid", key, "is given twice; list every value in one --grid"))
        if len(set(listed)) != len(listed):
            raise UserError(Problem("--grid", key, f"repeats a value ({values}); list each once"))
        axes[key.strip()] = listed
    return axes


def parse_seeds(text: str | None) -> list[int] | None:
    """--seeds 1,2,3 -> [1, 2, 3] (distinct integers); None when not given (each variant keeps the recipe's seed)."""
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(Problem("--seeds", "", f"{text!r}: give distinct integer seeds separated by commas, e.g. "
                                "--seeds 1,2,3"))
    return seeds


def variants(axes: dict[str, list[str]]) -> list[Variant]:
    """The cross product of the axes, in axis order."""
    keys = list(axes)
    out = []
    for values in itertools.product(*(axes[k] for k in keys)):
        overrides = tuple(f"{k}={v}" for k, v in zip(keys, values, strict=True))
        out.append(Variant(" ".join(overrides), overrides))
    return out


def sweep_key(recipe: str, fixed: list[str], axes: dict[str, list[str]], seeds: list[int] | None) -> str:
    """The sweep's identity: the same recipe, fixed overrides, axes and seeds give the same folder again."""
    text = json.dumps({"recipe": recipe, "fixed": fixed, "axes": axes, "seeds": seeds}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]
