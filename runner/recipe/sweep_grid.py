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


def sweep_key(recipe: str, fixed: list[str], axes: dict[str, list[str]], seeds: list[int] | None,
              search: tuple | None = None) -> str:
    """The sweep's identity: the same recipe, fixed overrides, axes, seeds (and a search with its trials and metric,
    which sets the study's direction) give the same folder again."""
    identity = {"recipe": recipe, "fixed": fixed, "axes": axes, "seeds": seeds} | ({"search": search} if search else {})
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


# ---------------------------------------------------------------- search spaces (--search optuna)


@dataclass(frozen=True)
class Space:
    """One key's range for a search: a list of choices, or a float or integer interval (log-scaled or not)."""

    kind: str  # choice | float | int
    choices: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    def format(self, value) -> str:
        """A sampled value as the override writes it (floats to 3 significant digits, as a person would)."""
        return f"{value:.3g}" if self.kind == "float" else str(value)


def _number(text: str, integer: bool, where: str) -> float:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise UserError(Problem("--grid", where, f"{text!r} is not {kind}")) from None


def parse_space(axes: dict[str, list[str]]) -> dict[str, Space]:
    """--grid axes read as a search space: `key=log:1e-5..1e-3` (log-uniform), `key=1e-5..1e-3` (uniform),
    `key=int:4..32` or `key=int,log:4..64` (integers), or `key=a,b,c` (choices)."""
    spaces = {}
    for key, values in axes.items():
        text = ",".join(values)
        if ".." not in text:
            spaces[key] = Space("choice", tuple(values))
            continue
        kind, _, interval = text.rpartition(":")
        flags = {f.strip() for f in kind.split(",") if f.strip()}
        if flags - {"log", "int"} or len(values) > 1 and not kind:
            raise UserError(Problem("--grid", key, f"{text!r}: write a range as [int,][log:]LOW..HIGH, e.g. "
                                    "log:1e-5..1e-3 or int:4..32"))
        low, _, high = interval.partition("..")
        integer = "int" in flags
        lo, hi = _number(low.strip(), integer, key), _number(high.strip(), integer, key)
        if not lo < hi or ("log" in flags and lo <= 0):
            raise UserError(Problem("--grid", key, f"{text!r}: LOW must be below HIGH (and above 0 for log:)"))
        spaces[key] = Space("int" if integer else "float", low=lo, high=hi, log="log" in flags)
    return spaces


def has_ranges(axes: dict[str, list[str]]) -> bool:
    return any(".." in v for values in axes.values() for v in values)
