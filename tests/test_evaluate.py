"""The eval stage end to end on the tiny model: real lm-eval, transformers and peft, no mocks.

One module-scoped run directory is built by hand (tiny Llama, tiny-cpu's prepared data, an untrained
but non-zero LoRA adapter saved by peft) and evaluated once; the other tests read what that wrote, and those
that write into the run (task files, judge.json) get their own copy of it (own_evaluated).
"""
from __future__ import annotations

import http.server
import json
import os
import socket
import textwrap
import threading
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub/datasets at import time
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from runner.core.errors import UserError
from runner.evaluate import generate, run_suite, task_hooks, tasks
from runner.evaluate.judge_run import judge_run
from runner.evaluate.scoring import format_summary
from runner.recipe import loading, suites
from runner.runs.eval_summary import EvalSummary
from tests.helpers import EVAL_OVERRIDES, ChatCompletionsHandler, make_eval_run, offline_workspace

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ["exact_match", "token_f1", "bleu", "rouge_l", "perplexity"]
MC_ROWS = [("What color is the sky on a clear day?", ["blue", "green", "red"], 0),
           ("How many legs does a cat have?", ["two", "four", "six"], 1),
           ("Which is a fruit?", ["carrot", "potato", "apple"], 2),
           ("What do bees make?", ["honey", "milk", "silk"], 0)]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A throw-away project (recipes, templates, suites; data and the tiny model linked), offline."""
    with offline_workspace(tmp_path_factory.mktemp("project"), {"test-chat": """\
            suite: 1
            version: 0.1.0
            metrics: [exact_match, token_f1, bleu, rouge_l, perplexity]
            judge: {kind: local, model: models/tiny-llama, max_items: 2, max_new_tokens: 8}
            """}) as root:
        yield root


@pytest.fixture(scope="module")
def evaluated(project):
    """The tiny run evaluated once on the test-chat suite (held-out metrics + a local tiny judge)."""
    run, recipe = make_eval_run()
    summary = run_suite.evaluate(run, recipe, suites.load("test-chat"))
    return run, recipe, summary.to_json()


@pytest.fixture
def own_evaluated(evaluated, own_run):
    """`evaluated` with a private copy of its run, for a test that writes into it (eval/tasks/, eval/judge.json)."""
    run, recipe, summary = evaluated
    return own_run(run), recipe, summary


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.model
def test_generated_task_yamls_load_in_lm_eval_task_manager(own_evaluated):
    from lm_eval.tasks import TaskManager

    run, recipe, _ = own_evaluated
    held = tasks.write_tasks(run, recipe, suites.load("heldout-qa"))
    assert held.names == [tasks.GENERATE_TASK, tasks.PERPLEXITY_TASK]
    assert (held.n_items, held.limit) == (6, 6)
    assert not set(held.names) & suites.builtin_task_names()  # never shadowed by one of lm-eval's own tasks
    data_file = held.dir / tasks.ITEMS_FILE
    assert f"test: {data_file.resolve()}" in (held.dir / f"{tasks.GENERATE_TASK}.yaml").read_text()

    manager = TaskManager(include_path=str(held.dir), include_defaults=False)
    loaded = manager.load_task_or_group(held.names)
    gen, ppl = loaded[tasks.GENERATE_TASK], loaded[tasks.PERPLEXITY_TASK]
    test_rows = _read_jsonl(run.file("data", "test.jsonl"))
    doc = gen.eval_docs[0]
    assert gen.OUTPUT_TYPE == "generate_until" and ppl.OUTPUT_TYPE == "loglikelihood"
    assert len(gen.eval_docs) == len(test_rows)
    # the prompt exactly as rendered for training: no delimiter added, trailing newline kept
    assert gen.fewshot_context(doc, num_fewshot=0) == test_rows[0]["prompt"]
    assert gen.doc_to_target(doc) == test_rows[0]["reference"]
    assert gen.config.generation_kwargs == {"until": ["### Instruction:", "</s>"], "max_gen_toks": 12,
                                            "do_sample": False}
    scored = gen.process_results(doc, [f" {test_rows[0]['reference']}</s> ### Instruction: more"])
    assert scored["prediction"] == test_rows[0]["reference"]
    assert scored["exact_match"] == 1.0 and scored["token_f1"] == 1.0
    assert ppl.process_results(doc, [(-3.0, False)]) == {"perplexity": (-3.0, doc["n_tokens"])}


@pytest.mark.model
def test_evaluate_writes_summary_for_base_and_finetuned(evaluated):
    run, _, summary = evaluated
    assert json.loads(run.file("eval", "summary.json").read_text()) == summary
    assert summary["suite"] == "test-chat" and summary["suite_version"] == "0.1.0"
    assert summary["n_items"] == 6 and summary["skipped"] == {}
    versus_base = EvalSummary.model_validate(summary).versus_base()  # fine-tuned (value) against base (reference)
    assert sorted(versus_base) == sorted(HELDOUT) and list(summary["candidates"]) == ["base", "finetuned"]
    for name, metric in versus_base.items():
        assert metric.n == 6, name
        for key in ("reference", "value", "delta", "p_sign"):
            assert isinstance(getattr(metric, key), float), (name, key)
        assert metric.delta == pytest.approx(metric.value - metric.reference, abs=1e-5)
        assert metric.ci95[0] <= metric.delta <= metric.ci95[1] or metric.ci95[0] == metric.ci95[1]
    ppl = versus_base["perplexity"]
    assert ppl.reference > 1 and ppl.value > 1 and ppl.reference != ppl.value

    results = json.loads(run.file("eval", "results-finetuned.json").read_text())["heldout"]
    assert results["results"][tasks.PERPLEXITY_TASK]["perplexity,none"] == pytest.approx(ppl.value)
    assert results["config"]["model_args"]["peft"] == str(run.file("model"))
    for task in (tasks.GENERATE_TASK, tasks.PERPLEXITY_TASK):
        base, ft = (_read_jsonl(run.file("eval", f"samples-{m}-{task}.jsonl")) for m in ("base", "finetuned"))
        assert [r["doc_id"] for r in base] == [r["doc_id"] for r in ft] == list(range(6))
        assert [r["prompt"] for r in base] == [r["prompt"] for r in ft]
    sample = _read_jsonl(run.file("eval", f"samples-finetuned-{tasks.GENERATE_TASK}.jsonl"))[0]
    assert set(sample) == {"doc_id", "prompt", "reference", "prediction", "scores"}
    assert "</s>" not in sample["prediction"] and set(sample["scores"]) == set(HELDOUT) - {"perplexity"}

    table = format_summary(EvalSummary.model_validate(summary))
    assert "perplexity" in table and "judge (local models/tiny-llama): fine-tuned" in table

    manifest = run.manifest()
    assert manifest.status == "evaluated" and manifest.eval.suite == "test-chat"
    assert {"eval_s", "eval_base_s", "eval_finetuned_s", "judge_s", "train_s"} <= set(manifest.timings)


@pytest.mark.model
def test_local_judge_end_to_end(evaluated):
    run, _, summary = evaluated
    judge = EvalSummary.model_validate(summary).judge_versus_base()
    assert judge.skipped is None, judge
    assert judge.n == 2 and judge.wins + judge.ties + judge.losses == 2
    written = json.loads(run.file("eval", "judge.json").read_text())
    [pair] = written["pairs"]
    assert written["version"] == 2 and "items" not in written  # version 1's fine-tuned-vs-base copy is gone
    assert [i["doc_id"] for i in pair["items"]] == [0, 1]
    assert all(len(i["raw"]) == 2 and i["outcome"] in ("win", "tie", "loss") for i in pair["items"])


class _Judge(ChatCompletionsHandler):
    """An OpenAI-compatible /chat/completions that answers [[B]], [[A]], [[B]]...: the fine-tuned model wins
    in both orders (judge_pair asks base-first, then fine-tuned-first)."""

    calls: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.calls.append((self.path, self.headers.get("Authorization"), body))
        verdict = "[[B]]" if len(_Judge.calls) % 2 else "[[A]]"
        self.reply(f"Reasons.\n{verdict}")


def _suite(judge: dict) -> suites.Suite:
    return suites.Suite.model_validate({"suite": 1, "name": "j", "version": "1.0.0", "metrics": ["bleu"],
                                        "judge": judge})


@pytest.mark.model
def test_openai_compatible_judge(own_evaluated, monkeypatch):
    run, recipe, _ = own_evaluated
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Judge.calls.clear()
    try:
        judges = judge_run(run, recipe, _suite({
            "kind": "openai", "model": "judge-1", "url": f"http://127.0.0.1:{server.server_port}/v1",
            "api_key_env": "TEST_JUDGE_KEY", "max_items": 3}))
    finally:
        server.shutdown()
        server.server_close()
    result = EvalSummary(suite="j", suite_version="1.0.0", n_items=3, judges=judges).judge_versus_base()
    assert result.wins == 3 and result.n == 3 and result.win_rate == 1.0
    assert [(p.a, p.b, p.wins, p.position_bias, p.unparseable) for p in judges.pairs] == [
        ("finetuned", "base", 3, 0, 0)]
    assert len(_Judge.calls) == 6
    path, auth, body = _Judge.calls[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test-123" and body["model"] == "judge-1"
    assert "Find a rhyming word" in body["messages"][1]["content"]  # the row's instruction, not the template
    written = run.file("eval", "judge.json").read_text()
    assert '"outcome": "win"' in written and "sk-test-123" not in written


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.model
@pytest.mark.parametrize("judge, reason", [
    ({"kind": "openai", "model": "m", "url": f"http://127.0.0.1:{_closed_port()}/v1"}, "is unreachable"),
    ({"kind": "local", "model": "models/no-such-judge"}, "does not exist"),
])
def test_unavailable_judge_is_skipped_not_a_crash(own_evaluated, judge, reason):
    run, recipe, _ = own_evaluated
    result = judge_run(run, recipe, _suite(judge))
    assert reason in result.skipped
    assert json.loads(run.file("eval", "judge.json").read_text())["skipped"] == result.skipped


@pytest.fixture(scope="module")
def standard_eval(project):
    """A suite with an lm-eval task offline (arc_easy) and a local multiple-choice task in lm-eval's format."""
    folder = project / "lm_tasks"
    folder.mkdir()
    with (folder / "mc.jsonl").open("w") as handle:
        for question, choices, label in MC_ROWS:
            handle.write(json.dumps({"question": question, "choices": choices, "label": label}) + "\n")
    (folder / "demo_mc.yaml").write_text(textwrap.dedent(f"""\
        task: demo_mc
        dataset_path: json
        dataset_kwargs: {{data_files: {{test: {folder / 'mc.jsonl'}}}}}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
        doc_to_choice: choices
        doc_to_target: label
        metric_list:
          - {{metric: acc, aggregation: mean, higher_is_better: true}}
        """))
    (project / "eval_suites" / "test-standard.yaml").write_text(
        "suite: 1\nversion: 1.0.0\nlm_eval_tasks: [arc_easy, demo_mc]\nlm_eval_include: [lm_tasks]\n")
    run, recipe = make_eval_run()
    return run, run_suite.evaluate(run, recipe, suites.load("test-standard")).to_json()


