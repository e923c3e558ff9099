"""Markdown tables from pydantic models: one row per key (dotted path), with its type, default and description.

Shared by the reference pages (docs/hooks/reference.py); nothing here is specific to one model.
"""
from __future__ import annotations

import html
import re
import types
import typing
from enum import Enum

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

_CODE = re.compile(r"(`[^`]*`)")


def cell(text: str) -> str:
    """Text for a Markdown table cell: HTML-escaped outside code spans, pipes and newlines made safe."""
    parts = _CODE.split(str(text).replace("\n", " "))
    out = [part if part.startswith("`") else html.escape(part, quote=False) for part in parts]
    return "".join(out).replace("|", "\\|")


def code(text: str) -> str:
    """A code span for a table cell (backticks inside are rare; doubled spans handle them)."""
    text = str(text).replace("|", "\\|")
    return f"``{text}``" if "`" in text else f"`{text}`"


def submodels(annotation) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (X, X | None, list[X], dict[str, X], ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in submodels(arg)]


def type_name(annotation) -> str:
    """A short, readable type: `full | lora`, `int | null`, `list of str`, `mapping` (for a section)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " | ".join(str(m.value) for m in annotation)
    return getattr(annotation, "__name__", str(annotation))


def default_text(field) -> str:
    """The default as YAML would spell it, 'required' when there is none, '(see below)' for a section."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(the keys below)"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Enum):
        value = value.value
    if value in ([], {}, ""):
        return f"`{value!r}`".replace("''", '""')
    return code(value)


def constraints(field) -> str:
    """Bounds pydantic checks (gt, ge, lt, le, min_length, pattern), as a short suffix."""
    found = []
    for meta in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="),
                           ("pattern", "matches")):
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return ", ".join(found)


def rows(model: type[BaseModel], prefix: str = "", seen: tuple = ()) -> list[tuple[str, object, type]]:
    """(dotted key, FieldInfo, owning model) for every key of model and of the sections inside it, depth first."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        out.append((key, field, model))
        for sub in submodels(field.annotation):
            if sub not in seen:
                origin = typing.get_origin(field.annotation)
                inner = typing.get_args(field.annotation)
                is_list = origin is list or any(typing.get_origin(a) is list for a in inner)
                is_map = origin is dict or any(typing.get_origin(a) is dict for a in inner)
                step = f"{key}[]." if is_list else f"{key}.<name>." if is_map else f"{key}."
                out += rows(sub, step, (*seen, model, sub))
    return out


def table(model: type[BaseModel], prefix: str = "") -> str:
    """The key table of a model and all its sections."""
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, field, _owner in rows(model, prefix, (model,)):
        kind = type_name(field.annotation)
        bounds = constraints(field)
        description = field.description or ""
        lines.append(f"| {code(key)} | {cell(kind)}{cell(' (' + bounds + ')') if bounds else ''} | "
                     f"{default_text(field)} | {cell(description)} |")
    return "\n".join(lines)


def doc(obj) -> str:
    """An object's docstring as one paragraph (or '')."""
    text = typing.cast(str, obj.__doc__ or "")
    return " ".join(text.split())
