"""Eval suite files: the shipped suites validate, and every kind of mistake gets a clear, located message."""
from __future__ import annotations

import textwrap

import pytest

from runner.core.errors import UserError
from runner.recipe import loading, suites


@pytest.fixture
def write_suite(project):
    def write(name: str, text: str):
        path = project / "eval_suites" / f"{name}.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


def _error(name: str) -> str:
    with pytest.raises(UserError) as caught:
        suites.load(name)
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_shipped_suites_are_valid(project):
    assert suites.available() == ["chat-heldout", "general", "heldout-qa", "sql", "sql-ship"]
    assert suites.validate_all() == []
    general = suites.load("general")
    assert general.lm_eval_tasks == ["hellaswag", "arc_easy", "truthfulqa_mc2", "mmlu"]
    assert suites.load("sql").sql.database == "data/sql-demo/{db}.sql"
    ship = suites.load("sql-ship")  # make demo-ship: the q4_k_m file against the fine-tuned model
    assert ship.sql.database == suites.load("sql").sql.database and ship.metrics == suites.load("sql").metrics
    assert ship.gates["sql_execution"].candidate == "export:gguf-q4_k_m"
    chat = suites.load("chat-heldout")
    assert chat.judge.kind == "local" and chat.needs_generation


def test_unknown_key_suggests_the_closest(write_suite):
    write_suite("s", """\
        suite: 1
        version: 1.0.0
        metric: [exact_match]
        """)
    message = _error("s")
    assert "eval_suites/s.yaml:3: metric: unknown key (did you mean metrics?)" in message


def test_unknown_nested_key(write_suite):
    write_suite("s", """\
        suite: 1
        version: 1.0.0
        metrics: [exact_match]
        judge: {kind: local, modle: models/tiny-llama}
        """)
    message = _error("s")
    assert "judge.modle: unknown key (did you mean model?)" in message
    assert "judge.model: required key is missing" in message


def test_unknown_metric(write_suite):
    write_suite("s", """\
        suite: 1
        version: 1.0.0
        metrics: [exact_match, token_f1, rougeL]
        """)
    message = _error("s")
    assert "s.yaml:3: metrics.2: unknown metric 'rougeL' (did you mean rouge_l?)" in message
    assert "available: exact_match, token_f1, bleu, rouge_l, perplexity, sql_execution, sql_exact_match" in message


def test_unknown_lm_eval_task(write_suite):
    write_suite("s", """\
        suite: 1
        version: 1.0.0
        lm_eval_tasks: [arc_easy, hellaswg]
        """)
    message = _error("s")
    assert "lm_eval_tasks.1: unknown lm-eval task 'hellaswg' (did you mean hellaswag?)" in message
    assert "arc_easy" not in message


def test_missing_language_version_and_bad_semver(write_suite):
    write_suite("a", "version: 1.0.0\nmetrics: [bleu]\n")
    assert "suite: missing; a suite starts with `suite: 1`" in _error("a")
    write_suite("b", "suite: 2\nversion: 1.0.0\nmetrics: [bleu]\n")
    assert "eval-suite language version 2 is not supported" in _error("b")
    write_suite("c", "suite: 1\nversion: one\nmetrics: [bleu]\n")
    assert "c.yaml:2: version: 'one' is not a semantic version" in _error("c")


def test_cross_field_checks(write_suite):
    write_suite("a", "suite: 1\nversion: 1.0.0\nmetrics: [sql_execution]\n")
    assert "need an `sql:` section" in _error("a")
    write_suite("b", "suite: 1\nversion: 1.0.0\njudge: {kind: openai, model: gpt-4o-mini}\n")
    assert "judge.kind openai needs judge.url" in _error("b")
    write_suite("c", "suite: 1\nversion: 1.0.0\n")
    assert "the suite measures nothing" in _error("c")
    write_suite("d", "suite: 1\nname: other\nversion: 1.0.0\nmetrics: [bleu]\n")
    assert "d.yaml:2: name: 'other' differs from the file name 'd'" in _error("d")
    write_suite("e", "suite: 1\nversion: 1.0.0\nmetrics: [bleu, bleu]\n")
    assert "lists bleu more than once" in _error("e")


def test_unknown_suite_name_lists_the_suites(project):
    message = _error("heldout")
    assert "unknown eval suite 'heldout' (did you mean heldout-qa?)" in message
    assert "available: chat-heldout, general, heldout-qa, sql" in message


def test_recipe_naming_an_unknown_suite(project, run_cli):
    code, out, err = run_cli("show", "tiny-cpu", "eval.suite=chat-heldot")
    assert code == 2
    assert "eval.suite: unknown eval suite 'chat-heldot' (did you mean chat-heldout?)" in err
    assert suites.for_recipe(loading.load("tiny-cpu").recipe).name == suites.DEFAULT_SUITE


def test_validate_all_collects_every_file(write_suite):
    write_suite("bad1", "suite: 1\nversion: 1.0.0\nmetrics: [nope]\n")
    write_suite("bad2", "suite: 1\nversion: 1.0.0\nextra: 1\nmetrics: [bleu]\n")
    problems = suites.validate_all()
    assert sorted(p.file.split("/")[-1] for p in problems) == ["bad1.yaml", "bad2.yaml"]
