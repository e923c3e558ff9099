"""Edits of a recipe file that a reviewer reads as a normal diff: one value changed in place, everything else (comments,
key order, flow style, `extends`, blank lines) left byte for byte.

ruamel.yaml's round-trip loader says where each key and value sits (line and column); the edit itself is on the
text, because re-emitting the document would re-indent lists and re-spell numbers all over the file.
"""
from __future__ import annotations

import re

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from runner.core.errors import Problem, UserError

PICKED = "# picked by `recipe sweep`"
CONTINUED = "#   "  # the lines after the first of a pick's comment


def _document(text: str, where: str) -> CommentedMap:
    try:
        document = YAML(typ="rt").load(text)
    except YAMLError as err:
        raise UserError(Problem(where, "", f"is not YAML ruamel.yaml can edit: {str(err).splitlines()[0]}")) from None
    if not isinstance(document, CommentedMap):
        raise UserError(Problem(where, "", "is not a mapping of recipe keys"))
    return document


def _scalar_end(line: str, start: int, flow: bool) -> int:
    """Where the scalar value that starts at `start` ends (a quoted one at its closing quote)."""
    if line[start:start + 1] in ("'", '"'):
        close = line.find(line[start], start + 1)
        return len(line) if close < 0 else close + 1
    comment = re.search(r"[ \t]#", line[start:])
    stops = [i for i in (start + comment.start() if comment else -1,
                         *((line.find(",", start), line.find("}", start)) if flow else ())) if i >= 0]
    end = min(stops, default=len(line))
    return len(line[:end].rstrip())


def _comment_above(lines: list[str], at: int, comment: list[str]) -> None:
    """Put the comment lines above line `at` at its indentation, replacing an earlier pick's comment there (its
    first line starts with PICKED, the others with CONTINUED)."""
    indent = " " * (len(lines[at]) - len(lines[at].lstrip()))
    start = at
    while start > 0 and lines[start - 1].strip().startswith(CONTINUED):
        start -= 1
    if start > 0 and lines[start - 1].strip().startswith(PICKED):
        start -= 1
    else:
        start = at
    lines[start:at] = [indent + c for c in comment]


def _block_end(lines: list[str], key_line: int, indent: int) -> int:
    """The line after the last content line of the block mapping whose key sits on key_line at `indent`."""
    end = key_line + 1
    for i in range(key_line + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            continue
        if len(lines[i]) - len(lines[i].lstrip()) <= indent:
            break
        end = i + 1
    return end


def set_value(text: str, keys: list[str], value: str, where: str, comment: list[str] = ()) -> str:
    """`text` with recipe key `keys` (a mapping path such as ["train", "learning_rate"]) set to the YAML scalar
    `value` as written, and the comment lines above it. A key the file does not have yet (it comes from `extends` or the
    defaults) is added to its section, or a new section at the end."""
    if any(k.isdigit() for k in keys):
        raise UserError(Problem(where, ".".join(keys), "is inside a list; only mapping keys are written back, so "
                                "edit this one by hand"))
    document = _document(text, where)
    newline = "\r\n" if "\r\n" in text else "\n"  # lines keep the file's own ending
    lines = text.split(newline)
    node, depth, parent_line, parent_indent = document, 0, -1, -2
    while depth < len(keys) - 1 and isinstance(node.get(keys[depth]), CommentedMap):
        parent_line, parent_indent = node.lc.key(keys[depth])
        node, depth = node[keys[depth]], depth + 1
    name, rest = keys[depth], keys[depth + 1:]
    if not rest and name in node:
        if isinstance(node[name], (dict, list)):
            raise UserError(Problem(where, ".".join(keys), "holds a section, not a value"))
        line, column = node.lc.value(name)
        flow = node.fa.flow_style()
        end = _scalar_end(lines[line], column, flow)
        lines[line] = lines[line][:column] + value + lines[line][end:]
        anchor = line
    elif node.fa.flow_style():
        raise UserError(Problem(where, ".".join(keys), "goes into a {...} mapping that lacks it; add it by hand"))
    elif name in node:
        raise UserError(Problem(where, ".".join(keys[:depth + 1]), "is a value, not a section"))
    else:
        first = next(iter(node), None)
        indent = node.lc.key(first)[1] if first is not None else parent_indent + 2
        at = _block_end(lines, parent_line, parent_indent) if parent_line >= 0 else len(lines)
        while parent_line < 0 and at > 0 and not lines[at - 1].strip():
            at -= 1  # a new top-level section goes after the last content line, not after trailing blank ones
        chain = [name, *rest]
        new = [" " * (indent + 2 * i) + f"{k}:" for i, k in enumerate(chain[:-1])]
        new.append(" " * (indent + 2 * (len(chain) - 1)) + f"{chain[-1]}: {value}")
        lines[at:at] = new
        anchor = at
    if comment:
        _comment_above(lines, anchor, comment)
    return newline.join(lines)


SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def bump_minor(version: str) -> str:
    """1.1.0 -> 1.2.0 (a pre-release or build suffix is dropped)."""
    major, minor, _ = SEMVER.match(version).groups()
    return f"{major}.{int(minor) + 1}.0"
