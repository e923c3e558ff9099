"""Plain helpers and constants shared by the test modules (fixtures live in conftest.py).

Test modules import from here, never from another test module or from conftest (tests/test_suite_rules.py
checks it): a test module imported by another is collected twice over, and its fixtures and module-level
work run in a module that did not ask for them.
"""
from __future__ import annotations

import http.server
import importlib.abc
import json
import math
import shutil
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# runner modules are imported where they are used: conftest.py imports this module for every session, and a
# helper only some test modules need must not stop every session from starting when its imports move
if TYPE_CHECKING:
    from runner.runs.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent

# A recipe that validates: the shape the recipe error tests (test_recipe_errors.py, test_recipe_loading.py) damage.
VALID_RECIPE = """\
schema: 1
name: demo
version: 1.0.0
extends: [_base/method/lora.yaml, _base/hardware/cpu.yaml]
model: {base: models/tiny-llama}
data:
  datasets:
    - source: file:data/samples/alpaca-sample.jsonl
      fields: {instruction: instruction, input: input, output: output}
  template: alpaca
"""

# The shortened SQL demo (test_demo.py, test_demo_dpo.py): two steps, four held-out items.
SHORT_DEMO = ["train.max_steps=2", "train.save_steps=2", "train.logging_steps=1", "data.split.val=4",
              "eval.max_items=4", "eval.max_new_tokens=24", "eval.batch_size=4"]

# The eval tests' overrides of tiny-cpu (test_evaluate.py, test_candidates_model.py): a few short answers.
EVAL_OVERRIDES = ["eval.max_items=6", "eval.max_new_tokens=12", "eval.batch_size=4"]


# A test that asks for one of these fixtures builds or trains a model: it must be marked `model` (conftest.py).
MODEL_FIXTURES = ("tiny_model_dir", "trained_tiny_run", "own_trained_run")


def unmarked_model_tests(items) -> list[str]:
    """'<node id> (uses <fixtures>)' for each collected test that asks for a MODEL_FIXTURES fixture without the
    `model` marker."""
    unmarked = []
    for item in items:
        used = sorted(set(MODEL_FIXTURES) & set(getattr(item, "fixturenames", ())))
        if used and not item.get_closest_marker("model"):
            unmarked.append(f"{item.nodeid} (uses {', '.join(used)})")
    return unmarked



def shares_module_fixture(item) -> bool:
    """Whether a test uses a module- or class-scoped fixture: such tests share work (a trained run, a chain of docs
    pages) and run on one worker under pytest-xdist."""
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}) or {}
    return any(d.scope in ("module", "class") for chain in defs.values() for d in chain)


def schedule_for_workers(items) -> None:
    """Order and group the collected tests for `pytest -n 2 --dist loadgroup --no-loadscope-reorder` (make test).

    xdist hands tests out in collection order, so the long ones go first and the quick ones fill the end, rather than
    one worker finishing a long test alone: tests that share a module fixture (one group per module, kept on one
    worker), then the other model tests, then the rest; within each, the collection order. Without xdist the order
    changes the same way, which every test allows (a test passes in any order)."""
    def rank(pair):
        index, item = pair
        return (0 if shares_module_fixture(item) and item.get_closest_marker("model") else
                1 if item.get_closest_marker("model") else 2, index)

    for item in items:
        if shares_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__ if item.module else item.nodeid))
    items[:] = [item for _, item in sorted(enumerate(items), key=rank)]


class ImportOnSessionStreams(importlib.abc.MetaPathFinder):
    """A finder that runs the first import of the top-level package `name` with sys.stdout and sys.stderr set to
    `streams` (default: the ones current when the finder is made), then puts back the streams of the moment.

    For a package that binds a logging handler to the sys.stdout it sees when imported (deepspeed does):
    conftest.py installs one for deepspeed, so that a first import inside a capsys test binds the session's
    stream, not capsys's, which pytest closes after the test. It imports nothing itself."""

    def __init__(self, name: str, streams=None):
        self.name = name
        self.streams = streams or (sys.stdout, sys.stderr)

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader.exec_module = self._on_streams(spec.loader.exec_module)
        return spec

    def _on_streams(self, exec_module):
        def run(module):
            saved = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = self.streams
            try:
                exec_module(module)
            finally:
                sys.stdout, sys.stderr = saved

        return run


# ---------------------------------------------------------------- a local stand-in endpoint and a workspace


class ChatCompletionsHandler(http.server.BaseHTTPRequestHandler):
    """A 127.0.0.1 stand-in for an OpenAI-compatible /chat/completions endpoint (a remote API cannot be reached
    here): subclasses define do_POST and answer with `self.reply(text)`."""

    def reply(self, content: str) -> None:
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(process, url: str, limit_s: float = 180, path: str = "/health") -> None:
    """Until the server `process` started answers GET url+path with 200; its stderr in the error when it exits."""
    import time

    import httpx

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the server did not answer within {limit_s} s")


