"""A caller's `stop` strings end a served answer before them, as OpenAI's API does (runner.serve.stops)."""
from __future__ import annotations

import asyncio
import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from runner.serve.stops import StopCutter, cut, cut_response, cut_stream, normalize, stops_of


def test_the_answer_is_the_text_before_the_earliest_stop_string():
    assert cut("wnining", ["n"]) == ("w", True)
    assert cut("SELECT 1; -- done", ["--", ";"]) == ("SELECT 1", True)
    assert cut("no stop here", ["###"]) == ("no stop here", False)


def test_stop_is_a_string_or_a_list_of_them():
    assert stops_of({"stop": "\n"}) == ("\n",)
    assert stops_of({"stop": ["a", "", 3, "b"]}) == ("a", "b")
    assert stops_of({}) == stops_of({"stop": None}) == ()


def test_an_empty_stop_is_dropped_before_transformers_sees_it():
    # lm-eval's local-chat-completions sends "stop": [] (transformers' stop-string search raises on it)
    assert normalize({"stop": [], "model": "m"}) == {"model": "m"}
    assert normalize({"stop": ""}) == {} and normalize({}) == {}
    assert normalize({"stop": ["a", "", "b"]}) == {"stop": ["a", "b"]} and normalize({"stop": "x"}) == {"stop": ["x"]}


@given(st.text(alphabet="abn#\n", max_size=40), st.lists(st.integers(0, 40), max_size=6),
       st.lists(st.text(alphabet="abn#\n", min_size=1, max_size=3), min_size=1, max_size=3))
def test_a_streamed_answer_cut_piece_by_piece_is_the_whole_answer_cut(text, splits, stops):
    cutter = StopCutter(stops)
    bounds = sorted({0, len(text), *(min(s, len(text)) for s in splits)})
    sent = "".join(cutter.feed(text[a:b]) for a, b in itertools.pairwise(bounds))
    sent += cutter.finish()
    assert sent == cut(text, stops)[0]


def test_a_whole_chat_and_completion_response_are_cut_and_marked_stop():
    chat = {"choices": [{"message": {"role": "assistant", "content": "wnining"}, "finish_reason": "length"}]}
    assert cut_response(chat, ["n"])["choices"][0] == {"message": {"role": "assistant", "content": "w"},
                                                       "finish_reason": "stop"}
    completion = {"choices": [{"text": "abc", "finish_reason": "length"}]}
    assert cut_response(completion, ["x"])["choices"][0] == {"text": "abc", "finish_reason": "length"}


def _events(pieces: list[str], chat: bool) -> list[str]:
    def chunk(text, finish=None):
        choice = {"delta": {"content": text}} if chat else {"text": text}
        return "data: " + json.dumps({"choices": [dict(choice, finish_reason=finish)]}) + "\n\n"
    return [chunk(p) for p in pieces] + [chunk(None if chat else "", "length"), "data: [DONE]\n\n"]


async def _collect(events: list[str], stops: list[str]) -> list[dict]:
    async def source():
        for e in events:
            yield e[:5]  # an event may arrive split across body parts
            yield e[5:]
    out = "".join([part async for part in cut_stream(source(), stops)])
    return [json.loads(e[6:]) for e in out.split("\n\n") if e.startswith("data: {")]


def test_a_streamed_chat_and_completion_stop_before_the_stop_string():
    for chat in (True, False):
        chunks = asyncio.run(_collect(_events(["w", "ni", "ning"], chat), ["ni"]))
        texts = [(c["choices"][0]["delta"] if chat else c["choices"][0]).get("content" if chat else "text") or ""
                 for c in chunks]
        assert "".join(texts) == "w"
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_stream_without_its_stop_string_is_passed_whole():
    chunks = asyncio.run(_collect(_events(["ab", "c"], True), ["cd"]))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "abc"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_text_on_the_last_chunk_after_the_stop_string_is_dropped():
    last = "data: " + json.dumps({"choices": [{"text": "ning", "finish_reason": "length"}]}) + "\n\n"
    chunks = asyncio.run(_collect(["data: " + json.dumps({"choices": [{"text": "wni"}]}) + "\n\n", last], ["n"]))
    assert "".join(c["choices"][0]["text"] for c in chunks) == "w"