@pytest.mark.model
def test_local_multiple_choice_task_runs_through_the_runner(standard_eval):
    run, summary = standard_eval
    acc = EvalSummary.model_validate(summary).versus_base()["demo_mc/acc"]
    assert acc.n == len(MC_ROWS) and 0 <= acc.reference <= 1 and 0 <= acc.value <= 1
    results = json.loads(run.file("eval", "results-base.json").read_text())["standard"]["results"]
    assert results["demo_mc"]["acc,none"] == pytest.approx(acc.reference)
    rows = _read_jsonl(run.file("eval", "samples-base-demo_mc.jsonl"))
    assert rows[0]["prompt"] == "Question: What color is the sky on a clear day?\nAnswer:"
    assert rows[0]["scores"] == {"acc": rows[0]["scores"]["acc"]}


@pytest.mark.model
def test_offline_standard_task_is_skipped_with_its_reason(standard_eval):
    run, summary = standard_eval
    assert set(summary["skipped"]) == {"arc_easy"}
    assert "could not be loaded" in summary["skipped"]["arc_easy"]
    assert "allenai/ai2_arc" in summary["skipped"]["arc_easy"]
    assert not any(name.startswith("arc_easy") for c in summary["candidates"].values() for name in c["metrics"])
    assert summary["judges"] is None and summary["n_items"] == 0  # skipped, never a zero


