"""Prompts for a candidate that is not prompted exactly like this run: K-shot prompts, and other templates.

The held-out items are this run's test rows (data/test.jsonl: the original row, its prompt and reference). For a
candidate they are rendered again from the original row through the candidate's template by the same function
that rendered the training data (runner.recipe.templates.render), so:
- base+fewshot:K: K examples drawn (random.Random(seed), the same K for every item) from the recipe's train
  split, as the data stage splits it before weighting. A conversation template (one that takes `messages`,
  e.g. chatml) gets them as prior user/assistant turns of one conversation, after the system prompt; any other
  template gets each example's full rendering (prompt and answer) as a block before the item's prompt, with
  the BOS token written once.
- a candidate in another template (run: of a recipe with another template or system prompt, a model with its
  tokenizer's chat template): the item alone, rendered in that template.
- an endpoint (a server that applies its own template): the item as chat messages, JSON, as the data stage reads
  it for a conversation template (instruction and input joined as the user turn), after the recipe's system prompt.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from runner.core.errors import Problem, UserError
from runner.data import fields
from runner.recipe import templates
from runner.recipe.templates import Template, TokenizerTokens


def to_example(row: dict, recipe, template: Template, system: str | None) -> dict:
    """Template variables of one original data row under the recipe's field mapping (the first dataset whose
    mapping fits), with the system prompt as the data stage adds it."""
    problem = "no dataset's field mapping fits it"
    for spec in recipe.data.datasets:
        try:
            example = fields.to_example(row, spec, template)
        except (fields.IncompleteRow, AttributeError, TypeError, KeyError) as err:
            problem = str(err)
            continue
        if system and not example.get("system"):
            example["system"] = system
        return example
    raise UserError(Problem(templates.file_of(template), "data.template", f"a test row cannot be rendered in "
                            f"template {template.name!r}: {problem}"))


def train_examples(recipe, template: Template) -> list[dict]:
    """The train split's examples, as the data stage splits them (same seed; before mixing weights)."""
    from runner.data import prepare, sources  # the data stage's own reading and split, not a second copy

    read = [sources.read(spec, index) for index, spec in enumerate(recipe.data.datasets)]
    items, _ = prepare._examples(recipe, template, read)
    unique = prepare._dedupe(items)[0] if recipe.data.dedupe else items
    train = prepare._split(unique, recipe)["train"]
    if not train:
        raise UserError(Problem("recipe", "eval.candidates", "base+fewshot needs train examples; the train split "
                                "is empty"))
    return [item.example for item in train]


def draw(examples: list[dict], k: int, seed: int) -> list[dict]:
    """K examples drawn without replacement, seeded."""
    if k > len(examples):
        raise UserError(Problem("recipe", "eval.candidates", f"base+fewshot:{k} asks for {k} examples; the train "
                                f"split has {len(examples)}"))
    return random.Random(seed).sample(examples, k)


def _full_text(template: Template, example: dict, tokens: TokenizerTokens) -> str:
    return "".join(s.text for s in templates.render(template, example, tokens))


def prompt(template: Template, example: dict, tokens: TokenizerTokens, stop: tuple[str, ...],
           shots: list[dict] = ()) -> str:
    """The item's prompt in `template`, with the shots before it (see the module docstring)."""
    if shots and "messages" in template.requires:
        turns = [m for shot in shots for m in shot["messages"]]
        example = example | {"messages": turns + list(example["messages"])}
        shots = ()
    text = templates.prompt_and_reference(templates.render(template, example, tokens), stop)[0]
    if not shots:
        return text
    blocks = [_full_text(template, shot, tokens) for shot in shots] + [text]
    bos = tokens.bos_token
    return blocks[0] + "".join(b[len(bos):] if bos and b.startswith(bos) else b for b in blocks[1:])


def candidate_prompts(run, recipe, template_name: str, system: str | None, tokenizer_dir: str,
                      shots: int = 0, seed: int = 0) -> tuple[list[str], list[str]]:
    """(prompts in test-row order, stop strings) for a candidate prompted in template_name with its tokenizer."""
    from runner.evaluate import tasks
    from runner.models import resolve

    template = templates.load(template_name)
    tokens = resolve.tokenizer_tokens(Path(tokenizer_dir))
    stop = tuple(t for t in (*template.stop, tokens.eos_token) if t)
    drawn = draw(train_examples(recipe, template), shots, seed) if shots else []
    if system:
        drawn = [{k: v for k, v in shot.items() if k != "system"} for shot in drawn]  # one system prompt, first
    out = []
    for row in tasks.read_test_split(run):
        original = row.get("row") if isinstance(row.get("row"), dict) else json.loads(row.get("row") or "{}")
        out.append(prompt(template, to_example(original, recipe, template, system), tokens, stop, drawn))
    return out, list(stop)


def message_prompts(run, recipe) -> list[str]:
    """The items as JSON chat messages (system, then the turns before the answer), in test-row order."""
    from runner.evaluate import tasks

    template = templates.load(templates.TOKENIZER_TEMPLATE)  # a conversation template: rows become messages
    out = []
    for row in tasks.read_test_split(run):
        original = row.get("row") if isinstance(row.get("row"), dict) else json.loads(row.get("row") or "{}")
        example = to_example(original, recipe, template, recipe.data.system)
        turns = list(example["messages"])
        while turns and turns[-1]["role"] == "assistant":
            turns.pop()
        system = [{"role": "system", "content": example["system"]}] if example.get("system") else []
        out.append(json.dumps(system + turns, ensure_ascii=False))
    return out
