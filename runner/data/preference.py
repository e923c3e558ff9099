"""Preference rows: a dataset row -> the (prompt, chosen, rejected) pair or (prompt, completion, label) KTO row that
trl trains on, rendered through the recipe's template.

Each side is built as the supervised example it would be (fields.to_example: the prompt plays the instruction
and the answer the output, or a chosen/rejected message list is the conversation) and rendered by the same
template as SFT, evaluation and generation. The prompt is the text before the last labeled part
(templates.prompt_and_reference, as evaluation cuts it); each answer is that labeled part with its end-of-turn /
EOS text, exactly what SFT trains on. Text the template adds after the answer (e.g. ChatML's newline) is not trained.
"""
from __future__ import annotations

from runner.core.errors import Problem, UserError
from runner.data import fields
from runner.recipe import templates
from runner.recipe.schema import PREFERENCE_FIELDS, DatasetSpec

_ANSWER = "\ue002answer"  # a column name no dataset has: where the side being built puts its answer
# True and False also stand for 1 and 0 as dict keys
_LABELS = {True: True, False: False, "true": True, "false": False, "1": True, "0": False}


class IdenticalPair(Exception):
    """chosen and rejected render to the same text: nothing to prefer (dropped and counted)."""


def _side(row: dict, spec: DatasetSpec, template: templates.Template, name: str) -> dict:
    """The supervised example of one side: the row with column `name` (chosen, rejected or completion) as answer."""
    try:
        return _build_side(row, spec, template, name)
    except fields.IncompleteRow as err:  # name the dataset's column, not the stand-in
        message = str(err).replace(repr(_ANSWER), repr(spec.fields[name])).replace("(for output)", f"(for {name})")
        raise fields.IncompleteRow(message) from None


def _build_side(row: dict, spec: DatasetSpec, template: templates.Template, name: str) -> dict:
    mapping = spec.fields
    value = row.get(mapping[name])
    rest = {k: v for k, v in mapping.items() if k not in PREFERENCE_FIELDS}
    row = {**row, _ANSWER: value}
    if isinstance(value, list):  # a conversation whose last message is the answer
        if "messages" not in template.requires:
            raise fields.IncompleteRow(f"{name} is a message list but template {template.name!r} takes text; "
                                       "use a chat template such as chatml")
        if "prompt" in mapping and all(isinstance(m, dict) and m.get("role") == "assistant" for m in value):
            prompt = row.get(mapping["prompt"])
            row[_ANSWER] = [{"role": "user", "content": prompt if isinstance(prompt, str) else ""}, *value]
        example = fields.to_example(row, spec.model_copy(update={"fields": rest | {"messages": _ANSWER}}), template)
        if example["messages"][-1]["role"] != "assistant":
            raise fields.IncompleteRow(f"the last message of {name} is not the assistant's")
        return example
    if "prompt" not in mapping:
        raise fields.IncompleteRow(f"{name} is text (not a message list) and no prompt column is mapped")
    side = rest | {"instruction": mapping["prompt"], "output": _ANSWER}
    return fields.to_example(row, spec.model_copy(update={"fields": side}), template)


def render_side(template: templates.Template, example: dict, tokens: templates.TokenizerTokens) -> tuple[str, str,
                                                                                                          list]:
    """(prompt, trained answer with its end marker, segments) of one rendered example."""
    segments = templates.render(template, example, tokens)
    if not any(s.label for s in segments):
        raise UserError(Problem(templates.file_of(template), "data.template", "a preference row renders with no "
                                f"labeled answer, so there is nothing to prefer; {templates.LABEL_FIX}"))
    prompt, _ = templates.prompt_and_reference(segments)
    last = max(i for i, s in enumerate(segments) if s.label)
    return prompt, segments[last].text, segments


def _with_system(example: dict, system: str | None) -> dict:
    return example | {"system": system} if system and not example.get("system") else example


def pair(row: dict, spec: DatasetSpec, template: templates.Template, tokens: templates.TokenizerTokens,
         system: str | None = None) -> dict:
    """One row -> {prompt, chosen, rejected, segments (the chosen side's render)}; IncompleteRow or IdenticalPair."""
    sides = [_with_system(_side(row, spec, template, name), system) for name in ("chosen", "rejected")]
    (prompt, chosen, segments), (other_prompt, rejected, _) = (render_side(template, s, tokens) for s in sides)
    if prompt != other_prompt:
        raise fields.IncompleteRow("chosen and rejected differ before their last answer (a pair shares its prompt "
                                   "and earlier turns)")
    if chosen == rejected:
        raise IdenticalPair("chosen equals rejected")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "segments": [s.as_dict() for s in segments]}


def kto_row(row: dict, spec: DatasetSpec, template: templates.Template, tokens: templates.TokenizerTokens,
            system: str | None = None) -> dict:
    """One row -> {prompt, completion, label, segments}; IncompleteRow for a missing side or a label not true/false."""
    raw = row.get(spec.fields["label"])
    label = _LABELS.get(raw.strip().lower() if isinstance(raw, str) else raw) if isinstance(raw, (bool, int, str)) \
        else None
    if label is None:
        raise fields.IncompleteRow(f"label {raw!r} is not true/false (or 1/0)")
    prompt, completion, segments = render_side(template, _with_system(_side(row, spec, template, "completion"),
                                                                      system), tokens)
    return {"prompt": prompt, "completion": completion, "label": label, "segments": [s.as_dict() for s in segments]}


def reference_row(row: dict, spec: DatasetSpec, template: templates.Template, tokens: templates.TokenizerTokens,
                  system: str | None = None) -> dict:
    """A supervised row held out for evaluation (`use: test`) in a preference recipe: its answer is the reference
    (as `chosen`, or a desirable kto `completion`); never trained, so it needs no rejected side."""
    prompt, answer, segments = render_side(template, _with_system(fields.to_example(row, spec, template), system),
                                           tokens)
    return {"prompt": prompt, "chosen": answer, "rejected": "", "completion": answer, "label": True,
            "segments": [s.as_dict() for s in segments]}


def prompt_row(row: dict, spec: DatasetSpec, template: templates.Template, tokens: templates.TokenizerTokens,
               system: str | None = None) -> dict:
    """A supervised row -> {prompt, reference, segments} for grpo: the model answers the prompt, and the reward
    metrics score that answer against the reference (end markers stripped, as evaluation scores it)."""
    example = _with_system(fields.to_example(row, spec, template), system)
    prompt, _, segments = render_side(template, example, tokens)
    stop = tuple(t for t in (*template.stop, tokens.eos_token) if t)
    return {"prompt": prompt, "reference": templates.prompt_and_reference(segments, stop)[1],
            "segments": [s.as_dict() for s in segments]}
