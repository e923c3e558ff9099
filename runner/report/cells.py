"""Markdown table cells and figures for people: escaped, cut in the middle when long, numbers formatted."""
from __future__ import annotations

import html
import math
import re

CELL_CHARS = 300  # table cells longer than this are cut in the middle
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def table(headers: list[str], rows: list[list[str]], numeric_from: int | None = None,
           numeric_to: int | None = None) -> str:
    """A GFM table; columns numeric_from..numeric_to (exclusive) are right-aligned."""
    stop = len(headers) if numeric_to is None else numeric_to
    align = ["---:" if numeric_from is not None and numeric_from <= i < stop else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def cell(value, limit: int = CELL_CHARS) -> str:
    """Text safe inside a table cell: cut to limit (0: no cut), HTML and markdown escaped, newlines as <br>."""
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    if limit and len(text) > limit:
        head = limit * 2 // 3
        text = f"{text[:head]} …[{len(text) - limit} characters cut]… {text[head - limit:]}"
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False)).strip()
    return text.replace("\n", "<br>") or "_(empty)_"


def code(value) -> str:
    if value is None:
        return "—"
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def fenced(text: str, lang: str = "") -> str:
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value, spec: str = ",") -> str:
    if value is None:
        return "—"
    if is_number(value):
        return format(value, spec)
    return cell(value, 0)


def duration(seconds) -> str:
    if not is_number(seconds):
        return "—"
    text = f"{seconds:,.1f} s"
    if seconds >= 60:
        hours, rest = divmod(int(round(seconds)), 3600)
        minutes, secs = divmod(rest, 60)
        text += f" ({hours}h {minutes:02d}m {secs:02d}s)" if hours else f" ({minutes}m {secs:02d}s)"
    return text


def interval(ci) -> str:
    if isinstance(ci, list) and len(ci) == 2 and all(is_number(x) for x in ci):
        return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"
    return "—"


def p_value(p) -> str:
    return "—" if not is_number(p) else "<0.001" if p < 0.001 else f"{p:.3f}"
