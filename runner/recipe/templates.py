"""Prompt templates: (template, example, tokenizer tokens) -> segments [{text, label}].

A template is a Jinja file in templates/ that opens with a YAML comment header (description,
required and optional variables, special tokens, stop strings). The part the model learns is written
inside `{% filter labeled %}...{% endfilter %}`; everything else is prompt. Rendering happens in an
immutable sandbox with StrictUndefined, so a template can neither reach Python internals nor use a
variable the data does not provide. The same function feeds training data, eval prompts and
generation, so a model is always evaluated in the format it was trained in.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jinja2
import yaml
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, ValidationError

from runner.core import paths
from runner.core.errors import Problem, UserError, unknown_name

TOKENIZER_TEMPLATE = "tokenizer"  # the base model's own chat template
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use code points marking labeled text inside a render
_MARKERS = re.compile(f"({_OPEN}|{_CLOSE})")
_HEADER = re.compile(r"^\{#-?(.*?)-?#\}", re.DOTALL)
BUILTIN_VARIABLES = {"bos_token", "eos_token", "system"}


@dataclass(frozen=True)
class Segment:
    text: str
    label: bool

    def as_dict(self) -> dict:
        return {"text": self.text, "label": self.label}


@dataclass(frozen=True)
class TokenizerTokens:
    """What a template may take from the tokenizer."""

    bos_token: str = ""
    eos_token: str = ""
    chat_template: str | None = None  # used only by the `tokenizer` template


@dataclass(frozen=True)
class Template:
    name: str
    source: str
    description: str = ""
    requires: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    special_tokens: tuple[str, ...] = ()
    stop: tuple[str, ...] = field(default=())

    @property
    def variables(self) -> frozenset[str]:
        return self.requires | self.optional


def _labeled(text: str) -> str:
    return f"{_OPEN}{text}{_CLOSE}"


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    # An empty loader: {% include %} / {% import %} of any file is refused (TemplateNotFound).
    env = ImmutableSandboxedEnvironment(loader=jinja2.DictLoader({}), undefined=jinja2.StrictUndefined,
                                        keep_trailing_newline=True, extensions=["jinja2.ext.loopcontrols"],
                                        trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["labeled"] = _labeled
    env.globals["raise_exception"] = _raise_exception
    return env


ENV = _environment()


def available() -> list[str]:
    """Template names in the workspace's templates/ and the library's, plus `tokenizer`."""
    return sorted([*paths.glob_layers("templates", "*.jinja"), TOKENIZER_TEMPLATE])


def path_of(name: str) -> Path | None:
    """templates/<name>.jinja: the workspace's own, else the shipped library's; None when neither has it."""
    return paths.find_in_layers("templates", f"{name}.jinja")


class TemplateHeader(BaseModel):
    """The YAML header comment of a template file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = ""
    requires: list[str] = []
    optional: list[str] = []
    special_tokens: list[str] = []  # must each be one token of the model's tokenizer
    stop: list[str] = []  # where a generated answer ends


def _parse_header(source: str, where: str) -> TemplateHeader:
    match = _HEADER.match(source)
    if not match:
        raise UserError(Problem(where, "", "a template opens with a {#- ... -#} header naming its variables "
                                "(requires: [...], optional: [...])"))
    try:
        header = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as err:
        raise UserError(Problem(where, "", f"the header comment is not valid YAML: {err}")) from None
    try:
        return TemplateHeader.model_validate(header)
    except ValidationError as err:
        raise UserError([Problem(where, ".".join(["header", *map(str, e["loc"])]), e["msg"])
                         for e in err.errors()]) from None


@lru_cache(maxsize=64)
def load(name: str) -> Template:
    """Load templates/<name>.jinja (or the `tokenizer` pseudo-template) and check it declares what it uses."""
    if name == TOKENIZER_TEMPLATE:
        return Template(name=name, source="", description="the base model's own chat template",
                        requires=frozenset({"messages"}), optional=frozenset({"system"}))
    path = path_of(name)
    if path is None or not path.is_file():
        raise UserError(Problem("data.template", "", unknown_name("template", name, available())))
    where = paths.display(path)
    source = path.read_text(encoding="utf-8")
    header = _parse_header(source, where)
    try:
        used = meta.find_undeclared_variables(ENV.parse(source)) - {"raise_exception"}
    except jinja2.TemplateSyntaxError as err:
        raise UserError(Problem(where, "", f"template syntax error: {err.message}", err.lineno)) from None
    requires, optional = frozenset(header.requires), frozenset(header.optional)
    undeclared = used - requires - optional - BUILTIN_VARIABLES
    if undeclared:
        raise UserError(Problem(where, "", f"uses {sorted(undeclared)} but its header declares neither; add them "
                                "to requires or optional"))
    template = Template(name=name, source=source, description=header.description, requires=requires,
                        optional=optional, special_tokens=tuple(header.special_tokens), stop=tuple(header.stop))
    _check_labels(template, where)
    return template


LABEL_FIX = ("wrap the part the model learns (the answer, with its end marker) in "
             "{% filter labeled %}...{% endfilter %}, e.g. "
             "{% filter labeled %}{{ output }}{{ eos_token }}{% endfilter %}")


