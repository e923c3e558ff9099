"""The run report: report.md, built only from the files in a run directory, beside plots/*.png (plots.py).

Sections: title (recipe, version, short fingerprint, status), failure or unfinished note, what is
missing, provenance, data, training, evaluation, side-by-side samples, the resolved recipe. Any input
may be absent in a partial run: the report says what is missing rather than failing. The same files
give the same markdown (nothing reads the clock). report.md is written last, atomically, so it never
points at plots that were not written.
"""
from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from runner.report import plots
from runner.core.errors import Problem, UserError
from runner.runs.rundir import RunDir
from runner.core.atomic import write_text_atomic

REPORT = "report.md"
RESOLVED = "recipe.resolved.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "eval/summary.json"
SAMPLES_SHOWN = 5  # side-by-side items per task
CELL_CHARS = 300  # table cells longer than this are cut in the middle
LOG_TAIL_LINES = 40
SHORT_FINGERPRINT = 12
ID_KEYS = ("doc_id", "index")
TEXT_KEYS = ("prompt", "reference", "prediction")
HARDWARE_KEYS = ("device", "profile", "gpus", "nodes", "world_size", "gpu_model", "cpu_count", "platform")
LOWER_IS_BETTER = {"perplexity", "ppl", "loss", "error", "wer", "cer", "bpb", "bits"}
# Dense bf16 tensor-core peak per GPU in TFLOP/s (vendor datasheets); first substring match of gpu_model wins.
PEAK_TFLOPS = (("H100 PCIE", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
STATUS_NOTES = {"planned": "nothing has run yet", "prepared": "data prepared, not trained yet",
                "training": "training is under way, or stopped without recording why",
                "trained": "trained, not evaluated yet"}
WRITTEN_BY = {RESOLVED: "plan", METRICS: "train", SUMMARY: "eval", "eval/samples-*.jsonl": "eval"}
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def write_report(run: RunDir) -> Path:
    """Write run/report.md and run/plots/*.png from the run directory's own files; returns report.md's path."""
    inputs = read_inputs(run)
    lower = frozenset(name for name, m in inputs.eval_metrics.items() if _lower_is_better(name, m))
    written = plots.write_plots(run.file("plots"), inputs.records, inputs.eval_metrics, lower)
    return write_text_atomic(run.file(REPORT), render(inputs, written))


@dataclass
class Inputs:
    """Everything the report reads, as found in the run directory (absent files stay empty)."""

    run_id: str
    manifest: dict
    records: list[dict] = field(default_factory=list)
    summary: dict | None = None
    samples: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # task -> side -> items
    resolved_yaml: str | None = None
    missing_files: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def eval_metrics(self) -> dict[str, dict]:
        metrics = (self.summary or {}).get("metrics")
        return {k: v for k, v in metrics.items() if isinstance(v, dict)} if isinstance(metrics, dict) else {}


def read_inputs(run: RunDir) -> Inputs:
    """Read the manifest (required), metrics, eval summary, samples and resolved recipe of a run."""
    try:
        manifest = run.manifest()
    except ValueError as err:
        raise UserError(Problem(str(run.manifest_path), "", f"not valid JSON ({err})")) from None
    if not isinstance(manifest, dict):
        raise UserError(Problem(str(run.manifest_path), "", "not a JSON object"))
    inputs = Inputs(run_id=str(manifest.get("run_id") or run.run_id), manifest=manifest)
    if run.file(RESOLVED).is_file():
        inputs.resolved_yaml = run.file(RESOLVED).read_text(encoding="utf-8", errors="replace")
    else:
        inputs.missing_files.append(RESOLVED)
    if run.file(METRICS).is_file():
        inputs.records = _read_jsonl(run.file(METRICS), METRICS, inputs.unreadable)
    else:
        inputs.missing_files.append(METRICS)
    if run.file(SUMMARY).is_file():
        try:
            summary = json.loads(run.file(SUMMARY).read_text(encoding="utf-8", errors="replace"))
        except ValueError as err:
            inputs.unreadable.append(f"`{SUMMARY}`: not valid JSON ({err})")
        else:
            if isinstance(summary, dict):
                inputs.summary = summary
            else:
                inputs.unreadable.append(f"`{SUMMARY}`: not a JSON object")
    else:
        inputs.missing_files.append(SUMMARY)
    for side in ("base", "finetuned"):
        for path in sorted(run.file("eval").glob(f"samples-{side}-*.jsonl")):
            task = path.name[len(f"samples-{side}-"):-len(".jsonl")]
            rows = _read_jsonl(path, f"eval/{path.name}", inputs.unreadable)
            inputs.samples.setdefault(task, {})[side] = rows
    if not inputs.samples:
        inputs.missing_files.append("eval/samples-*.jsonl")
    return inputs


def _read_jsonl(path: Path, label: str, unreadable: list[str]) -> list[dict]:
    rows, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None  # a killed process can leave half a line at the end
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    if bad:
        unreadable.append(f"`{label}`: {bad} unreadable line(s) skipped")
    return rows


class _Facts:
    """Dotted look-ups into one JSON file that remember what was asked for and not found."""

    def __init__(self, data: dict, source: str, missing: list[tuple[str, str]]):
        self.data, self.source, self.missing = data, source, missing

    def get(self, dotted: str, note: bool = True):
        node = self.data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and note and (self.source, dotted) not in self.missing:
            self.missing.append((self.source, dotted))
        return node


def render(inputs: Inputs, written: dict[str, str]) -> str:
    """The report's markdown; written maps plot names (loss, lr, eval) to files under plots/."""
    missing: list[tuple[str, str]] = []
    facts = _Facts(inputs.manifest, "manifest.json", missing)
    body = [_provenance(facts, inputs), _data(facts), _training(facts, inputs, written),
            _evaluation(inputs, written, missing), _samples(inputs), _recipe(inputs)]
    head = [_title(facts, inputs), _status(facts, inputs), _missing(inputs, missing)]
    return "\n\n".join(part for part in head + body if part) + "\n"


def _title(facts: _Facts, inputs: Inputs) -> str:
    recipe = facts.get("recipe")
    name = recipe.get("name") if isinstance(recipe, dict) else recipe
    version = facts.get("recipe_version")
    fingerprint = facts.get("fingerprint")
    status = facts.get("status")
    title = (f"# {_cell(name or 'unknown recipe', 0)} {_cell(version or '(version missing)', 0)} · "
             f"fingerprint {_code(str(fingerprint)[:SHORT_FINGERPRINT]) if fingerprint else '(missing)'} · "
             f"{_cell(status or 'status missing', 0)}")
    adapter = facts.get("adapter")
    output = {True: "output: adapter", False: "output: full model", None: "output kind missing"}.get(adapter, "?")
    line = f"Run {_code(inputs.run_id)} · base model {_code(facts.get('base_model'))} · {output}"
    if inputs.resolved_yaml is not None:
        line += f" · resolved recipe: [{RESOLVED}]({RESOLVED})"
    return f"{title}\n\n{line}"


def _status(facts: _Facts, inputs: Inputs) -> str:
    status = facts.get("status", note=False)
    if status in STATUS_NOTES:
        return f"> **Not finished:** status `{status}`: {STATUS_NOTES[status]}."
    if status != "failed":
        return ""
    error = facts.get("error")
    error = {"message": error} if isinstance(error, str) else error
    if not isinstance(error, dict):
        return "## Failure\n\nThe run failed; the manifest records no error."
    text = f"## Failure\n\nStage {_code(error.get('stage') or '?')} failed: {_cell(error.get('message') or '', 0)}"
    tail = error.get("log_tail")
    if isinstance(tail, list):
        tail = "\n".join(str(line) for line in tail)
    if tail:
        lines = str(tail).rstrip("\n").splitlines()[-LOG_TAIL_LINES:]
        text += f"\n\nLast {len(lines)} log line(s):\n\n{_fenced(chr(10).join(lines))}"
    return text


def _missing(inputs: Inputs, missing: list[tuple[str, str]]) -> str:
    items = [f"- `{name}` (written by `recipe {WRITTEN_BY[name]}`)" for name in inputs.missing_files]
    for source in dict.fromkeys(source for source, _ in missing):
        keys = sorted(key for src, key in missing if src == source)
        # "timings" missing already says "timings.train_s" is.
        keys = ", ".join(_code(k) for k in keys if not any(k.startswith(f"{other}.") for other in keys))
        items.append(f"- in `{source}`: {keys}")
    items += [f"- {problem}" for problem in inputs.unreadable]
    if not items:
        return ""
    return "## Missing\n\nThis run's files do not hold everything the report shows (— in the tables):\n\n" + \
        "\n".join(items)


def _recipe_name(manifest: dict) -> str | None:
    recipe = manifest.get("recipe")
    return recipe.get("name") if isinstance(recipe, dict) else recipe


def _provenance(facts: _Facts, inputs: Inputs) -> str:
    seeds = f"train {_fmt(facts.get('seeds.train'))} · split {_fmt(facts.get('seeds.split'))}"
    rows = [["run", _code(inputs.run_id)], ["git commit", _code(facts.get("git_commit"))],
            ["base model", _code(facts.get("base_model"))], ["base model dir", _code(facts.get("base_model_dir"))],
            ["seeds", seeds]]
    parts = ["## Provenance", _table(["", ""], rows)]
    hardware = facts.get("hardware")
    if isinstance(hardware, dict):
        keys = [k for k in HARDWARE_KEYS if k in hardware] + sorted(set(hardware) - set(HARDWARE_KEYS))
        parts += ["### Hardware", _table(["", ""], [[_cell(k, 0), _fmt(hardware[k])] for k in keys])]
    packages = facts.get("packages")
    if isinstance(packages, dict):
        rows = [[_cell(k, 0), _code(v)] for k, v in sorted(packages.items(), key=lambda kv: kv[0].lower())]
        parts += ["### Packages", _table(["package", "version"], rows)]
    return "\n\n".join(parts)


def _data(facts: _Facts) -> str:
    counts = {split: facts.get(f"data.counts.{split}") for split in ("train", "val", "test")}
    parts = ["## Data", " · ".join(f"{split} {_fmt(n)} rows" for split, n in counts.items()) +
             f"; duplicates removed: {_fmt(facts.get('data.duplicates_removed'))}."]
    fingerprints = facts.get("data.fingerprints")
    if isinstance(fingerprints, dict):
        parts.append(_table(["source", "fingerprint"], [[_cell(k, 0), _code(v)] for k, v in fingerprints.items()]))
    stats = facts.get("data.stats")
    if isinstance(stats, dict):
        rows = []
        for split, s in stats.items():
            s = s if isinstance(s, dict) else {}
            per_row = s.get("tokens_per_row") if isinstance(s.get("tokens_per_row"), dict) else {}
            rows.append([_cell(split, 0), _fmt(s.get("rows")), _fmt(s.get("tokens"))] +
                        [_fmt(per_row.get(q)) for q in ("p50", "p90", "p99", "max")] +
                        [_fmt(s.get("over_max_seq_len")), _fmt(s.get("dropped_overlength"))])
        parts.append(_table(["split", "rows", "tokens", "tokens/row p50", "p90", "p99", "max", "over max_seq_len",
                             "dropped"], rows, numeric_from=1))
    return "\n\n".join(parts)


def _training(facts: _Facts, inputs: Inputs, written: dict[str, str]) -> str:
    tokens_per_s = facts.get("train.tokens_per_s")
    world = facts.get("batch.world_size")
    per_process = tokens_per_s / world if _number(tokens_per_s) and _number(world) and world else None
    waste = facts.get("train.padding_waste")
    rows = [["steps", _fmt(facts.get("train.steps"))], ["tokens", _fmt(facts.get("train.tokens"))],
            ["tokens/s (all processes)", _fmt(tokens_per_s, ",.1f")],
            ["tokens/s per process", _fmt(per_process, ",.1f")],
            ["train wall time", _duration(facts.get("timings.train_s"))],
            ["padding waste", _fmt(waste, ".1%")],
            ["global batch", _batch(facts)], ["MFU", _mfu(facts, tokens_per_s, world)],
            ["final train loss", _fmt(facts.get("train.final_loss"), ".4f")],
            ["final eval loss", _fmt(facts.get("train.final_eval_loss"), ".4f")]]
    parts = ["## Training", _table(["", ""], rows)]
    logged = [r for r in inputs.records if _number(r.get("step"))]
    if logged:
        last = max(logged, key=lambda r: r["step"])
        parts.append(f"`{METRICS}`: {len(inputs.records)} records; the last is step {_fmt(last['step'])}, epoch "
                     f"{_fmt(last.get('epoch'), '.2f')}, {_fmt(last.get('tokens_seen'))} tokens seen, "
                     f"{_duration(last.get('elapsed_s'))} into training.")
    timings = facts.get("timings")
    if isinstance(timings, dict):
        rows = [[_cell(k.removesuffix("_s"), 0), _duration(v)] for k, v in timings.items()]
        total = sum(v for v in timings.values() if _number(v))
        parts += ["### Timings", _table(["stage", "wall time"], rows + [["**total**", _duration(total)]], 1)]
    parts.append("### Loss")
    if "loss" in written:
        parts.append(f"![Train and eval loss against step](plots/{written['loss']})")
        if not any(_number(r.get("eval_loss")) for r in inputs.records):
            parts.append("_No eval loss was logged (no val split, or no evaluation during training)._")
    else:
        parts.append(f"_No loss was logged (`{METRICS}` has no `loss` or `eval_loss`)._")
    parts.append("### Learning rate")
    parts.append(f"![Learning rate against step](plots/{written['lr']})" if "lr" in written else
                 f"_No learning rate was logged (`{METRICS}` has no `lr`)._")
    return "\n\n".join(parts)


def _batch(facts: _Facts) -> str:
    micro, accumulation, world = (facts.get(f"batch.{k}") for k in ("micro", "accumulation", "world_size"))
    recorded = facts.get("batch.global")
    if not all(_number(x) for x in (micro, accumulation, world)):
        return _fmt(recorded)
    product = micro * accumulation * world
    text = f"{micro} micro × {accumulation} accumulation × {world} processes = {product:,}"
    if _number(recorded) and recorded != product:
        text += f" (**manifest records {recorded:,}**)"
    return text


def _mfu(facts: _Facts, tokens_per_s, world) -> str:
    hardware = facts.get("hardware", note=False)
    if not isinstance(hardware, dict):
        return "—"
    gpu = hardware.get("gpu_model")
    if not gpu:
        return "n/a (no GPU)"
    peak = next((tflops for name, tflops in PEAK_TFLOPS if name in str(gpu).upper()), None)
    params = facts.get("train.params", note=False)
    if peak is None:
        return f"n/a (peak FLOP/s of {_cell(gpu, 0)} not known)"
    if not (_number(params) and _number(tokens_per_s) and _number(world) and world):
        return "n/a (needs `train.params`, the parameter count, in the manifest)"
    # 6 FLOPs per parameter per token (forward 2 + backward 4), over the peak of every process's GPU.
    mfu = 6 * params * tokens_per_s / (peak * 1e12 * world)
    return f"{mfu:.1%} (6 × {params:,} params × tokens/s ÷ ({world} × {peak:g} TFLOP/s bf16))"


def _evaluation(inputs: Inputs, written: dict[str, str], missing: list[tuple[str, str]]) -> str:
    if inputs.summary is None:
        command = f"recipe eval {_recipe_name(inputs.manifest) or 'NAME'} --run {inputs.run_id}"
        return f"## Evaluation\n\n_Not evaluated: no readable `{SUMMARY}`; run `{command}`._"
    summary = _Facts(inputs.summary, SUMMARY, missing)
    parts = ["## Evaluation",
             f"Suite {_code(summary.get('suite'))} version {_fmt(summary.get('suite_version'))}, "
             f"{_fmt(summary.get('n_items'))} test items, base and fine-tuned model on the same items. Delta is "
             "fine-tuned − base; the 95% CI is a paired bootstrap of the delta; p is a two-sided sign test."]
    recorded = summary.get("metrics")
    metrics = inputs.eval_metrics
    if metrics:
        rows = [[_cell(name, 0) + (" (lower is better)" if _lower_is_better(name, m) else ""),
                 _fmt(m.get("base"), ".4f"), _fmt(m.get("finetuned"), ".4f"), _fmt(m.get("delta"), "+.4f"),
                 _interval(m.get("ci95")), _fmt(m.get("n")), _p(m.get("p_sign")), _verdict(name, m)]
                for name, m in metrics.items()]
        parts.append(_table(["metric", "base", "fine-tuned", "delta", "95% CI", "n", "sign-test p", "verdict"],
                            rows, numeric_from=1, numeric_to=7))
    elif recorded is not None:
        parts.append("_No metrics were computed._")
    if "eval" in written:
        parts.append(f"![Base vs fine-tuned per metric](plots/{written['eval']})")
    skipped = summary.get("skipped", note=False)
    if isinstance(skipped, dict) and skipped:
        parts += ["### Skipped tasks", "\n".join(f"- {_code(task)}: {_cell(why, 0)}" for task, why in skipped.items())]
    parts += ["### Judge", _judge(summary.get("judge", note=False))]
    return "\n\n".join(parts)


def _judge(judge) -> str:
    if not isinstance(judge, dict):
        return "_This suite has no judge._"
    if "skipped" in judge:
        return f"_Skipped: {_cell(judge['skipped'], 0)}_"
    row = [_fmt(judge.get(k)) for k in ("wins", "ties", "losses", "n")] + \
          [_fmt(judge.get(k), ".1%") for k in ("win_rate", "adjusted_win_rate")]
    return (_table(["wins", "ties", "losses", "n", "win rate", "adjusted win rate (ties ½)"], [row], 0) +
            "\n\nFine-tuned vs base, judged in both answer orders; a win or loss needs both orders to agree.")


def _verdict(name: str, m: dict) -> str:
    lower = _lower_is_better(name, m)
    ci, p, delta = m.get("ci95"), m.get("p_sign"), m.get("delta")
    if isinstance(ci, list) and len(ci) == 2 and all(_number(x) for x in ci):
        if ci[0] > 0 or ci[1] < 0:
            return f"{'better' if (ci[0] > 0) != lower else 'worse'}, interval excludes 0"
        return "within noise"
    if _number(p) and _number(delta):
        if p < 0.05 and delta != 0:
            return f"{'better' if (delta > 0) != lower else 'worse'}, sign test p < 0.05"
        return "within noise (sign test)"
    return "no interval or test"


def _lower_is_better(name: str, m: dict) -> bool:
    if isinstance(m.get("higher_is_better"), bool):
        return not m["higher_is_better"]
    return bool(LOWER_IS_BETTER & set(re.split(r"[^a-z0-9]+", name.lower())))


def _samples(inputs: Inputs) -> str:
    if not inputs.samples:
        return "## Samples\n\n_No samples were written (`eval/samples-*.jsonl`)._"
    parts = ["## Samples", f"The first {SAMPLES_SHOWN} test items of each task, base and fine-tuned answers paired by "
             f"`doc_id`; text longer than {CELL_CHARS} characters is cut in the middle."]
    for task in sorted(inputs.samples):
        sides = {side: {_item_id(item, i): item for i, item in enumerate(items)}
                 for side, items in inputs.samples[task].items()}
        base, finetuned = sides.get("base", {}), sides.get("finetuned", {})
        rows = []
        for item_id in sorted(set(base) | set(finetuned), key=_id_order)[:SAMPLES_SHOWN]:
            first = base.get(item_id) or finetuned[item_id]
            rows.append([_cell(item_id, 0), _cell(first.get("prompt", "")), _cell(first.get("reference", "")),
                         _answer(base.get(item_id)), _answer(finetuned.get(item_id))])
        parts += [f"### {_cell(task, 0)}", _table(["doc", "prompt", "reference", "base", "fine-tuned"], rows)]
    return "\n\n".join(parts)


def _item_id(item: dict, position: int):
    found = next((item[k] for k in ID_KEYS if item.get(k) is not None), position)
    return found if isinstance(found, (str, int, float)) else json.dumps(found, sort_keys=True)


def _id_order(item_id) -> tuple:
    return (0, item_id, "") if _number(item_id) else (1, 0, str(item_id))


def _answer(item: dict | None) -> str:
    if item is None:
        return "_(no sample)_"
    prediction = item.get("prediction", item.get("response"))  # generation tasks / standard lm-eval tasks
    text = _cell("" if prediction is None else prediction)
    # eval writes a row's scores under "scores"; flat rows (numbers beside the text) are read as they are
    source = item["scores"] if isinstance(item.get("scores"), dict) else item
    scores = [f"{key} {value:.3g}" for key, value in source.items()
              if key not in ID_KEYS + TEXT_KEYS and _number(value)]
    return text + (f"<br>({_cell(', '.join(scores), 0)})" if scores else "")


def _recipe(inputs: Inputs) -> str:
    if inputs.resolved_yaml is None:
        return f"## Resolved recipe\n\n_Missing: no `{RESOLVED}` in the run directory._"
    return (f"## Resolved recipe\n\n[{RESOLVED}]({RESOLVED})\n\n<details>\n<summary>{RESOLVED}</summary>\n\n"
            f"{_fenced(inputs.resolved_yaml, 'yaml')}\n\n</details>")


# Markdown and number formatting.

def _table(headers: list[str], rows: list[list[str]], numeric_from: int | None = None,
           numeric_to: int | None = None) -> str:
    """A GFM table; columns numeric_from..numeric_to (exclusive) are right-aligned."""
    stop = len(headers) if numeric_to is None else numeric_to
    align = ["---:" if numeric_from is not None and numeric_from <= i < stop else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _cell(value, limit: int = CELL_CHARS) -> str:
    """Text safe inside a table cell: cut to limit (0: no cut), HTML and markdown escaped, newlines as <br>."""
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    if limit and len(text) > limit:
        head = limit * 2 // 3
        text = f"{text[:head]} …[{len(text) - limit} characters cut]… {text[head - limit:]}"
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False)).strip()
    return text.replace("\n", "<br>") or "_(empty)_"


def _code(value) -> str:
    if value is None:
        return "—"
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _fenced(text: str, lang: str = "") -> str:
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value, spec: str = ",") -> str:
    if value is None:
        return "—"
    if _number(value):
        return format(value, spec)
    return _cell(value, 0)


def _duration(seconds) -> str:
    if not _number(seconds):
        return "—"
    text = f"{seconds:,.1f} s"
    if seconds >= 60:
        hours, rest = divmod(int(round(seconds)), 3600)
        minutes, secs = divmod(rest, 60)
        text += f" ({hours}h {minutes:02d}m {secs:02d}s)" if hours else f" ({minutes}m {secs:02d}s)"
    return text


def _interval(ci) -> str:
    if isinstance(ci, list) and len(ci) == 2 and all(_number(x) for x in ci):
        return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"
    return "—"


def _p(p) -> str:
    return "—" if not _number(p) else "<0.001" if p < 0.001 else f"{p:.3f}"
