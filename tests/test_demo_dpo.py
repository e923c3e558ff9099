"""A shortened SFT -> DPO demo through the real SmolLM2-135M-Instruct: the shortened SQL demo trains, the DPO recipe
starts from its run (model.base: run:smollm2-135m-sql-chatml), trains on the project's pairs through axolotl and trl,
and evaluates SmolLM2, the SFT run and the DPO run on the same held-out items.

The full demo's timing and accuracy are benchmark figures (README), not assertions here.
"""
from __future__ import annotations

import shutil

import pytest

import sql_pairs
from runner.core import jsonl
from runner.evaluate.run_suite import evaluate
from runner.recipe import loading, suites
from runner.report.markdown import write_report
from runner.train.launch import train
from tests.helpers import ROOT, SHORT_DEMO

pytestmark = pytest.mark.model
SHORT_DPO = [*SHORT_DEMO, "data.split.val=0"]  # no validation pass: the reward metrics come from training steps


def test_shortened_dpo_demo_starts_from_the_sft_run(session_dirs, tmp_path):
    sft = train(loading.load("smollm2-135m-sql-chatml", SHORT_DEMO))
    data = tmp_path / "sql-demo"  # the on-policy pairs of the SFT run's answers to 12 training questions
    shutil.copytree(ROOT / "data" / "sql-demo", data, ignore=shutil.ignore_patterns(sql_pairs.POLICY_OUT))
    assert sql_pairs.main(["--policy", "--limit", "12", "--data", str(data)]) == 0
    pairs = jsonl.read(data / sql_pairs.POLICY_OUT).rows
    train_rows = {r["question"]: r for r in jsonl.read(data / "train.jsonl").rows[:12]}
    assert pairs and all(train_rows[p["question"]]["answer"] == p["chosen"] != p["rejected"] for p in pairs)
    policy = f"data.datasets.0.source=file:{data / sql_pairs.POLICY_OUT}"
    loaded = loading.load("smollm2-135m-sql-dpo", [*SHORT_DPO, policy])
    run = train(loaded)
    manifest = run.manifest()
    assert manifest.status == "trained" and manifest.train.steps == 2
    assert (manifest.parent.recipe, manifest.parent.run_id) == ("smollm2-135m-sql-chatml", sft.run_id)
    assert manifest.parent.fingerprint == sft.manifest().fingerprint
    assert manifest.data.counts["test"] == 90  # the SFT demo's held-out questions, as supervised rows
    assert manifest.data.counts["train"] == len(pairs)  # every pair is a training pair
    summary = evaluate(run, loaded.recipe, suites.for_recipe(loaded.recipe)).to_json()
    execution = summary["candidates"]["finetuned"]["metrics"]["sql_execution"]
    assert execution["n"] == 4
    report = write_report(run).read_text(encoding="utf-8")
    for label in ("smollm2", "run:smollm2-135m-sql-chatml", "finetuned"):
        assert label in report
    assert f"| parent run | `smollm2-135m-sql-chatml` run `{sft.run_id}`" in report
