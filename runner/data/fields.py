"""Map dataset rows onto template variables.

A dataset's `fields` maps template variables to columns; `extract` pulls variables out of one text
column with a regex. A `messages` column must be a list of {role, content}. When a chat template needs
`messages` and a dataset is single-turn, the row becomes one user/assistant exchange (the user turn is
the instruction, then a blank line and the input when there is one).
"""
from __future__ import annotations

import re

from runner.recipe.schema import DatasetSpec
from runner.recipe.templates import Template

ROLES = {"system", "user", "assistant"}
# Common alternatives seen in public chat datasets (ShareGPT's from/value, human/gpt).
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


class IncompleteRow(Exception):
    """A row with a missing or empty field; the message says which."""


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise IncompleteRow("messages is not a non-empty list")
    messages = []
    for turn in value:
        if not isinstance(turn, dict):
            raise IncompleteRow("a message is not a mapping")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        role = _ROLE_ALIASES.get(role, role)
        if role not in ROLES or not isinstance(content, str) or not content.strip():
            raise IncompleteRow(f"a message has role {role!r} or empty content")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise IncompleteRow("the conversation has no assistant turn")
    return messages


def to_example(row: dict, spec: DatasetSpec, template: Template) -> dict:
    """One dataset row -> template variables; raises IncompleteRow for a missing or empty required field."""
    wants_messages = "messages" in template.requires
    # system is rendered only when set (a row's empty system prompt falls back to data.system)
    optional = template.optional | {"system"} | ({"input"} if wants_messages else set())
    example: dict = {}
    for variable, column in spec.fields.items():
        value = row.get(column)
        if variable == "messages":
            example["messages"] = _messages(value)
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            if variable in optional:
                example[variable] = ""
                continue
            raise IncompleteRow(f"column {column!r} (for {variable}) is missing or empty")
        example[variable] = value if isinstance(value, str) else str(value)
    if spec.extract:
        text = row.get(spec.extract.column)
        match = re.search(spec.extract.pattern, text, re.DOTALL) if isinstance(text, str) else None
        if not match:
            raise IncompleteRow(f"column {spec.extract.column!r} does not match the extract pattern")
        for variable, value in match.groupdict().items():
            if not value or not value.strip():
                raise IncompleteRow(f"extracted {variable} is empty")
            example[variable] = value.strip()
    if wants_messages and "messages" not in example:
        user = example.pop("instruction")
        if example.get("input"):
            user = f"{user}\n\n{example.pop('input')}"
        example.pop("input", None)
        example["messages"] = [{"role": "user", "content": user},
                               {"role": "assistant", "content": example.pop("output")}]
    return example
