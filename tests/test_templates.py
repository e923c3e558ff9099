"""Every template's rendered text and loss mask pinned by golden files; the sandbox refuses escapes.

Regenerate with `make golden` (UPDATE_GOLDEN=1) and review the diff.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from runner.core.errors import UserError
from runner.recipe import templates

GOLDEN = Path(__file__).parent / "golden" / "templates"
TOKENS = templates.TokenizerTokens(bos_token="<s>", eos_token="</s>")
# A ChatML chat template in the style models ship in tokenizer_config.json, for the `tokenizer` template.
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")
CHAT = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And doubled?"}, {"role": "assistant", "content": "8."}]

CASES = {
    "alpaca-no-input": ("alpaca", {"instruction": "Name a primary colour.", "output": "Red."}),
    "alpaca-with-input": ("alpaca", {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"}),
    "chatml-single-turn": ("chatml", {"messages": CHAT[:2]}),
    "chatml-multi-turn-system": ("chatml", {"messages": CHAT, "system": "You are terse."}),
    "qa-no-input": ("qa", {"instruction": "What causes a cold?", "output": "A virus, usually a rhinovirus."}),
    "qa-with-input": ("qa", {"instruction": "Is this serious?", "input": "I have a mild cough.", "output": "Rarely."}),
    "falcon-instruct-system": ("falcon-instruct", {"instruction": "I feel anxious.", "output": "That sounds hard.",
                                                   "system": "You are a caring assistant."}),
    "falcon-instruct-no-system": ("falcon-instruct", {"instruction": "I can't sleep.", "output": "Let's talk."}),
    "tokenizer-multi-turn": ("tokenizer", {"messages": CHAT}),
    "zephyr-multi-turn-system": ("zephyr", {"messages": CHAT, "system": "You are terse."}),
}


def _golden_text(name: str) -> str:
    template, example = CASES[name]
    segments = templates.render(templates.load(template), example, replace(TOKENS, chat_template=CHAT_TEMPLATE))
    record = {"template": template, "example": example, "shown": templates.show(segments),
              "segments": [s.as_dict() for s in segments]}
    return json.dumps(record, indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    path = GOLDEN / f"{name}.json"
    text = _golden_text(name)
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text, f"{path.name} changed: review, then `make golden`"


def test_every_template_has_golden_cases():
    assert {template for template, _ in CASES.values()} == set(templates.available())


@pytest.mark.parametrize("name", [n for n in templates.available()])
def test_only_responses_are_labeled_and_end_with_an_end_marker(name):
    cases = [example for template, example in CASES.values() if template == name]
    tokens = replace(TOKENS, chat_template=CHAT_TEMPLATE)
    for example in cases:
        segments = templates.render(templates.load(name), example, tokens)
        labeled = [s.text for s in segments if s.label]
        answers = [m["content"] for m in example.get("messages", []) if m["role"] == "assistant"] or [example["output"]]
        assert len(labeled) == len(answers)
        for text, answer in zip(labeled, answers, strict=True):
            assert text.startswith(answer) and text.rstrip().endswith(("</s>", "<|im_end|>"))


def test_prompt_and_reference_split_for_evaluation():
    segments = templates.render(templates.load("chatml"), {"messages": CHAT}, TOKENS)
    prompt, reference = templates.prompt_and_reference(segments, ("<|im_end|>",))
    assert prompt.endswith("And doubled?<|im_end|>\n<|im_start|>assistant\n") and reference == "8."


def test_missing_variable_is_a_clear_error():
    with pytest.raises(UserError, match="'instruction' is undefined; map it in data.datasets"):
        templates.render(templates.load("alpaca"), {"output": "x"}, TOKENS)


@pytest.mark.parametrize("body", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ instruction.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
])
def test_sandbox_refuses_python_internals(project, body):
    (project / "templates" / "evil.jinja").write_text("{#-\nrequires: [instruction]\n-#}\n" + body)
    with pytest.raises(UserError, match="refused by the sandbox|cannot render|undefined"):
        templates.render(templates.load("evil"), {"instruction": "x"}, TOKENS)


def test_sandbox_refuses_the_file_system(project):
    (project / "templates" / "reader.jinja").write_text("{#-\nrequires: []\n-#}\n{% include '/etc/passwd' %}")
    with pytest.raises(UserError, match="cannot render"):
        templates.render(templates.load("reader"), {}, TOKENS)


def test_template_using_an_undeclared_variable_is_rejected(project):
    (project / "templates" / "sloppy.jinja").write_text("{#-\nrequires: [instruction]\n-#}\n{{ instruction }}{{ x }}")
    with pytest.raises(UserError, match=r"uses \['x'\] but its header declares neither"):
        templates.load("sloppy")


@pytest.mark.parametrize("header, key, message", [
    ('stop: "###"', "header.stop", "valid list"),             # a string is not a list of stop strings
    ("requires: [instruction]\nrequired: [x]", "header.required", "Extra inputs"),
    ("5", "header", "valid dictionary"),
])
def test_template_header_is_type_checked(project, header, key, message):
    (project / "templates" / "bad.jinja").write_text(f"{{#-\n{header}\n-#}}\n{{{{ instruction }}}}")
    with pytest.raises(UserError) as caught:
        templates.load("bad")
    assert key in str(caught.value) and message in str(caught.value)


def test_nested_labeled_blocks_are_a_clear_error(project):
    (project / "templates" / "nested.jinja").write_text(
        "{#-\nrequires: [instruction]\n-#}\n{% filter labeled %}a{% filter labeled %}{{ instruction }}"
        "{% endfilter %}{% endfilter %}")
    with pytest.raises(UserError, match="nested or unbalanced"):
        templates.render(templates.load("nested"), {"instruction": "x"}, TOKENS)


def test_labeled_text_is_cut_at_the_markers():
    segments = templates.render(templates.load("alpaca"), {"instruction": "Say hi", "input": "", "output": "hi"},
                                TOKENS)
    assert [s.label for s in segments] == [False, True]
    assert segments[1].text.startswith("hi")


def test_model_chat_templates_may_use_loop_controls():
    # transformers renders chat templates with jinja2.ext.loopcontrols; templates in the wild use {% break %}
    tokens = replace(TOKENS, chat_template="{% for m in messages %}{% if m.role == 'assistant' %}{{ m.content }}"
                                           "{% break %}{% endif %}{{ m.content }}{% endfor %}")
    segments = templates.render(templates.load("tokenizer"), {"messages": [{"role": "user", "content": "hi "},
                                                                          {"role": "assistant", "content": "yo"}]},
                                tokens)
    assert [(s.text, s.label) for s in segments] == [("hi ", False), ("yo", True)]


def test_a_model_chat_template_that_fails_is_a_clear_error():
    tokens = replace(TOKENS, chat_template="{{ raise_exception('System role not supported') }}")
    with pytest.raises(UserError, match="System role not supported"):
        templates.render(templates.load("tokenizer"), {"messages": [{"role": "assistant", "content": "x"}]}, tokens)


# ---------------------------------------------------------------- a template that trains on nothing

NO_LABEL = ("{#-\nrequires: [instruction, output]\noptional: [input]\n-#}\n"
            "### Q: {{ instruction }}\n### A: {{ output }}\n")
LABEL_IF_INPUT = ("{#-\nrequires: [instruction, output]\noptional: [input]\n-#}\n{{ instruction }}\n"
                  "{% if input %}{{ input }}\n{% filter labeled %}{{ output }}{{ eos_token }}{% endfilter %}"
                  "{% else %}{{ output }}{% endif %}")
RECIPE = """\
schema: 1
name: {name}
version: 1.0.0
extends: [_base/method/lora.yaml, _base/hardware/cpu.yaml]
model: {{base: {model}}}
data:
  datasets:
    - source: file:data/samples/alpaca-sample.jsonl
      fields: {{instruction: instruction, input: input, output: output}}
  template: {template}
  split: {{val: 2, test: 2, seed: 1}}
