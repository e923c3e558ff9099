"""Pairwise LLM-as-judge comparison of base vs fine-tuned answers (MT-Bench style, both answer orders).

The judge itself is an injected `ask(messages) -> str` callable; `openai_chat_asker` (any
OpenAI-compatible /chat/completions endpoint) and `local_model_asker` (a local transformers causal LM)
build one. API keys are read from the environment at call time and never logged or put in errors.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

Ask = Callable[[list[dict]], str]

JUDGE_PROMPT = {
    "system": (
        "You are an impartial judge comparing two AI assistants' answers to the same question. "
        "A reference answer is provided; use it to decide which answer is more correct, complete and helpful. "
        "Identify any mistakes in each answer by comparing it with the reference. "
        "Do not let the order in which the answers are presented, their length, or the assistants' names "
        "influence you, and do not favour one assistant over the other. Be as objective as possible. "
        "First explain your comparison briefly. Then end your reply with a final line containing exactly one "
        'verdict: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, or "[[C]]" for a tie.'
    ),
    "user": (
        "[Question]\n{question}\n\n"
        "[Reference Answer]\n{reference}\n\n"
        "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
        "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]\n\n"
        "Compare the two answers against the reference, then give your verdict as [[A]], [[B]] or [[C]]."
    ),
}

_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_OUTCOMES = ("win", "tie", "loss")


class JudgeUnavailable(Exception):
    """The judge endpoint could not be reached or gave an unusable reply (message names the URL, never a key)."""


def judge_messages(question: str, reference: str, answer_a: str, answer_b: str,
                   prompt: dict | None = None) -> list[dict]:
    """Chat messages (system + user) asking the judge to compare answer A with answer B."""
    prompt = prompt or JUDGE_PROMPT
    user = prompt["user"].format(question=question, reference=reference, answer_a=answer_a, answer_b=answer_b)
    return [{"role": "system", "content": prompt["system"]}, {"role": "user", "content": user}]


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B' or 'tie' from the last [[A]]/[[B]]/[[C]] tag in the judge's reply; None if there is none."""
    found = _VERDICT.findall(text or "")
    if not found:
        return None
    return "tie" if found[-1] == "C" else found[-1]


def judge_pair(question: str, reference: str, base_answer: str, ft_answer: str, ask: Ask,
               prompt: dict | None = None) -> dict:
    """Judge both orders; 'win'/'loss' for the fine-tuned model only if both orders agree, else 'tie'.
    Also counts the replies without a verdict (`unparseable`) and flags `position_bias`: both replies named the
    same position, so the verdict flipped with the order."""
    raw_base_first = ask(judge_messages(question, reference, base_answer, ft_answer, prompt))
    raw_ft_first = ask(judge_messages(question, reference, ft_answer, base_answer, prompt))
    v_base_first, v_ft_first = parse_verdict(raw_base_first), parse_verdict(raw_ft_first)
    preferred = [
        {"A": "base", "B": "finetuned", "tie": "tie"}.get(v_base_first),
        {"A": "finetuned", "B": "base", "tie": "tie"}.get(v_ft_first),
    ]
    if preferred == ["finetuned", "finetuned"]:
        outcome = "win"
    elif preferred == ["base", "base"]:
        outcome = "loss"
    else:
        outcome = "tie"  # explicit tie, disagreement between orders (position bias), or no parseable verdict
    return {
        "outcome": outcome,
        "verdict_base_first": v_base_first,
        "verdict_ft_first": v_ft_first,
        "preferred": preferred,
        "raw": [raw_base_first, raw_ft_first],
        "unparseable": (v_base_first is None) + (v_ft_first is None),
        "position_bias": v_base_first == v_ft_first and v_base_first in ("A", "B"),
    }


_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


def parse_rating(text: str | None) -> float | None:
    """The last [[rating]] in the judge's reply, 1 to 10; None when there is none or it is out of range."""
    found = _RATING.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= 10 else None


