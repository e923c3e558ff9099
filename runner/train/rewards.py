"""GRPO rewards: the eval suite's own metrics (the registry in runner/evaluate/metrics.py) as trl reward functions.

axolotl names reward functions by import path (`trl.reward_funcs: [runner.train.rewards.token_f1]`), so this module
has one function per metric that can score a generated answer on its own (no database): the answer is cleaned at
the template's stop strings exactly as evaluation cleans it, then scored against the row's reference in [0, 1].
trl passes the dataset's other columns as keyword arguments: `reference` and `stop` come from the prepared rows.
"""
from __future__ import annotations

from collections.abc import Callable

from runner.evaluate import metrics


def _reward(name: str) -> Callable:
    metric = metrics.REGISTRY[name]

    def reward(completions: list, reference: list[str], stop: list[list[str]] | None = None, **_) -> list[float]:
        stops = stop or [[] for _ in completions]
        return [float(metric.score(metrics.clean_generation(_text(c), s), r, None))
                for c, r, s in zip(completions, reference, stops, strict=True)]

    reward.__name__ = reward.__qualname__ = name  # trl logs rewards/<function name>/mean
    return reward


def _text(completion) -> str:
    """A completion as text: a string, or (conversational prompts) a list of messages."""
    return completion if isinstance(completion, str) else "".join(m.get("content", "") for m in completion)


def names() -> list[str]:
    """Metrics that can reward a grpo answer."""
    return sorted(n for n, m in metrics.REGISTRY.items() if m.kind == "generation" and not m.needs_database)


def path(name: str) -> str:
    """The import path axolotl loads a reward function from."""
    return f"{__name__}.{name}"


globals().update({name: _reward(name) for name in names()})
