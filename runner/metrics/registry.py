"""Per-item generation metrics (prediction vs reference) and corpus BLEU, usable from lm-eval process_results.

Per-item metrics return floats in [0, 1]. Normalisation and token F1 follow the SQuAD v1.1 evaluation
script exactly; ROUGE-L comes from `rouge_score`; BLEU from `sacrebleu` (scaled from 0-100 to 0-1).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the SQuAD-normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD v1.1 token F1 over normalised whitespace tokens (0.0 when nothing overlaps, even if both empty)."""
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    num_same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(ref_tokens)
    return (2 * precision * recall) / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_scorer():
    """The single shared RougeScorer(['rougeL'], use_stemmer=True), built on first use."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure from rouge_score (stemmed; its tokenizer keeps only lowercase ASCII [a-z0-9])."""
    # rouge_score's signature is score(target, prediction): reference first.
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def bleu(prediction: str, reference: str) -> float:
    """Sentence-level BLEU (sacrebleu defaults: exp smoothing, effective order) divided by 100."""
    import sacrebleu

    return _unit(sacrebleu.sentence_bleu(prediction, [reference]).score)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus-level BLEU over aligned predictions/references (one reference each, sacrebleu defaults) / 100."""
    import sacrebleu

    predictions, references = list(predictions), list(references)
    _check_lengths(predictions, references)
    return _unit(sacrebleu.corpus_bleu(predictions, [references]).score)


@dataclass(frozen=True)
class Metric:
    """One metric a suite can list. Adding a metric is one `register(Metric(...))` here: the suite language,
    the lm-eval task writer and the scorer all read this registry."""

    name: str
    kind: Literal["generation", "perplexity"]  # scored per generated answer, or lm-eval's loglikelihood
    score: Callable[[str, str, str | None], float] | None  # (prediction, reference, database SQL) -> [0, 1]
    needs_database: bool = False  # the suite's `sql:` section names the database each item runs against
    higher_is_better: bool = True


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    REGISTRY[metric.name] = metric
    return metric


def _sql_execution(prediction: str, reference: str, database: str | None) -> float:
    from runner.metrics import sql

    return float(sql.execution_match(prediction, reference, database))


def _sql_exact_match(prediction: str, reference: str, database: str | None) -> float:
    from runner.metrics import sql

    return float(sql.normalized_sql_match(prediction, reference))


for _name, _function in (("exact_match", exact_match), ("token_f1", token_f1), ("bleu", bleu), ("rouge_l", rouge_l)):
    register(Metric(_name, "generation", lambda p, r, _db, f=_function: f(p, r)))
register(Metric("perplexity", "perplexity", None, higher_is_better=False))
register(Metric("sql_execution", "generation", _sql_execution, needs_database=True))
register(Metric("sql_exact_match", "generation", _sql_exact_match))
TEXT_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu")  # reference-only metrics, for score_all

# words that mark a standard lm-eval metric ("<task>/<metric>") as lower-is-better when nothing recorded it
LOWER_IS_BETTER_WORDS = frozenset({"perplexity", "ppl", "loss", "error", "wer", "cer", "bpb", "bits"})


def higher_is_better(name: str, recorded: bool | None = None) -> bool:
    """The direction of a metric, the one rule for report, model card, compare and gate: the registry's for its
    own metrics, else what the summary recorded (lm-eval's task config), else by the words of its name."""
    if name in REGISTRY:
        return REGISTRY[name].higher_is_better
    if recorded is not None:
        return recorded
    return not (LOWER_IS_BETTER_WORDS & set(re.split(r"[^a-z0-9]+", name.lower())))


def score_all(predictions: Sequence[str], references: Sequence[str], names: Sequence[str]) -> dict[str, list[float]]:
    """Per-item scores for each named reference-only metric: {name: [score per item]}."""
    predictions, references = list(predictions), list(references)
    _check_lengths(predictions, references)
    unknown = [n for n in names if n not in TEXT_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; available: {', '.join(sorted(TEXT_METRICS))}")
    return {n: [REGISTRY[n].score(p, r, None) for p, r in zip(predictions, references, strict=True)] for n in names}


def clean_generation(text: str, stop_strings: Sequence[str] = ()) -> str:
    """Cut text at the earliest occurrence of any (non-empty) stop string, then strip whitespace."""
    cut = len(text)
    for stop in stop_strings:
        if stop:
            i = text.find(stop)
            if i != -1:
                cut = min(cut, i)
    return text[:cut].strip()


def _unit(bleu_score: float) -> float:
    # sacrebleu's 0-100 score to [0, 1]; clamped because exp(log(...)) can give 100.00000000000004
    return min(1.0, max(0.0, float(bleu_score) / 100.0))


def _check_lengths(predictions: list, references: list) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; they must align")


def executing_sql(names: list[str] | None) -> str | None:
    """The first of these metrics that runs SQL on a database (its items need a db and the suite's sql.database)."""
    return next((n for n in names or [] if n in REGISTRY and REGISTRY[n].needs_database), None)
