"""A recipe's prompt template as a Hugging Face chat template, and its stop strings as a response template.

Servers (transformers serve, vLLM) format a chat request with the tokenizer's chat template:
`apply_chat_template(messages, add_generation_prompt=True)`. The chat template written here renders the same
text as `runner.evaluate.generate.render_prompt` (the format the model was trained on): the recipe's Jinja
template runs inside a macro, its `{% filter labeled %}` blocks (a filter chat templates do not have) become
a `{% call %}` block that marks the trained text, and the prompt is everything before the last marked part,
as `templates.prompt_and_reference` cuts it. A system message replaces the recipe's `data.system`, which is
the default. Templates that take one instruction (alpaca, qa, falcon-instruct) see the last user message;
earlier turns are left out, as in training. The BOS/EOS strings come from the tokenizer at render time.

The response template (transformers' declarative `response_template`, kept in tokenizer_config.json) cuts a
generated answer at the first stop string and strips it, as `metrics.clean_generation` does.
"""
from __future__ import annotations

import json
import re

from runner.core.errors import Problem, UserError
from runner.recipe import templates
from runner.recipe.schema import Recipe

_TAG = re.compile(r"\{#.*?#\}|\{%([-+]?)\s*(filter|endfilter)\b(.*?)([-+]?)%\}", re.DOTALL)
_MACRO_ARGS = ("bos_token", "eos_token", "system")

# The private-use markers of the recipe's `labeled` filter, as escapes in Jinja string literals.
_OPEN_LITERAL, _CLOSE_LITERAL = r"\ue000", r"\ue001"
_LABELED_MACRO = '{%- macro rr_labeled() -%}{{ "<O>" }}{{ caller() }}{{ "<C>" }}{%- endmacro -%}\n'

# The prompt: the render up to its last non-empty labeled part (a render with an empty answer has none when the
# template labels only the answer; then with a placeholder answer), markers removed. A full conversation
# (add_generation_prompt false) renders whole.
_CUT = """\
{%- macro rr_cut(text) -%}
{%- set text = text.replace("<O><C>", "") -%}
{{- text[:text.rfind("<O>")].replace("<O>", "").replace("<C>", "") -}}
{%- endmacro -%}
{%- macro rr_prompt(render) -%}
{%- set text = render("") -%}
{%- if "<O>" not in text.replace("<O><C>", "") -%}{%- set text = render("answer") -%}{%- endif -%}
{%- if "<O>" not in text.replace("<O><C>", "") -%}
{{- raise_exception("the recipe's template renders no labeled answer part") -}}
{%- endif -%}
{{- rr_cut(text) -}}
{%- endmacro -%}
"""

_MESSAGES_DRIVER = """\
{%- set rr = namespace(system=<SYSTEM>, turns=[]) -%}
{%- for message in messages -%}
{%- if loop.first and message.role == "system" -%}{%- set rr.system = message.content -%}
{%- else -%}{%- set rr.turns = rr.turns + [{"role": message.role, "content": message.content}] -%}{%- endif -%}
{%- endfor -%}
{%- macro rr_with_answer(answer) -%}
{{- rr_render(messages=rr.turns + [{"role": "assistant", "content": answer}], system=rr.system, <TOKENS>) -}}
{%- endmacro -%}
{%- if add_generation_prompt -%}{{- rr_prompt(rr_with_answer) -}}
{%- else -%}{{- rr_render(messages=rr.turns, system=rr.system, <TOKENS>).replace("<O>", "").replace("<C>", "") -}}
{%- endif -%}"""

_INSTRUCTION_DRIVER = """\
{%- set rr = namespace(system=<SYSTEM>, instruction=none, output="") -%}
{%- for message in messages -%}
{%- if loop.first and message.role == "system" -%}{%- set rr.system = message.content -%}
{%- elif message.role == "user" -%}{%- set rr.instruction = message.content -%}{%- set rr.output = "" -%}
{%- elif message.role == "assistant" -%}{%- set rr.output = message.content -%}{%- endif -%}
{%- endfor -%}
{%- if rr.instruction is none -%}{{- raise_exception("the conversation has no user message") -}}{%- endif -%}
{%- macro rr_with_answer(answer) -%}
{{- rr_render(instruction=rr.instruction, output=answer, system=rr.system, <INPUT><TOKENS>) -}}
{%- endmacro -%}
{%- if add_generation_prompt -%}{{- rr_prompt(rr_with_answer) -}}
{%- else -%}{{- rr_with_answer(rr.output).replace("<O>", "").replace("<C>", "") -}}
{%- endif -%}"""

