"""`recipe serve`: the recipe's template as a chat template (the same text as training), stop strings cut from
answers, the vLLM script for GPU plans, and a real server (transformers serve, in a subprocess) answering the
official `openai` client exactly as `recipe generate` answers."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from transformers.utils.chat_parsing import ResponseParser, parse_response
from transformers.utils.chat_template_utils import render_jinja_template

from runner.evaluate.generate import render_prompt
from runner.metrics.registry import clean_generation
from runner.recipe import chat_template, loading, templates
from runner.train import vllm
from tests.helpers import free_port, stop_process, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
TOKENS = templates.TokenizerTokens(bos_token="<s>", eos_token="</s>")
SHIPPED = ("alpaca", "chatml", "falcon-instruct", "qa")
QUESTIONS = ("What is 2+2?", 'two\nlines, {{ braces }} and "quotes"  ')


def _recipe(template: str, system: str | None, name: str = "tiny-cpu"):
    recipe = loading.load(name).recipe
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"template": template, "system": system})})


def _chat(template_text: str, messages: list[dict], generation: bool = True, tokens=TOKENS) -> str:
    """What apply_chat_template renders (transformers' own renderer, with the tokenizer's BOS/EOS as it passes them)."""
    special = {k: v for k, v in (("bos_token", tokens.bos_token), ("eos_token", tokens.eos_token)) if v}
    rendered, _ = render_jinja_template([messages], chat_template=template_text, add_generation_prompt=generation,
                                        **special)
    return rendered[0]


@pytest.mark.parametrize("system", [None, "Answer briefly."])
@pytest.mark.parametrize("name", SHIPPED)
def test_a_chat_renders_as_the_recipe_template_renders_a_prompt(name, system):
    recipe = _recipe(name, system)
    text = chat_template.chat_template(recipe)
    for tokens in (TOKENS, templates.TokenizerTokens()):  # a tokenizer without BOS/EOS too
        for question in QUESTIONS:
            assert _chat(text, [{"role": "user", "content": question}], tokens=tokens) == \
                render_prompt(recipe, question, tokens)


def test_a_system_message_replaces_the_recipe_system_prompt():
    recipe = _recipe("chatml", "Recipe default.")
    text = chat_template.chat_template(recipe)
    chat = _chat(text, [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}])
    assert chat == render_prompt(_recipe("chatml", "Be terse."), "Hi", TOKENS)
    assert "Recipe default." not in chat


def test_multi_turn_chats_render_as_training_data_does():
    template = templates.load("chatml")
    text = chat_template.chat_template(_recipe("chatml", "Sys."))
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    prompt = templates.prompt_and_reference(templates.render(
        template, {"messages": [*turns, {"role": "assistant", "content": ""}], "system": "Sys."}, TOKENS))[0]
    assert _chat(text, turns) == prompt
    whole = [*turns, {"role": "assistant", "content": "d"}]
    assert _chat(text, whole, generation=False) == "".join(
        s.text for s in templates.render(template, {"messages": whole, "system": "Sys."}, TOKENS))
    # an instruction template sees the last question
    alpaca = _recipe("alpaca", None)
    assert _chat(chat_template.chat_template(alpaca), turns) == render_prompt(alpaca, "c", TOKENS)


def test_a_chat_without_a_user_message_is_refused():
    with pytest.raises(jinja2.TemplateError, match="no user message"):
        _chat(chat_template.chat_template(_recipe("alpaca", None)), [{"role": "system", "content": "x"}])


def test_other_filter_blocks_inside_a_template_keep_working(project):
    (project / "templates" / "shout.jinja").write_text(
        "{#-\nrequires: [instruction, output]\nstop: [\"Q:\"]\n-#}\n"
        "{{ bos_token }}Q: {% filter upper %}{{ instruction }}{% endfilter %}\n\n"
        "A:{%- filter labeled -%} {% filter trim %} {{ output }} {% endfilter %}{{ eos_token }}{%- endfilter %}\n",
        encoding="utf-8")
    recipe = _recipe("shout", None)
    assert _chat(chat_template.chat_template(recipe), [{"role": "user", "content": "hi"}]) == \
        render_prompt(recipe, "hi", TOKENS) == "<s>Q: HI\nA:"


def test_the_tokenizer_template_keeps_the_model_template_with_the_system_prompt():
    model_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                      "{% if add_generation_prompt %}<assistant>{% endif %}")
    recipe = _recipe("tokenizer", "Sys.")
    tokens = templates.TokenizerTokens("<s>", "</s>", model_template)
    text = chat_template.chat_template(recipe, model_template)
    assert _chat(text, [{"role": "user", "content": "q"}]) == render_prompt(recipe, "q", tokens) == \
        "<system>Sys.<user>q<assistant>"
    assert chat_template.chat_template(_recipe("tokenizer", None), model_template) == model_template


@pytest.mark.parametrize("generated", ["SELECT 1;### Instruction: next", "  an answer </s>", "no stop at all \n",
                                       "### Instruction:", "half ### Instr"])
def test_the_response_template_cuts_answers_as_generate_does(generated):
    stop = ["### Instruction:", "</s>"]
    spec = chat_template.response_template(stop)
    assert parse_response(generated, spec, prefix="").get("content", "") == clean_generation(generated, stop)
    parser = ResponseParser(spec, prefix="")  # streamed a few characters at a time, as a server streams
    events = [e for i in range(0, len(generated), 3) for e in parser.feed(generated[i:i + 3])]
    events += parser.finalize()[1]
    streamed = "".join(e["text"] for e in events if e["type"] == "region_chunk" and e["field"] == "content")
    assert streamed.strip() == clean_generation(generated, stop)


def test_gpu_plans_write_a_vllm_script_that_bash_accepts(tmp_path):
    lora = loading.load("gemma7b-dolly-chatml").recipe
    files = vllm.files(lora, lora.model.base)
    script = files[vllm.SCRIPT]
    assert "exec vllm serve google/gemma-7b --enable-lora --lora-modules gemma7b-dolly-chatml=model" in script
    assert "--chat-template chat_template.jinja" in script and '"stop": ["<|im_end|>"]' in script
    assert files[vllm.CHAT_TEMPLATE] == chat_template.chat_template(lora)
    (tmp_path / "serve.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "serve.sh")], capture_output=True).returncode == 0
    full = loading.load("gemma7b-dolly-chatml", ["method.kind=full", "method.lora=null"]).recipe
    assert "exec vllm serve model --served-model-name gemma7b-dolly-chatml" in vllm.serve_script(full, "x")
    assert "--enable-lora" not in vllm.serve_script(full, "x")
    assert vllm.files(loading.load("tiny-cpu").recipe, "models/tiny-llama") == {}  # CPU: `recipe serve` serves it


def test_recipe_plan_writes_the_vllm_script_into_the_run(project, run_cli):
    code, out, err = run_cli("plan", "gemma7b-dolly-chatml")
    assert code == 0, err
    run = project / "runs" / "gemma7b-dolly-chatml" / Path(out.splitlines()[0].rstrip(":")).name
    assert os.access(run / "serve.sh", os.X_OK) and (run / "chat_template.jinja").is_file()
    assert "  serve.sh" in out


@pytest.mark.model
def test_serving_a_run_without_a_model_is_exit_2(project, run_cli):
    code, out, _ = run_cli("plan", "tiny-cpu")
    assert code == 0
    run_id = Path(out.splitlines()[0].removeprefix("planned ").rstrip(":")).name
    code, _, err = run_cli("serve", "tiny-cpu", "--run", run_id, "--port", "0")
    assert code == 2
    assert "no trained model" in err and "recipe train tiny-cpu" in err and "Traceback" not in err


@pytest.mark.model
def test_a_merged_run_is_served_from_its_merged_model(own_trained_run):
    from runner.models.merge import merge
    from runner.serve import folder

    merged = merge(own_trained_run)
    served = folder.prepare(own_trained_run)
    assert served.source == "merged" and (served.folder / "config.json").resolve() == merged / "config.json"
    assert (served.folder / "model.safetensors").resolve() == merged / "model.safetensors"
    assert not (served.folder / "adapter_config.json").exists()


@pytest.mark.model
def test_a_port_in_use_is_exit_2_naming_it(own_trained_run, run_cli):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli("serve", "tiny-cpu", "--port", str(port))
    assert code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err and "Traceback" not in err


@pytest.mark.model
def test_a_model_that_cannot_load_is_exit_2(own_trained_run, run_cli):
    (own_trained_run.file("model", "adapter_model.safetensors")).write_bytes(b"not safetensors")
    code, _, err = run_cli("serve", "tiny-cpu", "--port", "0")
    assert code == 2
    assert "cannot load the model" in err and "serve" in err and "Traceback" not in err


@pytest.mark.model
def test_the_server_answers_the_openai_client_as_generate_does(own_trained_run):
    import openai

    from runner.evaluate.generate import generate

    question, limit = "Name a colour.", 16
    expected = generate(own_trained_run, [question], max_new_tokens=limit)[0]["finetuned"]
    assert expected  # a non-empty answer, so the comparison below says something
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "runner", "serve", "tiny-cpu", "--port", str(port)], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(process, url)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == ["tiny-cpu"]
        chat = [{"role": "user", "content": question}]
        answer = client.chat.completions.create(model="tiny-cpu", messages=chat, temperature=0, max_tokens=limit)
        assert answer.choices[0].message.content == expected
        chunks = list(client.chat.completions.create(model="tiny-cpu", messages=chat, temperature=0,
                                                     max_tokens=limit, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == expected
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="tiny-cpu", messages=[{"role": "user", "content": "word " * 600}])
        assert refused.value.status_code == 400 and "the model's context is 512 tokens" in refused.value.message
        with pytest.raises(openai.BadRequestError, match="ask for at most"):
            client.chat.completions.create(model="tiny-cpu", messages=chat, max_tokens=600)
        # a caller's stop string ends the answer before it, as OpenAI's API does, whole, streamed and as a completion
        # the first character seen for the first time after the start; an answer of one repeated character
        # ("aaaa") has none, and then the stop string is its first character and the answer is empty
        cut = next((i for i, c in enumerate(expected) if i and not c.isspace() and expected.index(c) == i), 0)
        stop, before = expected[cut], expected[:cut]
        stopped = client.chat.completions.create(model="tiny-cpu", messages=chat, temperature=0, max_tokens=limit,
                                                 stop=[stop])
        assert stopped.choices[0].message.content == before and stopped.choices[0].finish_reason == "stop"
        streamed = list(client.chat.completions.create(model="tiny-cpu", messages=chat, temperature=0,
                                                       max_tokens=limit, stop=stop, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in streamed).strip() == before.strip()
        rendered = render_prompt(own_trained_run.recipe(), question, TOKENS)
        completed = client.completions.create(model="tiny-cpu", prompt=rendered, temperature=0, max_tokens=limit,
                                              stop=[stop])
        assert completed.choices[0].text.strip() == before.strip()
        completion = client.completions.create(model="tiny-cpu", prompt=rendered, temperature=0, max_tokens=4)
        assert completion.usage.completion_tokens <= 4 and process.poll() is None  # still up after the 400
    finally:
        stop_process(process)
    served = own_trained_run.file("serve")  # the adapter on its base model, the recipe's template as chat template
    adapter = "adapter_model.safetensors"
    assert (served / adapter).resolve() == own_trained_run.file("model", adapter)
    assert (served / "chat_template.jinja").read_text() == chat_template.chat_template(own_trained_run.recipe())
    generation = json.loads((served / "generation_config.json").read_text())
    assert generation["stop_strings"] == own_trained_run.manifest().stop == ["### Instruction:", "</s>"]
