"""Run-file names are spelled once, in runner/runs/ (RunDir and its constants): no other module names a run file."""
from __future__ import annotations

import ast
from pathlib import Path

from runner.runs import rundir

RUNNER = Path(__file__).resolve().parents[1] / "runner"
# eval/'s and data/'s own files by their last part too (run.file("eval", "summary.json")); not a split's name
NAMES = set(rundir.RUN_FILES) | {name.rsplit("/", 1)[-1] for name in (rundir.SUMMARY, rundir.JUDGE, rundir.DATA_INFO)}
PREFIXES = tuple(f"{folder}/" for folder in rundir.RUN_FOLDERS) + rundir.EVAL_PREFIXES


def names_run_file(text: str) -> bool:
    return text in NAMES or text.startswith(PREFIXES)


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def offenders(source: str, where: str) -> list[str]:
    """file:line of every string constant (docstrings aside) that names a run file; an f-string's literal parts
    count, so f"eval/{name}" and f"samples-{side}-{task}.jsonl" are caught too."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return [f"{where}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and names_run_file(node.value)]


def test_no_run_file_literal_outside_runs():
    found = []
    for path in sorted(RUNNER.rglob("*.py")):
        if path.parent.name == "runs" and path.parent.parent == RUNNER:
            continue
        found += offenders(path.read_text(encoding="utf-8"), str(path.relative_to(RUNNER.parent)))
    assert not found, "run files named outside runner/runs/ (use RunDir's properties):\n" + "\n".join(found)


def test_the_check_catches_literals_and_leaves_other_strings():
    bad = ('run.file("eval", "summary.json")\nx = "eval/summary.json"\ny = f"samples-{side}-{task}.jsonl"\n'
           'z = "metrics.jsonl"\nw = f"eval/{name}"\nv = "logs/train.log"\nu = "gate.json"\n')
    assert sorted(int(line.split(":")[1]) for line in offenders(bad, "m.py")) == [1, 2, 3, 4, 5, 6, 7]
    fine = ('"""A docstring naming eval/summary.json and metrics.jsonl."""\n'
            'a = {"data": 1, "eval": 2, "model": "m", "merged": True, "serve": "verb", "logs": []}\n'
            'b = "config.json"\nc = "evaluation"\nd = "dataset/x.jsonl"\ne = "train.jsonl"\nf = "README.md"\n'
            'g = "eval_loss"\nh = "rewards/chosen"\ni = "model-index"\nj = "tokenizer_config.json"\n'
            'k = f"data/{name}/train.jsonl"\nl = "data/samples/"\n')
    assert offenders(fine, "m.py") == []


def test_rundir_names_the_files_it_declares(tmp_path):
    run = rundir.RunDir(tmp_path)
    assert run.summary_path == tmp_path / rundir.SUMMARY and run.judge_path == tmp_path / rundir.JUDGE
    assert run.metrics_path.name == rundir.METRICS and run.gate_path.name == rundir.GATE
    assert run.samples_path("base", "t").name == "samples-base-t.jsonl"
    assert run.log_path("train") == tmp_path / "logs" / "train.log"
    assert run.log_path("slurm-7.out") == tmp_path / "logs" / "slurm-7.out"
    run.samples_path("base", "a").parent.mkdir()
    for slug, task in (("base", "a"), ("base", "b"), ("finetuned", "a")):
        run.samples_path(slug, task).write_text("")
    assert list(run.samples_files("base")) == ["a", "b"]
