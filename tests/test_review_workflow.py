"""The recipe-review workflow's commands (examples/github-actions/review.sh, which recipe-review.yml runs) on a real
git repository with commits, the tiny model and real axolotl training and lm-eval evaluation: a base changed without
re-locking fails `recipe lock --check`, and once locked its change shows in compare.md; a learning rate of (almost)
zero fails the gate; a recipe whose model is unchanged passes. One baseline training of the main branch is reused by
the three cases (review.sh keeps it in review/runs-base-<sha>/, as the CI cache does). Training is deterministic
(train.deterministic), so a retrained unchanged recipe gives the very same answers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.core import jsonl
from runner.runs.eval_summary import EvalSummary

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "github-actions" / "review.sh"
RECIPE = """\
# The review workflow test's recipe: tiny-cpu, shorter.
schema: 1
version: 1.0.0
name: review-tiny
extends: [_base/method/lora.yaml, _base/hardware/cpu.yaml]
description: tiny model for the review workflow test
model: {base: models/tiny-llama, context_length: 512}
method:
  lora: {r: 8, alpha: 16, dropout: 0.0, target: all-linear}
data:
  datasets:
    - source: file:data/samples/alpaca-sample.jsonl
      fields: {instruction: instruction, input: input, output: output}
  template: alpaca
  max_seq_len: 256
  packing: false
  split: {val: 4, test: 8, seed: 42}
train:
  epochs: null
  max_steps: 8
  micro_batch_size: 4
  gradient_accumulation_steps: 1
  schedule: cosine
  warmup_ratio: 0.1
  save_steps: null
eval: {suite: review, max_items: 8, max_new_tokens: 8, batch_size: 8}
"""
BASE = """\
schema: 1
method:
  kind: lora
  lora: {r: 16, alpha: 32, dropout: 0.05, target: all-linear}
train:
  learning_rate: %s
"""
SUITE = """\
suite: 1
version: 1.0.0
metrics: [rouge_l, perplexity]
gates:
  perplexity: {max_drop: 10}   # the tiny model's reference perplexity is ~1,500; 8 steps at 2e-3 take ~45 off
  rouge_l: {max_drop: 0.1}
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECIPE_")}
    env |= {"RECIPE_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
            "REVIEW_OVERRIDES": "train.deterministic=true", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return env


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model_dir):
    """A recipes repository (recipe, its own method base, a gated suite, data and model links) with one commit on
    main, made through `recipe lock`."""
    root = tmp_path_factory.mktemp("recipes-repo")
    cache = tmp_path_factory.mktemp("cache")
    (root / "recipes" / "_base" / "method").mkdir(parents=True)
    (root / "recipes" / "review-tiny.yaml").write_text(RECIPE)
    (root / "recipes" / "_base" / "method" / "lora.yaml").write_text(BASE % "2.0e-3")
    (root / "eval_suites").mkdir()
    (root / "eval_suites" / "review.yaml").write_text(SUITE)
    (root / "data").symlink_to(ROOT / "data")
    (root / "models").mkdir()
    (root / "models" / "tiny-llama").symlink_to(tiny_model_dir)
    (root / ".gitignore").write_text("review/\nruns/\n.cache/\n")
    env = _env(cache)
    _git(root, "init", "-q", "-b", "main")
    subprocess.run(["recipe", "lock"], cwd=root, env=env, check=True, capture_output=True)
    _git(root, "add", "-A")
    subprocess.run(["git", "commit", "-q", "-m", "main"], cwd=root, env=env, check=True)
    return root, env


def _branch(repo: Path, env: dict, name: str, edit, lock: bool = True) -> None:
    _git(repo, "checkout", "-q", "-B", name, "main")
    edit(repo)
    if lock:
        subprocess.run(["recipe", "lock"], cwd=repo, env=env, check=True, capture_output=True)
    _git(repo, "add", "-A")
    subprocess.run(["git", "commit", "-q", "-m", name], cwd=repo, env=env, check=True)