"""


def test_template_with_no_labeled_part_is_rejected_when_loaded(project):
    (project / "templates" / "nolabel.jinja").write_text(NO_LABEL)
    with pytest.raises(UserError) as caught:
        templates.load("nolabel")
    message = str(caught.value)
    assert message.startswith("templates/nolabel.jinja: template 'nolabel' renders with every variable set with no "
                              "labeled part, so a recipe using it would train on nothing")
    assert "{% filter labeled %}{{ output }}{{ eos_token }}{% endfilter %}" in message


def test_template_that_labels_only_when_an_optional_variable_is_set_is_rejected(project):
    (project / "templates" / "ifinput.jinja").write_text(LABEL_IF_INPUT)
    with pytest.raises(UserError, match=r"renders with the optional variables \['input'\] left out with no labeled"):
        templates.load("ifinput")


@pytest.mark.parametrize("verb", ["validate", "prepare"])
def test_recipe_with_a_template_that_labels_nothing_exits_2_naming_the_template(project, write_recipe, run_cli, verb):
    (project / "templates" / "nolabel.jinja").write_text(NO_LABEL)
    write_recipe("nolabel-demo", RECIPE.format(name="nolabel-demo", model="models/tiny-llama", template="nolabel"))
    code, out, err = run_cli(verb, "nolabel-demo")
    assert code == 2 and "Traceback" not in err and "ValueError" not in err, err
    assert "recipes/nolabel-demo.yaml:10: data.template: in templates/nolabel.jinja: template 'nolabel' renders " \
           "with every variable set with no labeled part" in err
    assert "{% filter labeled %}" in err


@pytest.mark.model
def test_rows_that_render_with_no_labeled_part_stop_prepare(project, write_recipe, run_cli, tiny_model_dir,
                                                            monkeypatch):
    # The placeholder check passes (it labels when the instruction starts with "<"); real rows do not.
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(project / "cache"))
    (project / "templates" / "odd.jinja").write_text(
        "{#-\nrequires: [instruction, output]\noptional: [input]\n-#}\n{{ instruction }}\n"
        "{% if instruction.startswith('<') %}{% filter labeled %}{{ output }}{% endfilter %}{% else %}{{ output }}"
        "{% endif %}")
    write_recipe("odd-demo", RECIPE.format(name="odd-demo", model=tiny_model_dir, template="odd"))
    assert run_cli("validate", "odd-demo")[0] == 0
    code, out, err = run_cli("prepare", "odd-demo")
    assert code == 2 and "Traceback" not in err, err
    assert "templates/odd.jinja: data.template: a row of " in err
    assert "alpaca-sample.jsonl renders with no labeled part, so it would train on nothing" in err
    assert "{% filter labeled %}" in err
