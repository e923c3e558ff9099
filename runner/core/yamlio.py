"""Safe YAML in and canonical YAML out.

Reading rejects everything a shared, reviewed config must not contain: bytes that are not UTF-8, tags
that would build Python objects, duplicate keys, alias bombs, huge documents, a top level that is not
a mapping. It also records the line of every key so errors can point at it.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from runner.core.errors import Problem, UserError

MAX_BYTES = 1 << 20  # a recipe is a page of text; 1 MiB is generous
MAX_NODES = 100_000  # nodes after alias expansion; a billion-laughs document blows past this at once


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key]})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _count_nodes(node, limit: int) -> int:
    """Nodes in the document with aliases expanded, stopping as soon as the limit is passed."""
    count, stack = 0, [node]
    while stack:
        current = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
        elif isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                stack.extend((key, value))
    return count


def _key_lines(node, prefix: str = "") -> dict[str, int]:
    """Dotted key path -> 1-based line, for every mapping key in the document."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                path = f"{prefix}{key_node.value}"
                lines[path] = key_node.start_mark.line + 1
                lines.update(_key_lines(value_node, path + "."))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_key_lines(item, f"{prefix}{index}."))
    return lines


def parse_yaml_text(text: str, where: str) -> tuple[dict, dict[str, int]]:
    """Parse YAML text into (mapping, key lines); any problem is a UserError naming `where`."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is None:
            raise UserError(Problem(where, "", "the file is empty; a recipe starts with `schema: 1`"))
        if _count_nodes(node, MAX_NODES) > MAX_NODES:
            raise UserError(Problem(where, "", f"document expands to more than {MAX_NODES:,} nodes "
                                    "(an alias bomb?); write the values out instead of nesting aliases"))
        data = _Loader(text).get_single_data()
    except yaml.constructor.ConstructorError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else None
        hint = err.problem or str(err)
        if "could not determine a constructor" in hint:
            hint += "; only plain YAML values are allowed (no Python object tags)"
        raise UserError(Problem(where, "", hint, line)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else None
        what = getattr(err, "problem", None) or str(err)
        raise UserError(Problem(where, "", f"invalid YAML: {what}", line)) from None
    if not isinstance(data, dict):
        raise UserError(Problem(where, "", f"the top level must be a mapping of keys, not a {type(data).__name__}"))
    return data, _key_lines(node)


def read_yaml(path: Path, where: str | None = None) -> tuple[dict, dict[str, int]]:
    """Read a YAML mapping safely from a file: (data, key lines)."""
    where = where or str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(Problem(where, "", "file not found")) from None
    except OSError as err:
        raise UserError(Problem(where, "", f"cannot read: {err.strerror}")) from None
    if len(raw) > MAX_BYTES:
        raise UserError(Problem(where, "", f"file is {len(raw):,} bytes; the limit is {MAX_BYTES:,}"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(Problem(where, "", f"not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                                "save the file as UTF-8", line)) from None
    return parse_yaml_text(text, where)


def dump_yaml(data) -> str:
    """Canonical YAML: keys in the given order, block style, unicode kept, no aliases."""

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, _data):
            return True

    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)
