"""Eval candidates: what answers the held-out items beside the fine-tuned model.

A candidate is written in a recipe's `eval.candidates` or a suite's `candidates` as
  base                  the run's base model, zero-shot, in the recipe's template
  finetuned             this run's model (always evaluated: it is the run)
  merged                this run's adapter merged into its base (run/merged/, written by `recipe merge`): what
                        `recipe publish` uploads for a base no hub model holds, scored on the same prompts
  export:NAME           an artifact of `recipe export` (export:gguf-q8_0, export:gguf-q4_k_m, export:gguf-f16), scored
                        by the engine that runs it in production (llama.cpp for GGUF) on the fine-tuned model's prompts
  endpoint:MODEL@URL    a model behind any OpenAI-compatible API (URL: its base, e.g. http://127.0.0.1:8000/v1),
                        sent the items as chat messages (the server applies its own template), scored on generation
                        metrics only (an API offers no log-likelihoods); as a mapping {endpoint: URL, model: NAME,
                        api_key_env: VAR, label: NAME} the key is read from the environment variable VAR
  base+fewshot:K        the base model with K examples from the train split as prior turns (runner.evaluate.fewshot)
  run:RECIPE[@RUN_ID]   another recipe's trained model (its latest run, or RUN_ID), on THIS run's items
  anything else         a model: hub id | local dir | .gguf | pkg://, in the recipe's template
or as a mapping {model: REF, label: NAME, template: recipe|tokenizer} to name a model candidate or prompt it with its
tokenizer's own chat template. A `run:` candidate is prompted in the template its own recipe was trained with
(a model is evaluated in the format it learned), on this run's items and references.
Every candidate answers with the same decoding settings (eval.max_new_tokens, greedy) and the same `limit`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from runner.core.errors import Problem, UserError

BASE, FINETUNED, MERGED = "base", "finetuned", "merged"
DEFAULT = (BASE, FINETUNED)
_FEWSHOT = re.compile(r"^base\+fewshot:(\d+)$")
_ENDPOINT = re.compile(r"^endpoint:([^@\s]+)@(https?://\S+)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXPORT = re.compile(r"^export:(gguf-(?:f16|q8_0|q4_k_m))$")
_RUN = re.compile(r"^run:([a-z0-9][a-z0-9._-]*)(?:@([A-Za-z0-9._-]+))?$")
MAX_SHOTS = 32


@dataclass(frozen=True)
class Candidate:
    label: str  # as written (the table's column); `slug` names its files
    kind: str  # base | finetuned | merged | export | endpoint | fewshot | run | model
    shots: int = 0
    recipe: str | None = None  # run: the other recipe
    run_id: str | None = None  # run: a run id (None: its latest)
    model: str | None = None  # model: the reference
    template: str = "recipe"  # model: recipe | tokenizer
    artifact: str | None = None  # export: the artifact's name in export/export.json (gguf-q8_0)
    url: str | None = None  # endpoint: the API's base URL (…/v1)
    api_key_env: str | None = None  # endpoint: the environment variable holding its key (never written anywhere)

    @property
    def slug(self) -> str:
        """A filesystem-safe name: eval/samples-<slug>-<task>.jsonl (base and finetuned keep their names)."""
        return slug(self.label)


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "candidate"


def _endpoint(url: str, model: str, label: str | None, key_env: str | None) -> Candidate:
    if not re.match(r"^https?://\S+$", url or ""):
        raise ValueError(f"endpoint {url!r}: give the API's base URL, e.g. http://127.0.0.1:8000/v1")
    if not isinstance(model, str) or not model.strip():
        raise ValueError("an endpoint candidate needs the model name its server serves, e.g. "
                         "{endpoint: http://127.0.0.1:8000/v1, model: tiny-cpu}")
    if key_env is not None and not (isinstance(key_env, str) and _ENV_NAME.match(key_env)):
        raise ValueError(f"api_key_env {key_env!r}: name an environment variable (e.g. OPENAI_API_KEY); the key "
                         "itself never goes into a recipe")
    label = label or f"endpoint:{model}"
    if not isinstance(label, str) or label in (*DEFAULT, MERGED):
        raise ValueError(f"candidate label {label!r} is reserved or not a string; name it otherwise")
    return Candidate(label, "endpoint", model=model.strip(), url=url.rstrip("/"), api_key_env=key_env)


def parse(entry) -> Candidate:
    """One candidate from its recipe/suite form; ValueError with the fix when it is malformed."""
    if isinstance(entry, dict) and "endpoint" in entry:
        unknown = set(entry) - {"endpoint", "model", "label", "api_key_env"}
        if unknown:
            raise ValueError(f"an endpoint candidate takes endpoint, model, label and api_key_env; not "
                             f"{', '.join(sorted(unknown))}")
        return _endpoint(entry["endpoint"], entry.get("model"), entry.get("label"), entry.get("api_key_env"))
    if isinstance(entry, dict):
        unknown = set(entry) - {"model", "label", "template"}
        if unknown or not isinstance(entry.get("model"), str) or not entry["model"].strip():
            raise ValueError(f"a candidate mapping takes model (required), label and template; got {sorted(entry)}")
        template = entry.get("template", "recipe")
        if template not in ("recipe", "tokenizer"):
            raise ValueError(f"candidate template {template!r}: use recipe or tokenizer")
        label = entry.get("label") or entry["model"]
        if not isinstance(label, str) or label in (*DEFAULT, MERGED):
            raise ValueError(f"candidate label {label!r} is reserved or not a string; name it otherwise")
        return Candidate(label, "model", model=entry["model"].strip(), template=template)
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError("a candidate is a non-empty string or a {model, label, template} mapping")
    text = entry.strip()
    if text in (*DEFAULT, MERGED):
        return Candidate(text, text)
    if text.startswith("base+"):
        match = _FEWSHOT.match(text)
        if not match or not 0 < int(match[1]) <= MAX_SHOTS:
            raise ValueError(f"{text!r}: write base+fewshot:K with 1 <= K <= {MAX_SHOTS}, e.g. base+fewshot:3")
        return Candidate(text, "fewshot", shots=int(match[1]))
    if text.startswith("endpoint:"):
        match = _ENDPOINT.match(text)
        if not match:
            raise ValueError(f"{text!r}: write endpoint:MODEL@URL, e.g. endpoint:tiny-cpu@http://127.0.0.1:8000/v1, "
                             "or a mapping {endpoint: URL, model: NAME, api_key_env: VAR}")
        return _endpoint(match[2], match[1], None, None)
    if text.startswith("export:"):
        match = _EXPORT.match(text)
        if not match:
            raise ValueError(f"{text!r}: write export:gguf-QUANT with QUANT f16, q8_0 or q4_k_m (what `recipe export "
                             "--format gguf --quant QUANT` writes), or merged for the merged model")
        return Candidate(text, "export", artifact=match[1])
    if text.startswith("run:"):
        match = _RUN.match(text)
        if not match:
            raise ValueError(f"{text!r}: write run:RECIPE or run:RECIPE@RUN_ID, e.g. run:tiny-cpu")
        return Candidate(text, "run", recipe=match[1], run_id=match[2])
    return Candidate(text, "model", model=text)


def check(entries: list, reference: str | None) -> list[Candidate]:
    """Parse a candidate list: finetuned present, labels (and file names) unique, reference among them."""
    parsed = [parse(e) for e in entries]
    labels = [c.label for c in parsed]
    if FINETUNED not in labels:
        raise ValueError("the candidates must include finetuned (this run), e.g. [base, base+fewshot:3, finetuned]")
    slugs = [c.slug for c in parsed]
    repeated = sorted({s for s in slugs if slugs.count(s) > 1})
    if repeated:
        raise ValueError(f"candidates {', '.join(repeated)} are listed more than once (or share a file name); "
                         "give model candidates distinct labels")
    if reference is not None and reference not in labels:
        raise ValueError(f"reference {reference!r} is not a candidate ({', '.join(labels)})")
    return parsed


def for_eval(recipe, suite) -> tuple[list[Candidate], str]:
    """The candidates and reference of an eval: the recipe's eval section, else the suite's, else base vs fine-tuned
    (fine-tuned alone when eval.compare_base is false)."""
    spec = recipe.eval
    if spec.candidates is not None:
        entries, reference = spec.candidates, spec.reference
    elif suite.candidates is not None:
        entries, reference = suite.candidates, suite.reference
    else:
        entries, reference = list(DEFAULT if spec.compare_base else (FINETUNED,)), None
    try:
        return check(list(entries), reference), reference or FINETUNED
    except ValueError as err:  # validated on load; a run's older recipe may still hold a bad list
        raise UserError(Problem("recipe", "eval.candidates", str(err))) from None


def is_default(candidates: list[Candidate]) -> bool:
    """Only base and/or fine-tuned: the report keeps its base-vs-fine-tuned layout."""
    return all(c.kind in DEFAULT for c in candidates)
