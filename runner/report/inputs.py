"""What the report reads from a run directory, typed where a stage wrote a contract: the Manifest (required),
the EvalSummary, metrics.jsonl and the per-item samples (tolerant: a line cut off mid-write is skipped and
counted), the resolved recipe. Absent or unreadable files are listed, never fatal."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runner.core.errors import UserError
from runner.runs.eval_summary import CandidateMetric, EvalSummary
from runner.runs.gate_result import GateResult
from runner.runs.manifest import Manifest
from runner.runs.records import MetricsRow, R, SampleRow, read_rows
from runner.runs.rundir import GATE, METRICS, RESOLVED, SAMPLES, SUMMARY, RunDir


@dataclass
class Inputs:
    """Everything the report reads, as found in the run directory (absent files stay empty)."""

    run_id: str
    manifest: Manifest
    records: list[MetricsRow] = field(default_factory=list)
    summary: EvalSummary | None = None
    samples: dict[str, dict[str, list[SampleRow]]] = field(default_factory=dict)  # task -> side -> items
    resolved_yaml: str | None = None
    missing_files: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    gate: GateResult | None = None  # gate.json once `recipe gate` judged the run

    @property
    def eval_metrics(self) -> dict[str, CandidateMetric]:
        """Per metric the fine-tuned model's value, the base's (reference) and the paired delta fine-tuned - base."""
        return self.summary.versus_base() if self.summary else {}


def _tolerant(run: RunDir, path: Path, row: type[R], unreadable: list[str]) -> list[R]:
    rows, skipped = read_rows(path, row, strict=False)  # a killed process can leave half a line at the end
    if skipped:
        unreadable.append(f"`{path.relative_to(run.path).as_posix()}`: {skipped} unreadable line(s) skipped")
    return rows


def read_inputs(run: RunDir) -> Inputs:
    """Read the manifest (required), metrics, eval summary, samples and resolved recipe of a run."""
    manifest = run.manifest()
    inputs = Inputs(run_id=manifest.run_id, manifest=manifest)
    if run.resolved_path.is_file():
        inputs.resolved_yaml = run.resolved_path.read_text(encoding="utf-8", errors="replace")
    else:
        inputs.missing_files.append(RESOLVED)
    if run.metrics_path.is_file():
        inputs.records = _tolerant(run, run.metrics_path, MetricsRow, inputs.unreadable)
    else:
        inputs.missing_files.append(METRICS)
    if run.summary_path.is_file():
        try:
            inputs.summary = EvalSummary.read(run.summary_path)
        except UserError as err:
            inputs.unreadable.append(f"`{SUMMARY}`: {'; '.join(p.message for p in err.problems)}")
    else:
        inputs.missing_files.append(SUMMARY)
    others = [c.slug for c in inputs.summary.candidates.values() if c.slug not in ("base", "finetuned")] \
        if inputs.summary else []  # few-shot, other runs and models: eval/samples-<slug>-<task>.jsonl
    claimed: set[Path] = set()  # samples-base-*.jsonl also matches base-fewshot-3's files: longest name first
    for side in sorted(("base", "finetuned", *others), key=len, reverse=True):
        for task, path in run.samples_files(side).items():
            if path in claimed:
                continue
            claimed.add(path)
            inputs.samples.setdefault(task, {})[side] = _tolerant(run, path, SampleRow, inputs.unreadable)
    if not inputs.samples:
        inputs.missing_files.append(SAMPLES)
    if run.gate_path.is_file():  # optional: only a gated run has it
        try:
            inputs.gate = GateResult.read(run.gate_path)
        except UserError as err:
            inputs.unreadable.append(f"`{GATE}`: {'; '.join(p.message for p in err.problems)}")
    return inputs
