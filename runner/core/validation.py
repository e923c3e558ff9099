"""pydantic validation errors -> `key: message (did you mean ...?)`, for recipes, eval suites and run files alike."""
from __future__ import annotations

import types
import typing

from pydantic import BaseModel

from runner.core.errors import did_you_mean


def _unwrap(annotation):
    """Strip Optional[...] and pick the model out of a union."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if models else (args[0] if len(args) == 1 else annotation)
    return annotation


def annotation_at(root: type[BaseModel], loc: tuple) -> typing.Any:
    """The schema type at a pydantic error location (for listing valid keys and choices)."""
    current: typing.Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) or next(
                (f for f in current.model_fields.values() if f.alias == part), None)
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) in (list, dict, tuple):
            current = typing.get_args(current)[-1]
        else:
            return None
    return _unwrap(current)


def keys_of(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def describe(error: dict, root: type[BaseModel], choices_name: str = "") -> tuple[str, str]:
    """(dotted key, message) for one pydantic error; choices_name names what a Literal lists ('metric')."""
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = annotation_at(root, loc[:-1])
        valid = keys_of(parent) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        return key, f"unknown key{did_you_mean(str(loc[-1]), valid)}; valid keys here: {', '.join(valid)}"
    if kind == "missing":
        return key, "required key is missing"
    if kind == "literal_error":
        allowed = [str(a) for a in typing.get_args(annotation_at(root, loc)) or ()]
        value = str(error.get("input"))
        if allowed and choices_name:
            return key, (f"unknown {choices_name} {value!r}{did_you_mean(value, allowed)}; "
                         f"available: {', '.join(allowed)}")
        if allowed:
            return key, f"{value!r} is not allowed (allowed: {', '.join(allowed)}){did_you_mean(value, allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    if kind != "value_error" and "input" in error and not isinstance(error["input"], (dict, list)):
        message += f" (got {error['input']!r})"
    return key, message


def line_of(key: str, lines: dict[str, object]):
    """The entry for the closest recorded key at or above `key` (a.b.c, then a.b, then a); None if none."""
    parts = key.split(".")
    while parts:
        found = lines.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None