_TOKENS = ('bos_token=(bos_token if bos_token is defined and bos_token else ""), '
           'eos_token=(eos_token if eos_token is defined and eos_token else "")')


def _literal(value: str | None) -> str:
    """A Jinja literal for a string or None (JSON string escapes are Jinja's too)."""
    return "none" if value is None else json.dumps(value)


def _call_blocks(source: str, where: str) -> str:
    """`{% filter labeled %}...{% endfilter %}` -> `{% call rr_labeled() %}...{% endcall %}`; other filter blocks
    and comments stay as they are. Whitespace control (`-`, `+`) is kept, so the text renders the same."""
    stack: list[bool] = []

    def swap(match: re.Match) -> str:
        left, tag, rest, right = match.groups()
        if tag is None:  # a comment
            return match.group(0)
        if tag == "endfilter":
            if not stack:
                raise UserError(Problem(where, "", "{% endfilter %} without a {% filter %}"))
            return f"{{%{left} endcall {right}%}}" if stack.pop() else match.group(0)
        stack.append(rest.strip() == "labeled")
        return f"{{%{left} call rr_labeled() {right}%}}" if stack[-1] else match.group(0)

    return _TAG.sub(swap, source)


def chat_template(recipe: Recipe, tokenizer_chat_template: str | None = None) -> str:
    """The chat template that renders a chat in `recipe`'s prompt format (see the module's docstring).

    For the `tokenizer` template the model's own chat template is used, with `data.system` as the default
    system message; it is then needed as `tokenizer_chat_template`."""
    template = templates.load(recipe.data.template)
    where = templates.file_of(template)
    system = recipe.data.system
    header = (f"{{#- Generated by recipe-runner from templates/{template.name}.jinja for recipe {recipe.name} "
              f"{recipe.version}: a chat in the format the model was trained on. -#}}\n")
    if template.name == templates.TOKENIZER_TEMPLATE:
        if not tokenizer_chat_template:
            raise UserError(Problem("data.template", "", "template 'tokenizer' needs the model's own chat template "
                                    "and its tokenizer has none: name a file template such as chatml"))
        if not system:
            return tokenizer_chat_template
        return (header + '{%- if not messages or messages[0].role != "system" -%}{%- set messages = '
                f'[{{"role": "system", "content": {_literal(system)}}}] + messages -%}}{{%- endif -%}}'
                + tokenizer_chat_template)
    names = sorted(template.variables | set(_MACRO_ARGS))
    body = _call_blocks(template.source, where)
    macro = f"{{%- macro rr_render({', '.join(f'{n}=none' for n in names)}) -%}}\n{body}{{% endmacro -%}}\n"
    if "messages" in template.requires:
        driver = _MESSAGES_DRIVER
    else:
        missing = template.requires - {"instruction", "output"}
        if missing:
            raise UserError(Problem(where, "", f"requires {sorted(missing)}, which a chat request does not give; "
                                    "a served template takes `messages`, or `instruction` and `output`"))
        driver = _INSTRUCTION_DRIVER.replace("<INPUT>", 'input="", ' if "input" in template.variables else "")
    driver = (driver.replace("<SYSTEM>", _literal(system)).replace("<TOKENS>", _TOKENS)
              .replace("<O>", _OPEN_LITERAL).replace("<C>", _CLOSE_LITERAL))
    cut = _LABELED_MACRO + _CUT
    return header + cut.replace("<O>", _OPEN_LITERAL).replace("<C>", _CLOSE_LITERAL) + macro + driver


def response_template(stop: list[str]) -> dict:
    """transformers' response template: the answer is the generated text before the first stop string, stripped;
    the stop string and what follows it go to a field no server shows."""
    fields: dict = {"content": {"content": "text"}}
    if stop:
        fields["stop"] = {"open": list(dict.fromkeys(stop)), "content": "text", "content_args": {"strip": False}}
    return {"start_anchor_pattern": r"\Z", "fields": fields}