def grade_messages(question: str, reference: str | None, answer: str, prompt: dict) -> list[dict]:
    """Chat messages asking for a 1-10 rating of one answer; reference-guided when there is a reference."""
    if reference:
        user = prompt["user_reference"].format(question=question, reference=reference, answer=answer)
    else:
        user = prompt["user"].format(question=question, answer=answer)
    return [{"role": "system", "content": prompt["system"]}, {"role": "user", "content": user}]


def grade(question: str, reference: str | None, answer: str, ask: Ask, prompt: dict) -> dict:
    """{rating (None when unparseable), raw} for one answer."""
    raw = ask(grade_messages(question, reference, answer, prompt))
    return {"rating": parse_rating(raw), "raw": raw}


def tally(outcomes: Iterable[str | dict]) -> dict:
    """Counts of win/tie/loss (strings or judge_pair dicts) with win_rate and adjusted_win_rate (ties = 0.5)."""
    counts = dict.fromkeys(_OUTCOMES, 0)
    for item in outcomes:
        outcome = item["outcome"] if isinstance(item, dict) else item
        if outcome not in counts:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {', '.join(_OUTCOMES)}")
        counts[outcome] += 1
    n = sum(counts.values())
    return {
        "wins": counts["win"],
        "ties": counts["tie"],
        "losses": counts["loss"],
        "n": n,
        "win_rate": counts["win"] / n if n else None,
        "adjusted_win_rate": (counts["win"] + 0.5 * counts["tie"]) / n if n else None,
    }


def _post_json(url: str, payload: dict, api_key: str, timeout: float) -> bytes:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def openai_chat_asker(base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60) -> Ask:
    """An ask(messages) that POSTs to {base_url}/chat/completions (temperature 0) and returns the reply text."""
    url = base_url.rstrip("/") + "/chat/completions"

    def ask(messages: list[dict]) -> str:
        log.debug("judge request to %s (model %s, %d messages)", url, model, len(messages))
        payload = {"model": model, "messages": messages, "temperature": 0}
        api_key = os.environ.get(api_key_env, "")
        problem = None
        try:
            body = _post_json(url, payload, api_key, timeout)
        except urllib.error.HTTPError as e:
            problem = f"judge at {url} returned HTTP {e.code} {e.reason}"
        except urllib.error.URLError as e:
            problem = f"judge at {url} is unreachable: {e.reason}"
        except (OSError, ValueError, http.client.HTTPException) as e:
            # timeouts, resets, bad URL; str(e) can quote a request header (the key), so only the type is kept
            problem = f"judge at {url} failed ({type(e).__name__})"
        if problem is None:
            try:
                content = json.loads(body)["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise TypeError("content is not a string")
            except (ValueError, KeyError, IndexError, TypeError):
                problem = f"judge at {url} returned an unexpected response (not an OpenAI chat completion)"
        if problem is not None:
            if api_key:
                problem = problem.replace(api_key, "***")
            api_key = None
            # Raised outside the except blocks so no chained exception (or its frames) carries the request.
            log.debug("%s", problem)
            raise JudgeUnavailable(problem)
        return content

    return ask


def local_model_asker(model_dir: str, max_new_tokens: int = 256) -> Ask:
    """An ask(messages) that runs a local transformers causal LM judge on CPU (chat template, greedy decoding)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to("cpu").eval()

    def ask(messages: list[dict]) -> str:
        try:
            inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True)
        except Exception:  # templates without a system role: fold the system prompt into the first user turn
            if not any(m["role"] == "system" for m in messages):
                raise
            inputs = tokenizer.apply_chat_template(_fold_system(messages), add_generation_prompt=True,
                                                   return_tensors="pt", return_dict=True)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        new_tokens = out[0, inputs["input_ids"].shape[1]:]
        return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()

    return ask


def _fold_system(messages: list[dict]) -> list[dict]:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    return rest
