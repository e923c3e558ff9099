"""The run report: golden markdown for a finished run, real PNGs, partial and failed runs, table escaping.

Regenerate the golden report with `make golden` (UPDATE_GOLDEN=1) and review the diff.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from matplotlib import image
from PIL import Image

from runner.core.errors import UserError
from runner.report import cells, markdown
from runner.runs.eval_summary import CandidateMetric
from runner.runs.records import SampleRow
from runner.runs.rundir import RunDir
from tests.helpers import MANIFEST, RUN_ID, build_run, jsonl_text, metrics_lines, write_file

GOLDEN = Path(__file__).parent / "golden" / "report" / "report.md"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> RunDir:
    run = build_run(tmp_path_factory.mktemp("runs") / RUN_ID)
    markdown.write_report(run)
    return run


def test_golden_report(finished):
    text = finished.file("report.md").read_text(encoding="utf-8")
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert GOLDEN.read_text(encoding="utf-8") == text, "report.md changed: review, then `make golden`"


def test_report_links_every_plot_it_wrote(finished):
    text = finished.file("report.md").read_text(encoding="utf-8")
    pngs = sorted(p.name for p in finished.file("plots").glob("*.png"))
    assert pngs == ["eval.png", "loss.png", "lr.png"]
    assert sorted(re.findall(r"\]\(plots/([^)]+)\)", text)) == pngs
    assert not list(finished.path.rglob(".*.tmp")), "temp files left behind"


@pytest.mark.parametrize("name", ["loss", "lr", "eval"])
def test_plots_are_real_pngs(finished, name):
    path = finished.file("plots", f"{name}.png")
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert 300 <= img.width <= 2000 and 150 <= img.height <= 1500
        assert "Software" not in img.info
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.std() > 0.05, "a blank image"


def test_same_inputs_same_bytes(tmp_path):
    first, second = build_run(tmp_path / "a" / RUN_ID), build_run(tmp_path / "b" / RUN_ID)
    markdown.write_report(first)
    markdown.write_report(second)
    for name in ("report.md", "plots/loss.png", "plots/lr.png", "plots/eval.png"):
        assert first.file(name).read_bytes() == second.file(name).read_bytes(), name


def test_failed_partial_run_says_what_failed_and_what_is_missing(tmp_path):
    manifest = {k: v for k, v in MANIFEST.items() if k not in ("train", "timings")}
    manifest |= {"status": "failed", "error": {
        "stage": "train", "message": "CUDA out of memory | step 13",
        "log_tail": ["step 12 loss 0.91", "```", "RuntimeError: CUDA out of memory"]}}
    run = build_run(tmp_path / RUN_ID, manifest, evaluated=False)
    lines = metrics_lines()[:13]  # steps 1-12 and the eval at step 10
    write_file(run.file("metrics.jsonl"), jsonl_text(lines) + '{"step": 13, "lo')  # killed mid-write
    text = markdown.write_report(run).read_text(encoding="utf-8")
    assert "· failed" in text.splitlines()[0]
    assert "## Failure\n\nStage `train` failed: CUDA out of memory \\| step 13" in text
    assert "````\nstep 12 loss 0.91\n```\nRuntimeError: CUDA out of memory\n````" in text
    missing = text.split("## Missing", 1)[1].split("\n## ", 1)[0]
    for expected in ("`eval/summary.json` (written by `recipe eval`)", "`train.steps`", "`timings.train_s`",
                     "`metrics.jsonl`: 1 unreadable line(s) skipped"):
        assert expected in missing
    assert (f"_Not evaluated: no readable `eval/summary.json`; run `recipe eval mistral7b-text-to-sql "
            f"--run {RUN_ID}`._") in text
    assert "the last is step 12" in text
    assert sorted(p.name for p in run.file("plots").glob("*.png")) == ["loss.png", "lr.png"]


def test_a_manifest_that_no_writer_writes_is_a_clear_error(tmp_path):
    write_file(tmp_path / "r1" / "manifest.json", json.dumps(MANIFEST | {"version": 1, "train": {"params": 7}}))
    with pytest.raises(UserError) as caught:
        markdown.write_report(RunDir(tmp_path / "r1"))
    assert "manifest.json: train.params: unknown key" in str(caught.value)
    assert not (tmp_path / "r1" / "report.md").exists()


def test_a_manifest_from_a_newer_runner_is_a_clear_error(tmp_path):
    write_file(tmp_path / "r3" / "manifest.json", json.dumps(MANIFEST | {"version": 9}))
    with pytest.raises(UserError, match="Manifest version 9 is newer than this recipe-runner"):
        markdown.write_report(RunDir(tmp_path / "r3"))


def test_an_unversioned_manifest_is_migrated(tmp_path):
    old = {k: v for k, v in MANIFEST.items() if k != "data"} | {"status": "prepared", "stop": ["</s>"]}
    write_file(tmp_path / "r4" / "manifest.json", json.dumps(old))
    text = markdown.write_report(RunDir(tmp_path / "r4")).read_text(encoding="utf-8")
    assert "· planned" in text.splitlines()[0]


def test_unreadable_manifest_is_a_user_error(tmp_path):
    write_file(tmp_path / "r2" / "manifest.json", '{"status": ')
    with pytest.raises(UserError, match="manifest.json: not valid JSON"):
        markdown.write_report(RunDir(tmp_path / "r2"))


def test_sample_cells_escape_pipes_newlines_and_html(finished):
    assert cells.cell("a | b\nc <|im_end|> *x*", 0) == "a \\| b<br>c &lt;\\|im\\_end\\|&gt; \\*x\\*"
    text = finished.file("report.md").read_text(encoding="utf-8")
    samples = text.split("## Samples", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in samples.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + markdown.SAMPLES_SHOWN
    for row in rows:  # five columns: no stray pipe or newline splits a cell
        assert len(re.split(r"(?<!\\)\|", row)) == 7, row
    assert "first \\|\\| ' ' \\|\\| last<br>FROM customers" in samples


def test_long_text_is_cut_in_the_middle():
    text = "BEGIN " + "x" * 1000 + " END"
    cell = cells.cell(text)
    assert cell.startswith("BEGIN") and cell.endswith("END") and "characters cut" in cell
    assert len(cell) < cells.CELL_CHARS + 40


@pytest.mark.parametrize("name, metric, verdict", [
    ("exact_match", {"delta": 0.1, "ci95": [0.02, 0.2]}, "better, interval excludes 0"),
    ("exact_match", {"delta": -0.1, "ci95": [-0.2, -0.02]}, "worse, interval excludes 0"),
    ("bleu", {"delta": 0.01, "ci95": [-0.01, 0.03]}, "within noise"),
    ("perplexity", {"delta": -2.0, "ci95": [-3.0, -1.0]}, "better, interval excludes 0"),
    ("score", {"delta": -0.3, "ci95": [-0.5, -0.1], "higher_is_better": False}, "better, interval excludes 0"),
    ("exact_match", {"delta": 0.1, "ci95": None, "p_sign": 0.01}, "better, sign test p < 0.05"),
    ("exact_match", {"delta": 0.1, "ci95": None, "p_sign": 0.4}, "within noise (sign test)"),
])
def test_verdict_in_plain_words(name, metric, verdict):
    assert markdown._verdict(name, CandidateMetric(**metric)) == verdict


def test_golden_copy_is_not_tied_to_the_run_folder(tmp_path, finished):
    moved = Path(shutil.copytree(finished.path, tmp_path / "elsewhere"))
    text = markdown.write_report(RunDir(moved)).read_text(encoding="utf-8")
    assert text == finished.file("report.md").read_text(encoding="utf-8")


def test_damaged_eval_files_still_give_a_report(tmp_path):
    run = build_run(tmp_path / "odd", evaluated=False)
    write_file(run.file("eval", "summary.json"), json.dumps({"version": 1, "metrics": {"f1": "high"}}))
    write_file(run.file("eval", "samples-base-t.jsonl"), '{"doc_id": [1], "prediction": null}\n[1, 2]\n')
    text = markdown.write_report(run).read_text(encoding="utf-8")
    assert "`eval/samples-base-t.jsonl`: 1 unreadable line(s) skipped" in text
    assert "`eval/summary.json`: " in text and "_Not evaluated" in text


def test_sample_cells_show_the_scores_eval_writes_under_scores():
    generation = {"doc_id": 0, "prompt": "q", "reference": "r", "prediction": "SELECT 1",
                  "scores": {"sql_execution": 1.0, "sql_exact_match": 0.0}}
    standard = {"doc_id": 1, "prompt": "q", "reference": "r", "response": ["B"], "scores": {"acc": 1.0}}
    generation, standard = SampleRow.model_validate(generation), SampleRow.model_validate(standard)
    assert markdown._answer(generation) == "SELECT 1<br>(sql\\_execution 1, sql\\_exact\\_match 0)"
    assert "acc 1" in markdown._answer(standard) and "B" in markdown._answer(standard)