@pytest.mark.model
def test_run_without_a_trained_model_says_train_it_first(project):
    run, recipe = make_eval_run(adapter=False)
    with pytest.raises(UserError) as caught:
        run_suite.evaluate(run, recipe, suites.load("heldout-qa"))
    assert caught.value.exit_code == 2
    assert "no trained model in" in str(caught.value) and "train it first: recipe train tiny-cpu" in str(caught.value)
    assert run.manifest().status == "trained"  # a refused eval does not mark the run failed


@pytest.mark.model
def test_a_run_still_training_has_no_trained_model_though_axolotl_wrote_its_configs(project):
    """axolotl writes model/adapter_config.json and config.json when training starts; the weights come at the end."""
    run, _ = make_eval_run(adapter=True)
    run.file("model", "adapter_model.safetensors").unlink()
    (run.file("model") / "checkpoint-25").mkdir()
    assert run.file("model", "adapter_config.json").is_file()
    with pytest.raises(UserError, match="no trained model in"):
        run.trained()


@pytest.mark.model
def test_generate_refuses_an_untrained_run_before_generating(project, monkeypatch):
    from runner.evaluate import generate

    run, _ = make_eval_run(adapter=False)
    generated = []
    monkeypatch.setattr(generate, "_generate_all", lambda *args: generated.append(args) or ["x"])
    with pytest.raises(UserError, match="no trained model in"):
        generate.generate(run, ["How many heads?"])
    assert generated == []  # refused before the base model answered anything