def stop_process(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: kill it
        process.kill()
        process.wait()


@contextmanager
def offline_workspace(root: Path, suites: dict[str, str]):
    """A throw-away project in `root` (recipes, templates, suites copied; data and the tiny model linked), offline,
    with extra eval suites {name: YAML text}; for module-scoped fixtures, which cannot use monkeypatch."""
    from runner.models import tiny
    from runner.recipe import templates

    for folder in ("recipes", "templates", "eval_suites"):
        shutil.copytree(ROOT / folder, root / folder)
    (root / "data").symlink_to(ROOT / "data")
    (root / "models").mkdir()
    (root / "models" / "tiny-llama").symlink_to(tiny.build(ROOT / "models" / "tiny-llama"))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"RECIPE_RUNNER_HOME": root, "RECIPE_RUNS_DIR": root / "runs",
                            "RECIPE_CACHE_DIR": root / ".cache", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                            "TOKENIZERS_PARALLELISM": "false"}.items():
            mp.setenv(name, str(value))
        templates.load.cache_clear()
        for name, text in suites.items():
            (root / "eval_suites" / f"{name}.yaml").write_text(textwrap.dedent(text))
        yield root
    templates.load.cache_clear()


# ---------------------------------------------------------------- a trained-looking tiny-cpu run (needs the model)


def make_eval_run(adapter: bool = True) -> tuple[RunDir, object]:
    """A trained-looking tiny-cpu run: prepared test split, manifest, and an untrained LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from runner.data import prepare
    from runner.recipe import loading
    from runner.runs import rundir
    from runner.runs.manifest import Status
    from runner.train import plan

    loaded = loading.load("tiny-cpu", EVAL_OVERRIDES)
    prepared = prepare.prepare(loaded, quiet=True)
    run = rundir.create("tiny-cpu", loaded.fingerprint)
    run.file("data").mkdir()
    shutil.copy(prepared.split("test"), run.file("data", "test.jsonl"))
    (run.path / "recipe.resolved.yaml").write_text(loading.resolved_yaml(loaded.recipe))
    base = (rundir.paths.project_root() / "models" / "tiny-llama").resolve()
    if adapter:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        # init_lora_weights=False: random, non-zero B, so the "fine-tuned" model really differs from the base
        config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(run.file("model"))
    manifest = plan.new_manifest(loaded, run, "local", str(base), Status.TRAINED, data=prepared.info)
    manifest.model_copy(update={"timings": {"train_s": 1.0}}).write(run.manifest_path)
    rundir.point_latest(run)
    return run, loaded.recipe


# ---------------------------------------------------------------- a finished 7B run, written by hand (no model)
# The report tests' run (test_report.py; also test_tracking.py, test_stages.py): manifest, resolved recipe,
# metrics, eval summary and per-item samples, each written through the contract its writer uses.

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


def write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def build_run(folder: Path, manifest: dict = MANIFEST, evaluated: bool = True) -> RunDir:
    """A run directory whose files are written through the contracts every writer uses."""
    from runner.runs.eval_summary import EvalSummary
    from runner.runs.manifest import Manifest
    from runner.runs.rundir import RunDir

    folder.mkdir(parents=True, exist_ok=True)
    Manifest.model_validate(manifest).write(folder / "manifest.json")
    write_file(folder / "recipe.resolved.yaml", RESOLVED)
    write_file(folder / "metrics.jsonl", jsonl_text(metrics_lines()))
    if evaluated:
        EvalSummary.from_data(SUMMARY, "SUMMARY").write(folder / "eval" / "summary.json")  # version 1, migrated
        for side in ("base", "finetuned"):
            write_file(folder / "eval" / f"samples-{side}-sql_heldout.jsonl", jsonl_text(samples(side)))
    return RunDir(folder)


def finished_run(name: str = "tiny-cpu") -> RunDir:
    """A run made as `recipe train` makes one (plan files, precision decided), marked trained, with no model: for
    the verbs that find and check runs before they load anything."""
    from runner.recipe import loading
    from runner.runs import rundir
    from runner.runs.manifest import Status
    from runner.train import plan

    loaded = plan.concrete(loading.load(name))
    run = rundir.create(name, loaded.fingerprint)
    plan.write_plan(run, loaded, "local", "models/tiny-llama", has_val=True)
    plan.new_manifest(loaded, run, "local", "models/tiny-llama", Status.TRAINED).write(run.manifest_path)
    rundir.point_latest(run)
    return run
