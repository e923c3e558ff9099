"""What the report reads from a run directory, typed where a stage wrote a contract: the Manifest (required),
the EvalSummary, metrics.jsonl and the per-item samples (tolerant: a line cut off mid-write is skipped and
counted), the resolved recipe. Absent or unreadable files are listed, never fatal."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runner.core import jsonl
from runner.core.errors import UserError
from runner.evaluate.summary import EvalSummary
from runner.runs.manifest import Manifest
from runner.runs.rundir import RunDir

RESOLVED = "recipe.resolved.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "eval/summary.json"


@dataclass
class Inputs:
    """Everything the report reads, as found in the run directory (absent files stay empty)."""

    run_id: str
    manifest: Manifest
    records: list[dict] = field(default_factory=list)
    summary: EvalSummary | None = None
    samples: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # task -> side -> items
    resolved_yaml: str | None = None
    missing_files: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    gate: dict | None = None  # gate.json (runner.decide.gate.GateResult) once `recipe gate` judged the run

    @property
    def eval_metrics(self) -> dict[str, dict]:
        return self.summary.to_json()["metrics"] if self.summary else {}


def _tolerant(run: RunDir, name: str, unreadable: list[str]) -> list[dict]:
    lines = jsonl.read(run.file(name), strict=False)  # a killed process can leave half a line at the end
    if lines.skipped:
        unreadable.append(f"`{name}`: {lines.skipped} unreadable line(s) skipped")
    return lines.rows


def read_inputs(run: RunDir) -> Inputs:
    """Read the manifest (required), metrics, eval summary, samples and resolved recipe of a run."""
    manifest = run.manifest()
    inputs = Inputs(run_id=manifest.run_id, manifest=manifest)
    if run.file(RESOLVED).is_file():
        inputs.resolved_yaml = run.file(RESOLVED).read_text(encoding="utf-8", errors="replace")
    else:
        inputs.missing_files.append(RESOLVED)
    if run.file(METRICS).is_file():
        inputs.records = _tolerant(run, METRICS, inputs.unreadable)
    else:
        inputs.missing_files.append(METRICS)
    if run.file(SUMMARY).is_file():
        try:
            inputs.summary = EvalSummary.read(run.file(SUMMARY))
        except UserError as err:
            inputs.unreadable.append(f"`{SUMMARY}`: {'; '.join(p.message for p in err.problems)}")
    else:
        inputs.missing_files.append(SUMMARY)
    others = [c.slug for c in inputs.summary.candidates.values() if c.slug not in ("base", "finetuned")] \
        if inputs.summary else []  # few-shot, other runs and models: eval/samples-<slug>-<task>.jsonl
    claimed: set[Path] = set()  # samples-base-*.jsonl also matches base-fewshot-3's files: longest name first
    for side in sorted(("base", "finetuned", *others), key=len, reverse=True):
        for path in sorted(set(run.file("eval").glob(f"samples-{side}-*.jsonl")) - claimed):
            claimed.add(path)
            task = path.name[len(f"samples-{side}-"):-len(".jsonl")]
            inputs.samples.setdefault(task, {})[side] = _tolerant(run, f"eval/{path.name}", inputs.unreadable)
    if not inputs.samples:
        inputs.missing_files.append("eval/samples-*.jsonl")
    if run.file("gate.json").is_file():  # optional: only a gated run has it
        from runner.decide.gate import GateResult

        try:
            inputs.gate = GateResult.read(run.file("gate.json")).to_json()
        except UserError as err:
            inputs.unreadable.append(f"`gate.json`: {'; '.join(p.message for p in err.problems)}")
    return inputs