def _placeholder(name: str):
    """A stand-in value for a template variable when a template is checked without data."""
    if name == "messages":
        return [{"role": "user", "content": "<user turn>"}, {"role": "assistant", "content": "<assistant turn>"}]
    return f"<{name}>"


def _check_labels(template: Template, where: str) -> None:
    """Render the template once with placeholder values (optional variables set, then left out): a template
    whose rendering has no labeled part would train on nothing. A render that fails here is left to the real
    data, which may be shaped in ways a placeholder is not."""
    filled = {name: _placeholder(name) for name in template.variables}
    bare = {name: _placeholder(name) for name in template.requires}
    tokens = TokenizerTokens(bos_token="<s>", eos_token="</s>")
    left_out = f"with the optional variables {sorted(template.optional)} left out"
    for example, how in ((filled, "with every variable set"), (bare, left_out)):
        try:
            segments = render(template, example, tokens)
        except UserError:
            return
        if not any(s.label for s in segments):
            raise UserError(Problem(where, "", f"template {template.name!r} renders {how} with no labeled part, so "
                                    f"a recipe using it would train on nothing; {LABEL_FIX}"))
        if not template.optional:
            return


def _split(rendered: str) -> list[Segment]:
    """Cut rendered text at the markers the `labeled` filter leaves: text between them is labeled."""
    segments, label = [], False
    for index, part in enumerate(_MARKERS.split(rendered)):
        if index % 2:  # a marker
            if (part == _OPEN) == label:
                raise jinja2.TemplateError("nested or unbalanced {% filter labeled %} blocks")
            label = part == _OPEN
        elif part:
            segments.append(Segment(part, label))
    return segments


def _chat_template_segments(example: dict, tokens: TokenizerTokens) -> list[Segment]:
    """Label each assistant turn as the text the model's own chat template adds for it."""
    if not tokens.chat_template:
        raise UserError(Problem("data.template", "", "template 'tokenizer' needs a tokenizer with a chat template; "
                                "this model's tokenizer has none: name a file template such as chatml"))
    compiled = _compiled(tokens.chat_template)
    messages = list(example["messages"])
    if example.get("system"):
        messages = [{"role": "system", "content": example["system"]}, *messages]

    def render(turns, generation_prompt):
        return compiled.render(messages=turns, add_generation_prompt=generation_prompt,
                               bos_token=tokens.bos_token, eos_token=tokens.eos_token)

    segments, done = [], ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, full = render(messages[:index], True), render(messages[: index + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise UserError(Problem("data.template", "", "the model's chat template does not render turns as "
                                    "prefixes of each other, so assistant turns cannot be labeled; "
                                    "use a file template"))
        segments += [Segment(prompt[len(done):], False), Segment(full[len(prompt):], True)]
        done = full
    return [s for s in segments if s.text]


@lru_cache(maxsize=64)
def _compiled(source: str) -> jinja2.Template:
    """Jinja compiles a template once; rendering it per row is then cheap."""
    return ENV.from_string(source)


def file_of(template: Template) -> str:
    """The template's file as messages name it."""
    path = path_of(template.name)
    return paths.display(path) if path else f"templates/{template.name}.jinja"


def render(template: Template, example: dict, tokens: TokenizerTokens) -> list[Segment]:
    """Render one example into segments: prompt text unlabeled, the trained response labeled."""
    for key, value in example.items():
        if isinstance(value, str) and (_OPEN in value or _CLOSE in value):
            raise UserError(Problem(template.name, key, "contains a reserved private-use character U+E000/U+E001"))
    context = {name: None for name in template.optional} | example
    context |= {"bos_token": tokens.bos_token, "eos_token": tokens.eos_token}
    context.setdefault("system", None)
    try:
        if template.name == TOKENIZER_TEMPLATE:
            return _chat_template_segments(context, tokens)
        segments = _split(_compiled(template.source).render(context))
    except jinja2.exceptions.SecurityError as err:
        raise UserError(Problem(f"templates/{template.name}.jinja", "", f"refused by the sandbox: {err}")) from None
    except jinja2.UndefinedError as err:
        raise UserError(Problem(f"templates/{template.name}.jinja", "", f"{err.message}; map it in "
                                "data.datasets[].fields or declare it optional")) from None
    except jinja2.TemplateError as err:
        raise UserError(Problem(f"templates/{template.name}.jinja", "", f"cannot render: {err}")) from None
    return [s for s in segments if s.text]


def prompt_and_reference(segments: list[Segment], eos_markers: tuple[str, ...] = ()) -> tuple[str, str]:
    """Split a rendered example for evaluation: everything before the last labeled segment, and that segment
    with end markers (EOS, end-of-turn) stripped."""
    last = max((i for i, s in enumerate(segments) if s.label), default=None)
    if last is None:
        raise ValueError("the rendered example has no labeled (response) segment")
    prompt = "".join(s.text for s in segments[:last])
    reference = segments[last].text
    for marker in eos_markers:
        if marker and reference.endswith(marker):
            reference = reference[: -len(marker)]
    return prompt, reference.strip()


def show(segments: list[Segment]) -> str:
    """Human-readable render: labeled (trained) text between [[ and ]]."""
    return "".join(f"[[{s.text}]]" if s.label else s.text for s in segments)
