"""A caller's `stop` strings, applied as OpenAI's API applies them: the answer is the text before the first one.

transformers serve hands a request's `stop` to generate as `stop_strings`, which ends generation after the stop
string but keeps it in the answer ("wn" where OpenAI returns "w" for stop ["n"]). The server cuts its answers here:
whole answers with `cut`, streamed ones through a `StopCutter`, which holds back the tail of the text that could be
the start of a stop string until the next piece tells.
"""
from __future__ import annotations

import json
from collections.abc import Sequence


def stops_of(body: dict) -> tuple[str, ...]:
    """The request's stop strings: OpenAI's `stop` is a string or a list of them (empty strings mean nothing)."""
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list):
        return ()
    return tuple(s for s in stop if isinstance(s, str) and s)


def normalize(body: dict) -> dict:
    """The request with `stop` as its list of non-empty strings, or without it when there is none (OpenAI takes
    `stop: []` and `stop: ""`; transformers' stop-string search fails on an empty list)."""
    wanted = stops_of(body)
    if wanted:
        body["stop"] = list(wanted)
    else:
        body.pop("stop", None)
    return body


def cut(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(the text before the earliest stop string, whether one was found)."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(ends)], True) if ends else (text, False)


class StopCutter:
    """Cuts a streamed answer at the first stop string: feed() each piece, get what can be sent now; finish() gives
    what was held back once the stream ends without a stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text, self.stopped = cut(self.held + piece, self.stops)
        if self.stopped:
            self.held = ""
            return text
        keep = self._partial_tail(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def finish(self) -> str:
        rest, self.held = self.held, ""
        return "" if self.stopped else rest

    def _partial_tail(self, text: str) -> int:
        """The length of the longest end of `text` that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-n:]):
                    longest = n
                    break
        return longest


def cut_response(payload: dict, stops: Sequence[str]) -> dict:
    """A whole chat or completions response with each choice's text cut at the first stop string."""
    for choice in payload.get("choices") or []:
        message = choice.get("message")
        key, holder = ("content", message) if isinstance(message, dict) else ("text", choice)
        if isinstance(holder.get(key), str):
            holder[key], found = cut(holder[key], stops)
            if found:
                choice["finish_reason"] = "stop"
    return payload


async def cut_stream(events, stops: Sequence[str]):
    """A streamed response (server-sent events, `data: {json}`) with its text cut at the first stop string: chat
    chunks carry text in choices[0].delta.content, completions chunks in choices[0].text."""
    cutter = StopCutter(stops)
    pending = ""
    async for part in events:
        pending += part if isinstance(part, str) else part.decode("utf-8")
        *complete, pending = pending.split("\n\n")
        out = [event for event in (_cut_event(e, cutter) for e in complete) if event is not None]
        if out:
            yield "".join(out)
    if pending:
        yield pending


def _cut_event(event: str, cutter: StopCutter) -> str | None:
    """One event with its text cut (None: nothing left to send); other events pass as they are."""
    if not event.startswith("data: ") or event == "data: [DONE]":
        return event + "\n\n"
    try:
        chunk = json.loads(event[len("data: "):])
    except ValueError:
        return event + "\n\n"
    choices = chunk.get("choices") or []
    if not choices:
        return event + "\n\n"
    choice = choices[0]
    delta = choice.get("delta")
    holder, key = (delta, "content") if isinstance(delta, dict) else (choice, "text")
    text = holder.get(key) if isinstance(holder.get(key), str) else ""
    finishing = choice.get("finish_reason") is not None
    sent = cutter.feed(text) + (cutter.finish() if finishing else "")
    if finishing and cutter.stopped:
        choice["finish_reason"] = "stop"
    if not sent and not finishing and not (isinstance(delta, dict) and (delta.get("role") or delta.get("tool_calls"))):
        return None  # all of this piece is held back, or after the stop
    if sent or isinstance(holder.get(key), str):
        holder[key] = sent
    return "data: " + json.dumps(chunk) + "\n\n"
