"""`recipe render`: the first rows of a recipe's data as its template renders them, trained text marked."""
from __future__ import annotations

from runner.core.errors import UserError
from runner.data import fields, preference, sources
from runner.recipe import templates
from runner.recipe.loading import Loaded

PLACEHOLDER_TOKENS = templates.TokenizerTokens(bos_token="<bos>", eos_token="<eos>")


def _tokens(loaded: Loaded) -> tuple[templates.TokenizerTokens, str]:
    """The model's special tokens when the model is available here, else visible placeholders (and a note)."""
    from runner.models import resolve

    try:
        model_dir = resolve.resolve_base(loaded.recipe.model, root=loaded.root_of("model.base"))
        return resolve.tokenizer_tokens(model_dir), ""
    except UserError as err:
        return PLACEHOLDER_TOKENS, f"# note: model not available here, showing <bos>/<eos> placeholders ({err})\n"


def render_preview(loaded: Loaded, count: int) -> str:
    """Text of `count` rendered examples from the recipe's first dataset."""
    recipe = loaded.recipe
    template = templates.load(recipe.data.template)
    tokens, note = _tokens(loaded)
    spec = recipe.data.datasets[0]
    rows = sources.read(spec, 0, loaded.root_of("data.datasets.0.source")).rows
    if spec.preference_shape:
        return note + _preference_preview(rows[:count], spec, template, tokens, recipe.data.system)
    blocks = []
    for number, row in enumerate(rows[:count], start=1):
        try:
            example = fields.to_example(row, spec, template)
        except fields.IncompleteRow as err:
            blocks.append(f"--- example {number}: skipped ({err})")
            continue
        if recipe.data.system:
            example.setdefault("system", recipe.data.system)
        segments = templates.render(template, example, tokens)
        blocks.append(f"--- example {number} ({template.name}; trained text between [[ ]])\n{templates.show(segments)}")
    return note + "\n".join(blocks)


def _preference_preview(rows: list[dict], spec, template, tokens, system) -> str:
    """Pairs (or kto rows) as trl receives them: the prompt, then each trained answer between [[ ]]."""
    build = preference.pair if spec.preference_shape == "pairs" else preference.kto_row
    blocks = []
    for number, row in enumerate(rows, start=1):
        try:
            built = build(row, spec, template, tokens, system)
        except (fields.IncompleteRow, preference.IdenticalPair) as err:
            blocks.append(f"--- example {number}: skipped ({err})")
            continue
        answers = [(f"completion (label {str(built['label']).lower()})", built["completion"])] if "label" in built \
            else [("chosen", built["chosen"]), ("rejected", built["rejected"])]
        lines = [f"--- example {number} ({template.name}; prompt, then each trained answer between [[ ]])",
                 built["prompt"].rstrip("\n")]
        lines += [f"  {name}: [[{text}]]" for name, text in answers]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
