"""GRPO rewards: the eval suite's own metrics (the registry in runner/metrics/registry.py) as trl reward functions.

axolotl names reward functions by import path (`trl.reward_funcs: [runner.metrics.rewards.token_f1]`), so this module
has one function per generation metric: the answer is cleaned at the template's stop strings exactly as evaluation
cleans it, then scored against the row's reference in [0, 1]. trl passes the dataset's other columns as keyword
arguments: `reference` and `stop` come from the prepared rows, and for a metric that executes SQL (sql_execution)
`db` and `sql_database` (the eval suite's database pattern) name the database each answer runs on, as in evaluation.
"""
from __future__ import annotations

from collections.abc import Callable

from runner.metrics import registry as metrics
from runner.metrics import sql


def _reward(name: str) -> Callable:
    metric = metrics.REGISTRY[name]

    def reward(completions: list, reference: list[str], stop: list[list[str]] | None = None,
               db: list[str] | None = None, sql_database: list[str] | None = None, **_) -> list[float]:
        stops = stop or [[] for _ in completions]
        databases = ([sql.database_text(p, d) for p, d in zip(sql_database, db, strict=True)]
                     if metric.needs_database else [None] * len(completions))
        return [float(metric.score(metrics.clean_generation(_text(c), s), r, d))
                for c, r, s, d in zip(completions, reference, stops, databases, strict=True)]

    reward.__name__ = reward.__qualname__ = name  # trl logs rewards/<function name>/mean
    return reward


def _text(completion) -> str:
    """A completion as text: a string, or (conversational prompts) a list of messages."""
    return completion if isinstance(completion, str) else "".join(m.get("content", "") for m in completion)


def names() -> list[str]:
    """Metrics that can reward a grpo answer."""
    return sorted(n for n, m in metrics.REGISTRY.items() if m.kind == "generation")


def path(name: str) -> str:
    """The import path axolotl loads a reward function from."""
    return f"{__name__}.{name}"


globals().update({name: _reward(name) for name in names()})
