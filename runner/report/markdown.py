"""The run report: report.md, built only from the files in a run directory, beside plots/*.png (plots.py).

Sections: title (recipe, version, short fingerprint, status), failure or unfinished note, what is
missing, provenance, data, training, evaluation, side-by-side samples, the resolved recipe. Any input
may be absent in a partial run: the report says what is missing rather than failing. The same files
give the same markdown (nothing reads the clock). report.md is written last, atomically, so it never
points at plots that were not written.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from runner.core.atomic import write_text_atomic
from runner.metrics import registry as metric_registry
from runner.report import candidate_tables, plots
from runner.report.cells import CELL_CHARS, cell, code, duration, fenced, fmt, interval, is_number, p_value, table
from runner.report.inputs import Inputs, read_inputs
from runner.runs.data_info import SourceReport, SplitStats
from runner.runs.eval_summary import CandidateMetric, JudgeVersusBase
from runner.runs.manifest import Hardware, ParentRun, RunError, Tracking
from runner.runs.records import MetricsRow, SampleRow
from runner.runs.rundir import MANIFEST, METRICS, PLOTS, RESOLVED, SAMPLES, SUMMARY, RunDir

SAMPLES_SHOWN = 5  # side-by-side items per task
LOG_TAIL_LINES = 40
SHORT_FINGERPRINT = 12
ID_KEYS = ("doc_id", "index")
TEXT_KEYS = ("prompt", "reference", "prediction")
HARDWARE_KEYS = ("device", "profile", "gpus", "nodes", "world_size", "gpu_model", "cpu_count", "platform")
STATUS_NOTES = {"planned": "nothing has run yet", "submitted": "submitted to SLURM, not finished yet",
                "training": "training is under way, or stopped without recording why",
                "trained": "trained, not evaluated yet"}
WRITTEN_BY = {RESOLVED: "plan", METRICS: "train", SUMMARY: "eval", SAMPLES: "eval"}


def write_report(run: RunDir) -> Path:
    """Write run/report.md and run/plots/*.png from the run directory's own files; returns report.md's path."""
    inputs = read_inputs(run)
    lower = _lower(inputs)
    summary = inputs.summary
    written = plots.write_plots(run.plots_dir, inputs.records, inputs.eval_metrics, lower,
                                candidates=None if summary is None or candidate_tables.is_default(summary) else summary)
    return write_text_atomic(run.report_path, render(inputs, written))


class _Facts:
    """Dotted look-ups into one typed run file (the file's own key names: `batch.global`, `data.counts.train`)
    that remember what was asked for and not found. A record's field is read by attribute, a dict's by key."""

    def __init__(self, record: BaseModel, source: str, missing: list[tuple[str, str]]):
        self.record, self.source, self.missing = record, source, missing

    def get(self, dotted: str, note: bool = True):
        node = self.record
        for part in dotted.split("."):
            node = _field(node, part) if isinstance(node, BaseModel) else \
                node.get(part) if isinstance(node, dict) else None
        if node is None and note and (self.source, dotted) not in self.missing:
            self.missing.append((self.source, dotted))
        return node


def _field(record: BaseModel, key: str):
    """A record's field by its key in the file (its alias, else its name); a key the record has not is a bug."""
    fields = type(record).model_fields
    name = next((n for n, f in fields.items() if (f.alias or n) == key), None)
    if name is None:
        raise KeyError(f"{type(record).__name__} has no field {key!r}")
    return getattr(record, name)


def render(inputs: Inputs, written: dict[str, str]) -> str:
    """The report's markdown; written maps plot names (loss, lr, eval) to files under plots/."""
    missing: list[tuple[str, str]] = []
    facts = _Facts(inputs.manifest, MANIFEST, missing)
    body = [_provenance(facts, inputs), _data(facts), _training(facts, inputs, written),
            _evaluation(inputs, written), _gate(inputs), _samples(inputs), _recipe(inputs)]
    head = [_title(facts, inputs), _status(facts, inputs), _missing(inputs, missing)]
    return "\n\n".join(part for part in head + body if part) + "\n"


def _title(facts: _Facts, inputs: Inputs) -> str:
    name = facts.get("recipe")
    version = facts.get("recipe_version")
    fingerprint = facts.get("fingerprint")
    status = facts.get("status")
    title = (f"# {cell(name or 'unknown recipe', 0)} {cell(version or '(version missing)', 0)} · "
             f"fingerprint {code(str(fingerprint)[:SHORT_FINGERPRINT]) if fingerprint else '(missing)'} · "
             f"{cell(status or 'status missing', 0)}")
    adapter = facts.get("adapter")
    output = {True: "output: adapter", False: "output: full model", None: "output kind missing"}.get(adapter, "?")
    line = f"Run {code(inputs.run_id)} · base model {code(facts.get('base_model'))} · {output}"
    if inputs.resolved_yaml is not None:
        line += f" · resolved recipe: [{RESOLVED}]({RESOLVED})"
    return f"{title}\n\n{line}"


def _status(facts: _Facts, inputs: Inputs) -> str:
    status = facts.get("status", note=False)
    if status in STATUS_NOTES:
        return f"> **Not finished:** status `{status}`: {STATUS_NOTES[status]}."
    if status != "failed":
        return ""
    error: RunError | None = facts.get("error")
    if error is None:
        return "## Failure\n\nThe run failed; the manifest records no error."
    text = f"## Failure\n\nStage {code(error.stage)} failed: {cell(error.message, 0)}"
    tail = "\n".join(error.log_tail)
    if tail:
        lines = tail.rstrip("\n").splitlines()[-LOG_TAIL_LINES:]
        text += f"\n\nLast {len(lines)} log line(s):\n\n{fenced(chr(10).join(lines))}"
    return text


def _missing(inputs: Inputs, missing: list[tuple[str, str]]) -> str:
    items = [f"- `{name}` (written by `recipe {WRITTEN_BY[name]}`)" for name in inputs.missing_files]
    for source in dict.fromkeys(source for source, _ in missing):
        keys = sorted(key for src, key in missing if src == source)
        # "timings" missing already says "timings.train_s" is.
        keys = ", ".join(code(k) for k in keys if not any(k.startswith(f"{other}.") for other in keys))
        items.append(f"- in `{source}`: {keys}")
    items += [f"- {problem}" for problem in inputs.unreadable]
    if not items:
        return ""
    return "## Missing\n\nThis run's files do not hold everything the report shows (— in the tables):\n\n" + \
        "\n".join(items)


def _provenance(facts: _Facts, inputs: Inputs) -> str:
    seeds = f"train {fmt(facts.get('seeds.train'))} · split {fmt(facts.get('seeds.split'))}"
    rows = [["run", code(inputs.run_id)], ["git commit", code(facts.get("git_commit"))],
            ["base model", code(facts.get("base_model"))], ["base model dir", code(facts.get("base_model_dir"))],
            ["seeds", seeds], *_parent(facts.get("parent", note=False)), *_tracking(facts.get("tracking", note=False))]
    parts = ["## Provenance", table(["", ""], rows)]
    record: Hardware | None = facts.get("hardware")
    if record is not None:
        hardware = {k: v for k in type(record).model_fields if (v := getattr(record, k)) is not None}
        keys = [k for k in HARDWARE_KEYS if k in hardware] + sorted(set(hardware) - set(HARDWARE_KEYS))
        parts += ["### Hardware", table(["", ""], [[cell(k, 0), fmt(hardware[k])] for k in keys])]
    packages: dict[str, str] | None = facts.get("packages")
    if packages is not None:
        rows = [[cell(k, 0), code(v)] for k, v in sorted(packages.items(), key=lambda kv: kv[0].lower())]
        parts += ["### Packages", table(["package", "version"], rows)]
    return "\n\n".join(parts)


def _parent(parent: ParentRun | None) -> list[list[str]]:
    """A staged run (model.base: run:<recipe>): the run it started from, and that run's own base."""
    if parent is None:
        return []
    started = (f"{code(parent.recipe)} run {code(parent.run_id)} (version "
               f"{fmt(parent.recipe_version)}, fingerprint {code(parent.fingerprint[:12])})")
    return [["parent run", started], ["parent's base model", code(parent.base_model)]]


def _tracking(tracking: Tracking | None) -> list[list[str]]:
    """Rows for the W&B run and TensorBoard log dir in the run directory, when the recipe turned them on."""
    if tracking is None:
        return []
    rows = []
    folders = tracking.wandb_run_dirs
    if tracking.wandb_run_id:
        text = (f"{code(tracking.wandb_run_id)} ({cell(tracking.wandb_mode or '?', 0)}, project "
                f"{code(tracking.wandb_project)}): " + ", ".join(code(f) for f in folders))
        if tracking.wandb_mode == "offline" and folders:
            text += f"; upload them into one run with {code('wandb sync wandb/offline-run-*')}"
        rows.append(["W&B run", text])
    if tracking.tensorboard_dir:
        logdir = tracking.tensorboard_dir
        rows.append(["TensorBoard", f"{code(logdir + '/')} ({code('tensorboard --logdir ' + logdir)})"])
    return rows


def _data(facts: _Facts) -> str:
    counts = {split: facts.get(f"data.counts.{split}") for split in ("train", "val", "test")}
    unit = {"pairs": "preference pairs", "kto": "labeled completions"}.get(facts.get("data.rows", note=False), "rows")
    parts = ["## Data", " · ".join(f"{split} {fmt(n)} {unit}" for split, n in counts.items()) +
             f"; duplicates removed: {fmt(facts.get('data.duplicates_removed'))}{_identical(facts)}."]
    fingerprints: dict[str, str] | None = facts.get("data.fingerprints")
    if fingerprints is not None:
        parts.append(table(["source", "fingerprint"], [[cell(k, 0), code(v)] for k, v in fingerprints.items()]))
    stats: dict[str, SplitStats] | None = facts.get("data.stats")
    if stats is not None:
        rows = []
        for split, s in stats.items():
            per_row = s.tokens_per_row
            rows.append([cell(split, 0), fmt(s.rows), fmt(s.tokens)] +
                        [fmt(None if per_row is None else getattr(per_row, q)) for q in ("p50", "p90", "p99", "max")] +
                        [fmt(s.over_max_seq_len), fmt(s.dropped_overlength)])
        parts.append(table(["split", "rows", "tokens", "tokens/row p50", "p90", "p99", "max", "over max_seq_len",
                             "dropped"], rows, numeric_from=1))
    return "\n\n".join(parts)


def _identical(facts: _Facts) -> str:
    """Preference data: pairs dropped because chosen equals rejected, summed over the sources."""
    sources: dict[str, SourceReport] | None = facts.get("data.sources", note=False)
    if facts.get("data.rows", note=False) != "pairs" or sources is None:
        return ""
    count = sum(s.identical_pairs for s in sources.values())
    return f"; identical pairs (chosen = rejected) dropped: {fmt(count)}"


def _training(facts: _Facts, inputs: Inputs, written: dict[str, str]) -> str:
    tokens_per_s = facts.get("train.tokens_per_s")
    world = facts.get("batch.world_size")
    per_process = tokens_per_s / world if is_number(tokens_per_s) and is_number(world) and world else None
    waste = facts.get("train.padding_waste")
    rows = [["steps", fmt(facts.get("train.steps"))], ["tokens", fmt(facts.get("train.tokens"))],
            ["tokens/s (all processes)", fmt(tokens_per_s, ",.1f")],
            ["tokens/s per process", fmt(per_process, ",.1f")],
            ["train wall time", duration(facts.get("timings.train_s"))],
            ["padding waste", fmt(waste, ".1%")],
            ["global batch", _batch(facts)], *_throughput(facts),
            ["final train loss", fmt(facts.get("train.final_loss"), ".4f")],
            ["final eval loss", fmt(facts.get("train.final_eval_loss"), ".4f")]]
    parts = ["## Training", table(["", ""], rows)]
    logged = [r for r in inputs.records if r.step is not None]
    if logged:
        last = max(logged, key=lambda r: r.step)
        parts.append(f"`{METRICS}`: {len(inputs.records)} records; the last is step {fmt(last.step)}, epoch "
                     f"{fmt(last.epoch, '.2f')}, {fmt(last.tokens_seen)} tokens seen, "
                     f"{duration(last.elapsed_s)} into training.")
    timings: dict[str, float] | None = facts.get("timings")
    if timings is not None:
        rows = [[cell(k.removesuffix("_s"), 0), duration(v)] for k, v in timings.items()]
        total = sum(v for v in timings.values() if is_number(v))
        parts += ["### Timings", table(["stage", "wall time"], rows + [["**total**", duration(total)]], 1)]
    parts.append("### Loss")
    if "loss" in written:
        parts.append(f"![Train and eval loss against step]({PLOTS}/{written['loss']})")
        if not any(is_number(r.eval_loss) for r in inputs.records):
            parts.append("_No eval loss was logged (no val split, or no evaluation during training)._")
    else:
        parts.append(f"_No loss was logged (`{METRICS}` has no `loss` or `eval_loss`)._")
    parts.append("### Learning rate")
    parts.append(f"![Learning rate against step]({PLOTS}/{written['lr']})" if "lr" in written else
                 f"_No learning rate was logged (`{METRICS}` has no `lr`)._")
    if "rewards" in written:
        parts += ["### Preference rewards", _rewards_table(inputs.records),
                  f"![Rewards and reward accuracy against step]({PLOTS}/{written['rewards']})"]
    return "\n\n".join(parts)


def _rewards_table(records: list[MetricsRow]) -> str:
    """First and last logged value of each trl reward metric (train, then eval)."""
    rows = []
    keys = plots.reward_keys(records)
    for key in (*keys, *(f"eval_{k}" for k in keys)):
        steps, values = plots.series(records, key)
        if steps:
            rows.append([code(key), fmt(steps[0]), fmt(values[0], ".4f"), fmt(steps[-1]), fmt(values[-1], ".4f")])
    return table(["metric", "first step", "value", "last step", "value"], rows, 1)


def _batch(facts: _Facts) -> str:
    micro, accumulation, world = (facts.get(f"batch.{k}") for k in ("micro", "accumulation", "world_size"))
    recorded = facts.get("batch.global")
    if not all(is_number(x) for x in (micro, accumulation, world)):
        return fmt(recorded)
    product = micro * accumulation * world
    text = f"{micro} micro × {accumulation} accumulation × {world} processes = {product:,}"
    if is_number(recorded) and recorded != product:
        text += f" (**manifest records {recorded:,}**)"
    return text


def _throughput(facts: _Facts) -> list[list[str]]:
    """Achieved TFLOP/s (FLOPs per token that count frozen weights once) and MFU against the GPU's peak."""
    total, trainable = facts.get("train.params_total"), facts.get("train.params_trainable", note=False)
    tflops, peak, mfu = (facts.get(f"train.{k}", note=False) for k in ("tflops", "peak_tflops", "mfu"))
    params = f"{total:,} total, {trainable:,} trainable" if is_number(total) and is_number(trainable) else "—"
    flops = (f"{tflops:.3g} ({fmt(facts.get('train.flops_per_token', note=False), ',.0f')} FLOPs/token × tokens/s)"
             if is_number(tflops) else "—")
    if is_number(mfu):
        world = facts.get("batch.world_size", note=False)
        utilisation = f"{mfu:.1%} (of {fmt(world)} × {peak:g} TFLOP/s dense bf16)"
    elif facts.get("hardware.device", note=False) == "cpu":
        utilisation = "n/a (CPU: no peak FLOP/s on record)"
    else:
        utilisation = f"n/a (peak FLOP/s of GPU model {code(facts.get('hardware.gpu_model', note=False))} not known)"
    return [["parameters", params], ["achieved TFLOP/s", flops], ["MFU", utilisation]]


def _evaluation(inputs: Inputs, written: dict[str, str]) -> str:
    summary = inputs.summary
    if summary is None:
        command = f"recipe eval {inputs.manifest.recipe} --run {inputs.run_id}"
        return f"## Evaluation\n\n_Not evaluated: no readable `{SUMMARY}`; run `{command}`._"
    parts = ["## Evaluation",
             f"Suite {code(summary.suite)} version {fmt(summary.suite_version)}, "
             f"{fmt(summary.n_items)} test items, base and fine-tuned model on the same items. Delta is "
             "fine-tuned − base; the 95% CI is a paired bootstrap of the delta; p is a two-sided sign test."]
    metrics = inputs.eval_metrics
    if metrics:
        rows = [[cell(name, 0) + (" (lower is better)" if lower_is_better(name, m.higher_is_better) else ""),
                 fmt(m.reference, ".4f"), fmt(m.value, ".4f"), fmt(m.delta, "+.4f"), interval(m.ci95), fmt(m.n),
                 p_value(m.p_sign), _verdict(name, m)] for name, m in metrics.items()]
        parts.append(table(["metric", "base", "fine-tuned", "delta", "95% CI", "n", "sign-test p", "verdict"],
                            rows, numeric_from=1, numeric_to=7))
    else:
        parts.append("_No metrics were computed._")
    if "eval" in written:
        parts.append(f"![Base vs fine-tuned per metric]({PLOTS}/{written['eval']})")
    if not candidate_tables.is_default(summary):
        parts += ["### Candidates", candidate_tables.candidates_section(summary, _lower(inputs))]
        if "candidates" in written:
            parts.append(f"![Every candidate per metric]({PLOTS}/{written['candidates']})")
    if summary.skipped:
        parts += ["### Skipped tasks",
                  "\n".join(f"- {code(task)}: {cell(why, 0)}" for task, why in summary.skipped.items())]
    parts += ["### Judge", _judge(summary.judge_versus_base()), candidate_tables.judges_section(summary.judges)]
    return "\n\n".join(part for part in parts if part)


def _lower(inputs: Inputs) -> frozenset[str]:
    """Metrics where lower is better, over every candidate's metrics."""
    found = [m for c in (inputs.summary.candidates.values() if inputs.summary else ()) for m in c.metrics.items()]
    recorded = {name: m.higher_is_better for name, m in found if m.higher_is_better is not None}
    return frozenset(name for name, _ in found if lower_is_better(name, recorded.get(name)))


def _gate(inputs: Inputs) -> str:
    """The verdict of `recipe gate` (gate.json), when the run was gated."""
    gate = inputs.gate
    if not gate:
        return ""
    rows = [[cell(r.metric, 0) + (f" of {cell(r.candidate, 0)}" if r.candidate else ""),
             f"{r.rule} {r.bound:g}" + (" vs finetuned" if r.candidate and r.rule == "max_drop" else ""),
             fmt(r.value, ".4f"), interval(r.ci95),
             fmt(r.n), fmt(r.seed_sd, ".4f"), f"**{r.verdict}**: {cell(r.why, 0)}"]
            for r in gate.rows]
    baseline = f" against baseline {', '.join(code(b) for b in gate.baseline)}" if gate.baseline else ""
    verdict = "PASS" if gate.passed else "FAIL"
    return (f"## Gate: {verdict}\n\nSuite {code(gate.suite)} {fmt(gate.suite_version)}{baseline}. A gate passes "
            "only when the whole 95% interval is on the allowed side (`recipe gate`).\n\n" +
            table(["metric", "gate", "value or Δ", "95% CI", "n", "seed sd", "verdict"], gate.rows and rows, 2, 6))


def _judge(judge: JudgeVersusBase | None) -> str:
    if judge is None:
        return "_This suite has no judge._"
    if judge.skipped:
        return f"_Skipped: {cell(judge.skipped, 0)}_"
    row = [fmt(getattr(judge, k)) for k in ("wins", "ties", "losses", "n")] + \
          [fmt(getattr(judge, k), ".1%") for k in ("win_rate", "adjusted_win_rate")]
    return (table(["wins", "ties", "losses", "n", "win rate", "adjusted win rate (ties ½)"], [row], 0) +
            "\n\nFine-tuned vs base, judged in both answer orders; a win or loss needs both orders to agree.")


def _verdict(name: str, m: CandidateMetric) -> str:
    lower = lower_is_better(name, m.higher_is_better)
    ci, p, delta = m.ci95, m.p_sign, m.delta
    if isinstance(ci, list) and len(ci) == 2 and all(is_number(x) for x in ci):
        if ci[0] > 0 or ci[1] < 0:
            return f"{'better' if (ci[0] > 0) != lower else 'worse'}, interval excludes 0"
        return "within noise"
    if is_number(p) and is_number(delta):
        if p < 0.05 and delta != 0:
            return f"{'better' if (delta > 0) != lower else 'worse'}, sign test p < 0.05"
        return "within noise (sign test)"
    return "no interval or test"


def lower_is_better(name: str, recorded: bool | None = None) -> bool:
    """The metric's direction as its records state it, else the metric registry's."""
    return not metric_registry.higher_is_better(name, recorded)


def _samples(inputs: Inputs) -> str:
    if not inputs.samples:
        return f"## Samples\n\n_No samples were written (`{SAMPLES}`)._"
    who = "every candidate's answer" if _other_candidates(inputs) else "base and fine-tuned answers"
    parts = ["## Samples", f"The first {SAMPLES_SHOWN} test items of each task, {who} paired by "
             f"`doc_id`; text longer than {CELL_CHARS} characters is cut in the middle."]
    for task in sorted(inputs.samples):
        sides = {side: {_item_id(item, i): item for i, item in enumerate(items)}
                 for side, items in inputs.samples[task].items()}
        base, finetuned = sides.get("base", {}), sides.get("finetuned", {})
        others = {label: sides[slug] for label, slug in _other_candidates(inputs).items() if slug in sides}
        rows = []
        for item_id in sorted(set(base) | set(finetuned), key=_id_order)[:SAMPLES_SHOWN]:
            first = base.get(item_id) or finetuned[item_id]
            rows.append([cell(item_id, 0), cell(_text(first, "prompt")), cell(_text(first, "reference")),
                         _answer(base.get(item_id)), *(_answer(o.get(item_id)) for o in others.values()),
                         _answer(finetuned.get(item_id))])
        headers = ["doc", "prompt", "reference", "base", *(cell(label, 0) for label in others), "fine-tuned"]
        parts += [f"### {cell(task, 0)}", table(headers, rows)]
    return "\n\n".join(parts)


def _other_candidates(inputs: Inputs) -> dict[str, str]:
    """label -> file slug of the candidates other than base and fine-tuned (their answers join the samples)."""
    found = inputs.summary.candidates if inputs.summary else {}
    return {label: c.slug for label, c in found.items() if c.kind not in ("base", "finetuned")}


def _text(item: SampleRow, key: str):
    return getattr(item, key) if key in item.model_fields_set else ""  # null as written, absent as empty


def _item_id(item: SampleRow, position: int):
    found = next((getattr(item, k) for k in ID_KEYS if getattr(item, k) is not None), position)
    return found if isinstance(found, (str, int, float)) else json.dumps(found, sort_keys=True)


def _id_order(item_id) -> tuple:
    return (0, item_id, "") if is_number(item_id) else (1, 0, str(item_id))


def _answer(item: SampleRow | None) -> str:
    if item is None:
        return "_(no sample)_"
    prediction = item.answer  # generation tasks / standard lm-eval tasks
    text = cell("" if prediction is None else prediction)
    # eval writes a row's scores under "scores"; flat rows (numbers beside the text) are read as they are
    scores = [f"{key} {value:.3g}" for key, value in item.score_values().items()
              if key not in ID_KEYS + TEXT_KEYS and is_number(value)]
    return text + (f"<br>({cell(', '.join(scores), 0)})" if scores else "")


def _recipe(inputs: Inputs) -> str:
    if inputs.resolved_yaml is None:
        return f"## Resolved recipe\n\n_Missing: no `{RESOLVED}` in the run directory._"
    return (f"## Resolved recipe\n\n[{RESOLVED}]({RESOLVED})\n\n<details>\n<summary>{RESOLVED}</summary>\n\n"
            f"{fenced(inputs.resolved_yaml, 'yaml')}\n\n</details>")


# Markdown and number formatting.