@pytest.mark.model
def test_merge_with_a_missing_base_model_is_a_clear_error(project):
    from runner.models.merge import merge

    run, _ = make_eval_run(adapter=True)
    run.update(base_model_dir=str(project / "models" / "gone"))
    with pytest.raises(UserError, match="base model .* not found"):
        merge(run)


@pytest.mark.model
def test_unknown_suite_in_the_recipe_fails_before_any_work(project):
    with pytest.raises(UserError) as caught:  # rejected when the recipe loads, before any evaluation
        loading.load("tiny-cpu", [*EVAL_OVERRIDES, "eval.suite=heldout"])
    message = str(caught.value)
    assert "eval.suite: unknown eval suite 'heldout' (did you mean heldout-qa?)" in message
    assert "available: chat-heldout, general, heldout-qa, sql" in message


@pytest.mark.model
def test_sql_metrics_score_by_execution(project):
    database = str(project / "data" / "sql-demo" / "{db}.sql")
    score = task_hooks.generation_scorer(["sql_execution", "sql_exact_match"], ["</s>"], database)
    doc = {"reference": "SELECT name FROM customers WHERE city = 'Vienna'", "db": "shop"}
    same_rows = score(doc, ["SELECT name FROM customers WHERE 'Vienna' = city</s>junk"])
    assert same_rows == {"sql_execution": 1.0, "sql_exact_match": 0.0,
                         "prediction": "SELECT name FROM customers WHERE 'Vienna' = city"}
    assert score(doc, ["select NAME from customers where city = 'Vienna';"])["sql_exact_match"] == 1.0
    assert score(doc, ["DROP TABLE customers"])["sql_execution"] == 0.0


@pytest.mark.model
def test_generate_answers_with_both_models(evaluated):
    run, recipe, _ = evaluated
    results = generate.generate(run, ["Name three colors.", "What is 2 + 2?"], max_new_tokens=8)
    assert [r["prompt"] for r in results] == ["Name three colors.", "What is 2 + 2?"]
    assert results[0]["rendered"].endswith("### Instruction:\nName three colors.\n\n### Response:\n")
    for result in results:
        assert isinstance(result["base"], str) and isinstance(result["finetuned"], str)
        assert "</s>" not in result["base"] + result["finetuned"]
    assert [r["base"] for r in results] != [r["finetuned"] for r in results]
    table = generate.format_side_by_side(results, width=60)
    assert "> Name three colors." in table and "fine-tuned" in table


@pytest.mark.model
def test_stop_strings_that_are_one_token_stop_by_id_and_the_rest_by_the_string_matcher(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert generate._stopping(tokenizer, ["<|im_end|>", "</s>"]) == {
        "eos_token_id": sorted({end, tokenizer.eos_token_id})}
    assert generate._stopping(tokenizer, ["</s>", "### Instruction"]) == {
        "stop_strings": ["</s>", "### Instruction"], "tokenizer": tokenizer}


@pytest.mark.model
def test_batched_greedy_answers_equal_one_at_a_time(tiny_model_dir):
    """Left padding: prompts of different lengths answer in one batch as they answer alone (float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = ["<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nWhat is the capital of France, and why is it there?<|im_end|>\n"
               "<|im_start|>assistant\n", "### Instruction:\nAdd 2 and 2.\n\n### Response:\n"]
    side = tokenizer.padding_side
    alone = [generate._generate_all(model, tokenizer, [p], ["<|im_end|>"], 12)[0] for p in prompts]
    batched = generate._generate_all(model, tokenizer, prompts, ["<|im_end|>"], 12, batch_size=3)
    assert batched == alone and len(set(alone)) > 1
    assert tokenizer.padding_side == side  # restored for whoever uses the tokenizer next
