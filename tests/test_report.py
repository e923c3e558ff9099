"""The run report: golden markdown for a finished run, real PNGs, partial and failed runs, table escaping.

Regenerate the golden report with `make golden` (UPDATE_GOLDEN=1) and review the diff.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
from matplotlib import image
from PIL import Image

from runner.core.errors import UserError
from runner.evaluate.summary import EvalSummary
from runner.report import cells, markdown
from runner.runs.manifest import Manifest
from runner.runs.rundir import RunDir

GOLDEN = Path(__file__).parent / "golden" / "report" / "report.md"
RUN_ID = "20261122-101500-3f2a9c1d"
CHATML = "<|im_start|>system\nYou translate questions into SQLite.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n" \
         "<|im_start|>assistant\n"

MANIFEST = {
    "run_id": RUN_ID, "recipe": "mistral7b-text-to-sql", "recipe_version": "1.2.0", "target": "torchrun",
    "fingerprint": "3f2a9c1d4e5b6a7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7", "status": "evaluated",
    "error": None, "base_model": "mistralai/Mistral-7B-v0.1",
    "base_model_dir": "/home/ml/.cache/huggingface/hub/models--mistralai--Mistral-7B-v0.1/snapshots/7231864",
    "adapter": True, "git_commit": "ddcf9631b2e4",
    "packages": {"torch": "2.13.0", "axolotl": "0.19.0", "transformers": "5.16.1", "peft": "0.20.0",
                 "accelerate": "1.13.0", "deepspeed": "0.18.9", "lm_eval": "0.4.11"},
    "hardware": {"device": "cuda", "profile": "a100-80g", "gpus": 4, "nodes": 1, "world_size": 4, "deepspeed": "zero2",
                 "gpu_model": "NVIDIA A100-SXM4-80GB", "cpu_count": 96,
                 "platform": "Linux-5.15.0-x86_64-with-glibc2.35"},
    "data": {"format": 1, "key": "5e1f", "template": "alpaca", "stop": ["</s>"], "rows_by_source": {},
             "sources": {"hf:b-mc2/sql-create-context": {"rows": 8212, "incomplete": 0}},
             "counts": {"train": 7840, "val": 160, "test": 200},
             "fingerprints": {
                 "hf:b-mc2/sql-create-context": "9c1e4f0a7b3d2e6f5a8c9b0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f"},
             "duplicates_removed": 12,
             "stats": {split: {"rows": rows, "tokens": rows * 142,
                               "tokens_per_row": {"min": 61, "p50": 131, "p90": 198, "p99": 301, "max": 512,
                                                  "mean": 142.0},
                               "over_max_seq_len": over, "dropped_overlength": over, "overlength_action": "drop"}
                       for split, rows, over in (("train", 7840, 3), ("val", 160, 0), ("test", 200, 0))}},
    "seeds": {"train": 42, "split": 7},
    "batch": {"micro": 4, "accumulation": 4, "world_size": 4, "global": 64, "packing": False},
    "timings": {"prepare_s": 41.7, "train_s": 95.1, "eval_s": 812.9},
    "train": {"steps": 30, "tokens": 272640, "tokens_per_s": 2931.6, "padding_waste": 0.183, "final_loss": 0.4127,
              "final_eval_loss": 0.5031, "params_total": 7241732096, "params_trainable": 41943040,
              "flops_per_token": 29050810368.0, "tflops": 85.17, "peak_tflops": 312.0, "mfu": 0.06824},
}

RESOLVED = """\
schema: 1
name: mistral7b-text-to-sql
version: 1.2.0
model: {base: mistralai/Mistral-7B-v0.1, revision: main, trust_remote_code: false}
method: {kind: lora, lora: {r: 16, alpha: 32, dropout: 0.05, target: all-linear}}
train: {epochs: 1, micro_batch_size: 4, global_batch_size: 64, lr: 0.0002, schedule: cosine, warmup_ratio: 0.1}
hardware: {profile: a100-80g, gpus: 4, nodes: 1, deepspeed: zero2}
eval: {suite: sql-heldout, compare_base: true}
"""

SUMMARY = {
    "suite": "sql-heldout", "suite_version": "2.0.0", "n_items": 200,
    "metrics": {
        "exact_match": {"base": 0.105, "finetuned": 0.62, "delta": 0.515, "ci95": [0.445, 0.585], "n": 200,
                        "p_sign": 0.0},
        "execution_accuracy": {"base": 0.21, "finetuned": 0.735, "delta": 0.525, "ci95": [0.455, 0.59], "n": 200,
                               "p_sign": 0.0},
        "token_f1": {"base": 0.4812, "finetuned": 0.8934, "delta": 0.4122, "ci95": [0.3841, 0.4397], "n": 200,
                     "p_sign": 0.0},
        "bleu": {"base": 0.3551, "finetuned": 0.3702, "delta": 0.0151, "ci95": [-0.0123, 0.0419], "n": 200,
                 "p_sign": 0.3123},
        "perplexity": {"base": 9.8412, "finetuned": 3.2177, "delta": -6.6235, "ci95": [-7.1021, -6.1544], "n": 200,
                       "p_sign": 0.0},
    },
    "skipped": {"hellaswag": "needs dataset Rowan/hellaswag from the hub; offline (HF_DATASETS_OFFLINE=1)"},
    "judge": {"wins": 11, "ties": 6, "losses": 3, "n": 20, "win_rate": 0.55, "adjusted_win_rate": 0.7},
}

QUESTIONS = [
    ("Table customers(id, name, city)\nWhich customers live in Oslo?",
     "SELECT name FROM customers WHERE city = 'Oslo'", "SELECT * FROM customers", "SELECT name FROM customers "
     "WHERE city = 'Oslo'"),
    ("Table customers(id, first, last)\nFull names, one column?",
     "SELECT first || ' ' || last\nFROM customers", "SELECT first, last FROM customers",
     "SELECT first || ' ' || last\nFROM customers"),
    ("Table orders(id, total)\nHow many orders are there?", "SELECT COUNT(*) FROM orders",
     "There are many orders in the table. " * 12, "SELECT COUNT(*) FROM orders"),
    ("Table products(id, name, price)\nMost expensive product?",
     "SELECT name FROM products ORDER BY price DESC LIMIT 1", "SELECT MAX(price) FROM products",
     "SELECT name FROM products ORDER BY price DESC LIMIT 1"),
    ("Table orders(id, customer_id, total)\nTotal spent by customer 7?",
     "SELECT SUM(total) FROM orders WHERE customer_id = 7", "SELECT total FROM orders",
     "SELECT SUM(total) FROM orders WHERE customer_id = 7"),
    ("Table products(id, name)\nList product names.", "SELECT name FROM products", "SELECT name FROM products",
     "SELECT name FROM products"),
]


def metrics_lines(steps: int = 30) -> list[dict]:
    """A 30-step LoRA run logged by the axolotl plugin: warmup + cosine lr, noisy falling loss, eval every 10."""
    lines = []
    for step in range(1, steps + 1):
        warmup = 3
        lr = 2e-4 * step / warmup if step <= warmup else \
            2e-4 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        loss = 0.4 + 1.6 * math.exp(-step / 8) + 0.05 * math.sin(step * 1.7)
        lines.append({"step": step, "epoch": round(step / steps, 4), "elapsed_s": round(3.1 * step, 3),
                      "loss": round(loss, 4), "lr": round(lr, 10), "grad_norm": round(1.5 / math.sqrt(step), 4),
                      "tokens_seen": 9088 * step, "tokens_per_s": 2931.6, "world_size": 4})
        if step % 10 == 0:
            lines.append({"step": step, "epoch": round(step / steps, 4), "elapsed_s": round(3.1 * step + 0.4, 3),
                          "eval_loss": round(0.45 + 1.2 * math.exp(-step / 9), 4), "world_size": 4})
    lines.append({"step": steps, "epoch": 1.0, "elapsed_s": 95.1, "train_loss": 0.7812, "world_size": 4})
    return lines


def samples(side: str) -> list[dict]:
    rows = []
    for doc_id, (question, reference, base, finetuned) in enumerate(QUESTIONS):
        prediction = base if side == "base" else finetuned
        rows.append({"doc_id": doc_id, "prompt": CHATML.format(q=question), "reference": reference,
                     "prediction": prediction, "exact_match": float(prediction == reference),
                     "token_f1": 1.0 if prediction == reference else 0.25})
    return rows if side == "base" else rows[::-1]  # paired by doc_id, not by line order


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def build_run(folder: Path, manifest: dict = MANIFEST, evaluated: bool = True) -> RunDir:
    """A run directory whose files are written through the contracts every writer uses."""
    folder.mkdir(parents=True, exist_ok=True)
    Manifest.model_validate(manifest).write(folder / "manifest.json")
    _write(folder / "recipe.resolved.yaml", RESOLVED)
    _write(folder / "metrics.jsonl", _jsonl(metrics_lines()))
    if evaluated:
        EvalSummary.model_validate(SUMMARY).write(folder / "eval" / "summary.json")
        for side in ("base", "finetuned"):
            _write(folder / "eval" / f"samples-{side}-sql_heldout.jsonl", _jsonl(samples(side)))
    return RunDir(folder)


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
    _write(run.file("metrics.jsonl"), _jsonl(lines) + '{"step": 13, "lo')  # killed mid-write
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
    _write(tmp_path / "r1" / "manifest.json", json.dumps(MANIFEST | {"version": 1, "train": {"params": 7}}))
    with pytest.raises(UserError) as caught:
        markdown.write_report(RunDir(tmp_path / "r1"))
    assert "manifest.json: train.params: unknown key" in str(caught.value)
    assert not (tmp_path / "r1" / "report.md").exists()


def test_a_manifest_from_a_newer_runner_is_a_clear_error(tmp_path):
    _write(tmp_path / "r3" / "manifest.json", json.dumps(MANIFEST | {"version": 9}))
    with pytest.raises(UserError, match="Manifest version 9 is newer than this recipe-runner"):
        markdown.write_report(RunDir(tmp_path / "r3"))


def test_an_unversioned_manifest_is_migrated(tmp_path):
    old = {k: v for k, v in MANIFEST.items() if k != "data"} | {"status": "prepared", "stop": ["</s>"]}
    _write(tmp_path / "r4" / "manifest.json", json.dumps(old))
    text = markdown.write_report(RunDir(tmp_path / "r4")).read_text(encoding="utf-8")
    assert "· planned" in text.splitlines()[0]


def test_unreadable_manifest_is_a_user_error(tmp_path):
    _write(tmp_path / "r2" / "manifest.json", '{"status": ')
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
    assert markdown._verdict(name, metric) == verdict


def test_golden_copy_is_not_tied_to_the_run_folder(tmp_path, finished):
    moved = Path(shutil.copytree(finished.path, tmp_path / "elsewhere"))
    text = markdown.write_report(RunDir(moved)).read_text(encoding="utf-8")
    assert text == finished.file("report.md").read_text(encoding="utf-8")


def test_damaged_eval_files_still_give_a_report(tmp_path):
    run = build_run(tmp_path / "odd", evaluated=False)
    _write(run.file("eval", "summary.json"), json.dumps({"version": 1, "metrics": {"f1": "high"}}))
    _write(run.file("eval", "samples-base-t.jsonl"), '{"doc_id": [1], "prediction": null}\n[1, 2]\n')
    text = markdown.write_report(run).read_text(encoding="utf-8")
    assert "`eval/samples-base-t.jsonl`: 1 unreadable line(s) skipped" in text
    assert "`eval/summary.json`: " in text and "_Not evaluated" in text


def test_sample_cells_show_the_scores_eval_writes_under_scores():
    generation = {"doc_id": 0, "prompt": "q", "reference": "r", "prediction": "SELECT 1",
                  "scores": {"sql_execution": 1.0, "sql_exact_match": 0.0}}
    standard = {"doc_id": 1, "prompt": "q", "reference": "r", "response": ["B"], "scores": {"acc": 1.0}}
    assert markdown._answer(generation) == "SELECT 1<br>(sql\\_execution 1, sql\\_exact\\_match 0)"
    assert "acc 1" in markdown._answer(standard) and "B" in markdown._answer(standard)