def _review(repo: Path, env: dict) -> tuple[int, str]:
    shutil.rmtree(repo / "review" / "review-tiny", ignore_errors=True)
    done = subprocess.run(["bash", str(SCRIPT), "main"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=1200)
    return done.returncode, done.stdout + done.stderr


def _set_lr(value: str):
    def edit(repo: Path) -> None:
        (repo / "recipes" / "_base" / "method" / "lora.yaml").write_text(BASE % value)
    return edit


@pytest.mark.model
def test_a_base_change_is_caught_by_lock_check_then_shown_in_the_compare(repo):
    root, env = repo
    _branch(root, env, "base-change", _set_lr("1.0e-3"), lock=False)
    code, output = _review(root, env)
    assert code == 1 and "stale" in output, output[-3000:]
    assert "recipe lock" in (root / "review" / "comment.md").read_text()
    assert not list((root / "review").glob("runs-head-*")), "nothing is trained before the snapshots are current"
    subprocess.run(["recipe", "lock"], cwd=root, env=env, check=True, capture_output=True)
    _git(root, "commit", "-q", "-am", "lock")
    code, output = _review(root, env)
    assert code in (0, 1), output[-3000:]
    compare_md = (root / "review" / "review-tiny" / "compare.md").read_text()
    assert "| `train.learning_rate` | 0.002 | 0.001 |" in compare_md
    assert (root / "review" / "review-tiny" / "loss.png").is_file()
    assert "train.learning_rate" in (root / "review" / "comment.md").read_text()


@pytest.mark.model
def test_a_zero_learning_rate_fails_the_gate(repo):
    root, env = repo

    def edit(repo: Path) -> None:
        path = repo / "recipes" / "review-tiny.yaml"
        path.write_text(path.read_text().replace("  schedule: cosine\n",
                                                 "  schedule: cosine\n  learning_rate: 1.0e-9  # ~zero\n"))
    _branch(root, env, "zero-lr", edit)
    code, output = _review(root, env)
    assert code == 1, output[-3000:]
    gate_text = (root / "review" / "review-tiny-gate.txt").read_text()
    assert "FAIL" in gate_text and "perplexity" in gate_text
    comment = (root / "review" / "comment.md").read_text()
    assert "FAIL" in comment and "train.learning_rate" in comment


@pytest.mark.model
def test_an_unchanged_model_passes(repo):
    root, env = repo

    def edit(repo: Path) -> None:
        path = repo / "recipes" / "review-tiny.yaml"
        path.write_text(path.read_text().replace("version: 1.0.0", "version: 1.0.1").replace(
            "description: tiny model", "description: the tiny model"))
    _branch(root, env, "docs-only", edit)
    code, output = _review(root, env)
    assert code == 0, output[-3000:]
    gate_text = (root / "review" / "review-tiny-gate.txt").read_text()
    assert "PASS" in gate_text
    compare_md = (root / "review" / "review-tiny" / "compare.md").read_text()
    assert "+0.0000 [+0.0000, +0.0000]" in compare_md  # deterministic: the very same answers and likelihoods
    assert "| `version` | 1.0.0 | 1.0.1 |" in compare_md
    # the measurement behind `train.deterministic` on CPU: same machine, same losses and metrics, to the bit
    base, head = (root / "review" / f"runs-{side}-{_git(root, 'rev-parse', ref).strip()}" / "review-tiny" / "latest"
                  for side, ref in (("base", "main"), ("head", "HEAD")))
    losses = [[r.get("loss") for r in jsonl.read(run / "metrics.jsonl").rows] for run in (base, head)]
    assert losses[0] == losses[1] and len([x for x in losses[0] if x is not None]) == 8
    summaries = [{name: c.metrics for name, c in EvalSummary.read(run / "eval" / "summary.json").candidates.items()}
                 for run in (base, head)]  # each candidate's metrics (their sources are the two checkouts' paths)
    assert summaries[0] == summaries[1]
