"""Model cards: README.md in a run's model folder (model/, and merged/ after a merge), in the Hugging Face format.

Written when training ends and refreshed when eval writes eval/summary.json (the `model-index` results), both by
the verbs (runner.cli.followups), and written into merged/ by merge; `recipe publish` uploads it with the model. The
metadata is built with huggingface_hub's ModelCardData and EvalResult, so the front matter is the library's YAML,
never hand-written. Only what the hub accepts goes there: `base_model` and `datasets` are hub ids (a local base or
file is named in the body instead, since the hub refuses a commit whose card names a path). The body: results (base
vs fine-tuned), how to load and prompt the model in its own template, the training figures with the report's plots
(drawn into <folder>/plots/ so the card is complete on its own), the data and the resolved recipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.core.atomic import write_text_atomic
from runner.core.console import say
from runner.core.errors import UserError
from runner.models import resolve
from runner.recipe.schema import Recipe
from runner.report import plots
from runner.report.cells import cell, code, duration, fenced, fmt, interval, p_value, table
from runner.report.markdown import lower_is_better  # the report's rule: card and report agree
from runner.runs.eval_summary import EvalSummary
from runner.runs.manifest import Manifest
from runner.runs.records import MetricsRow, read_rows
from runner.runs.rundir import MERGED, RESOLVED, RunDir

CARD = "README.md"
PLOTS = "plots"
PIPELINE = "text-generation"
EXAMPLE_PROMPT = "What can you help me with?"
PLACEHOLDER_NAMESPACE = "YOUR-NAMESPACE"
PLOT_TITLES = {"eval": "Base vs fine-tuned per metric", "loss": "Training loss", "lr": "Learning rate"}
TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}\n"  # the front matter is ModelCardData.to_yaml()


@dataclass(frozen=True)
class Subject:
    """One model folder of a run and everything its card reads."""

    run: RunDir
    manifest: Manifest
    recipe: Recipe
    summary: EvalSummary | None
    merged: bool
    folder: Path
    repo_id: str

    @property
    def adapter(self) -> bool:
        return self.manifest.adapter and not self.merged


def subject(run: RunDir, recipe: Recipe | None = None, merged: bool = False, repo_id: str | None = None,
            folder: Path | None = None) -> Subject:
    """What a card for run's model folder (merged/ when merged) is about; recipe defaults to the run's own."""
    manifest = run.manifest()
    recipe = recipe or run.recipe()
    summary = EvalSummary.read(run.summary_path) if run.summary_path.is_file() else None
    folder = folder or run.file((manifest.merged_dir or MERGED) if merged else manifest.model_dir)
    repo_id = repo_id or recipe.publish.hub_model_id or f"{PLACEHOLDER_NAMESPACE}/{recipe.name}"
    return Subject(run, manifest, recipe, summary, merged, folder, repo_id)


def base_is_hub(manifest: Manifest) -> bool:
    """Whether the base the run trained on is a hub model as it is (read from the hub cache), not a local folder or a
    GGUF file's dequantized weights."""
    cached_as = f"models--{manifest.base_model.replace('/', '--')}"
    return cached_as in Path(manifest.base_model_dir).parts


def base_model_id(manifest: Manifest, recipe: Recipe) -> str | None:
    """The base model's hub id: publish.base_model, or model.base when it was read from the hub cache."""
    if recipe.publish.base_model:
        return recipe.publish.base_model
    return manifest.base_model if base_is_hub(manifest) else None


def base_license(manifest: Manifest) -> dict:
    """license (and license_name/link for `other`) from the base model's own card, when its folder has one."""
    from huggingface_hub import ModelCard

    readme = Path(manifest.base_model_dir) / CARD
    try:
        data = ModelCard.load(readme, ignore_metadata_errors=True).data if readme.is_file() else None
    except (OSError, ValueError):
        return {}
    if data is None or not isinstance(data.license, str):
        return {}
    return {k: v for k in ("license", "license_name", "license_link") if isinstance(v := getattr(data, k, None), str)}


def hub_datasets(recipe: Recipe) -> list[str]:
    return list(dict.fromkeys(d.source.removeprefix("hf:") for d in recipe.data.datasets if d.source.startswith("hf:")))


def _heldout_dataset(recipe: Recipe) -> str:
    """The model-index dataset type of the held-out split: the hub id when one hub dataset feeds it all."""
    feeding = {d.source for d in recipe.data.datasets
               if d.use == "test" or (d.use == "split" and recipe.data.split.test)}
    if len(feeding) == 1 and (only := next(iter(feeding))).startswith("hf:"):
        return only.removeprefix("hf:")
    return f"{recipe.name}-heldout"


def eval_results(s: Subject):
    """One huggingface_hub EvalResult per fine-tuned metric in eval/summary.json."""
    from huggingface_hub import EvalResult

    if s.summary is None:
        return []
    suite = f"suite {s.summary.suite} {s.summary.suite_version}"
    results = []
    for name, metric in s.summary.versus_base().items():
        if metric.value is None:
            continue
        task, _, metric_type = name.rpartition("/")  # standard lm-eval tasks are "<task>/<metric>"
        dataset = ({"dataset_type": task, "dataset_name": f"{task} (lm-evaluation-harness)"} if task else
                   {"dataset_type": _heldout_dataset(s.recipe),
                    "dataset_name": f"{s.recipe.name} held-out test split ({s.summary.n_items} items, {suite})"})
        results.append(EvalResult(task_type=PIPELINE, task_name="Text Generation", metric_type=metric_type,
                                  metric_name=metric_type, metric_value=metric.value, **dataset))
    return results


def card_data(s: Subject):
    from huggingface_hub import ModelCardData

    kind = s.recipe.method.kind
    tags = ["recipe-runner", "axolotl", kind, *(["peft"] if s.adapter else []), *(["merged"] if s.merged else [])]
    licence = {"license": s.recipe.publish.license} if s.recipe.publish.license else base_license(s.manifest)
    results = eval_results(s)  # model-index, named after the repo; no model_name key without results
    index = {"model_name": s.repo_id.rpartition("/")[2], "eval_results": results} if results else {}
    return ModelCardData(base_model=base_model_id(s.manifest, s.recipe), datasets=hub_datasets(s.recipe) or None,
                         library_name="peft" if s.adapter else "transformers", tags=tags, pipeline_tag=PIPELINE,
                         **index, **licence)


def build(s: Subject, written: dict[str, str] | None = None):
    """The card (a huggingface_hub ModelCard); written maps plot names to files under <folder>/plots/ (default:
    the plots already there)."""
    from huggingface_hub import ModelCard

    if written is None:
        written = {name: f"{name}.png" for name in PLOT_TITLES if (s.folder / PLOTS / f"{name}.png").is_file()}
    body = [_intro(s), _results(s, written), _exports(s), _usage(s), _training(s, written), _data(s), _recipe(s)]
    return ModelCard.from_template(card_data(s), template_str=TEMPLATE, body="\n\n".join(p for p in body if p))


def write(s: Subject) -> Path:
    """Draw the report's plots into <folder>/plots/ and write <folder>/README.md; returns the card's path."""
    records = read_rows(s.run.metrics_path, MetricsRow, strict=False)[0] if s.run.metrics_path.is_file() else []
    metrics = s.summary.versus_base() if s.summary else {}
    lower = frozenset(name for name, m in metrics.items() if lower_is_better(name, m.higher_is_better))
    written = plots.write_plots(s.folder / PLOTS, records, metrics, lower)
    return write_text_atomic(s.folder / CARD, str(build(s, written)))


def refresh(run: RunDir) -> list[Path]:
    """Rewrite the card of every model folder the run has (model/, and merged/ after a merge)."""
    try:
        manifest = run.manifest()
    except UserError as err:
        return _not_written(run, err)
    folders = [(False, run.file(manifest.model_dir))]
    if manifest.merged_dir:
        folders.append((True, run.file(manifest.merged_dir)))
    return [card for merged, folder in folders if folder.is_dir() and (card := try_write(run, merged, folder))]


def try_write(run: RunDir, merged: bool = False, folder: Path | None = None) -> Path | None:
    """write() for the stages: a card that cannot be written is a note, never a failed stage (the model is fine)."""
    try:
        return write(subject(run, merged=merged, folder=folder))
    except (UserError, OSError, ValueError) as err:
        _not_written(run, err)
        return None


def _not_written(run: RunDir, err: Exception) -> list:
    say(f"note: model card not written: {err}; `recipe publish {run.path.parent.name} --run {run.run_id} --dry-run` "
        "shows the card")
    return []


# ---------------------------------------------------------------- the body


def _intro(s: Subject) -> str:
    m, recipe = s.manifest, s.recipe
    what = ("A LoRA adapter" if s.adapter else "A full model, the LoRA adapter merged into its base" if s.merged
            else "A fully fine-tuned model")
    hub = base_model_id(m, recipe)
    base = (f"[{hub}](https://huggingface.co/{hub})" if hub else
            f"{code(m.base_model)} (a local model; set `publish.base_model` to its hub id)")
    lora = recipe.method.adapter
    method = recipe.method.kind + (f" (r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout}, target "
                                   f"{lora.target if isinstance(lora.target, str) else ', '.join(lora.target)})"
                                   if lora else "")
    lines = [f"# {s.repo_id.rpartition('/')[2]}", f"{what} fine-tuned from {base} by recipe-runner, recipe "
             f"{code(recipe.name)} {recipe.version} (fingerprint {code(m.fingerprint[:12])}), run {code(m.run_id)}."
             + (f" {_trained_on(m, hub, s.adapter)}" if hub and not base_is_hub(m) else "")
             + (f"\n\n> {cell(recipe.description, 0)}" if recipe.description else ""),
             f"- Method: {method}, {recipe.hardware.precision} on {recipe.hardware.profile}",
             f"- Prompt template: {code(recipe.data.template)}" + (f"; system prompt: {cell(recipe.data.system, 0)}"
                                                                   if recipe.data.system else "")]
    licence = s.recipe.publish.license or base_license(m).get("license")
    lines.append(f"- License: {code(licence)}" if licence else
                 "- License: not stated (set `publish.license`; the base model's terms apply)")
    return "\n\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:])


def _trained_on(m: Manifest, hub: str, adapter: bool) -> str:
    """What the weights it trained on were, when publish.base_model names where they came from, not those weights."""
    if m.base_model.endswith(".gguf"):
        kind = resolve.gguf_file_type(m.base_model)
        what = ("so on " + hub + "'s own weights this adapter answers slightly otherwise than it was evaluated; the "
                "merged model holds the weights it trained on" if adapter else
                "so the model is published merged: the weights it trained on, with the adapter folded in")
        return (f"It was trained on the dequantized weights of the GGUF file {code(m.base_model)}"
                + (f" ({kind})" if kind else "") + f", a quantization of {hub}, which differ from {hub}'s own by "
                f"the quantization error: {what}.")
    return f"It was trained from {code(m.base_model)}, a local model that `publish.base_model` names as {hub}."


def _results(s: Subject, written: dict[str, str]) -> str:
    if s.summary is None:
        return (f"## Results\n\n_Not evaluated yet: `recipe eval {s.manifest.recipe} --run {s.manifest.run_id}` "
                "adds the results here._")
    summary = s.summary
    parts = ["## Results", f"Eval suite {code(summary.suite)} {summary.suite_version} on {summary.n_items} held-out "
             "test items, the base and the fine-tuned model on the same items. Delta is fine-tuned − base, with a "
             "paired-bootstrap 95% interval and a sign test."]
    rows = [[cell(name, 0) + (" (lower is better)" if lower_is_better(name, m.higher_is_better) else ""),
             fmt(m.reference, ".4f"), fmt(m.value, ".4f"), fmt(m.delta, "+.4f"), interval(m.ci95), fmt(m.n),
             p_value(m.p_sign)] for name, m in summary.versus_base().items()]
    parts.append(table(["metric", "base", "fine-tuned", "delta", "95% CI", "n", "sign-test p"], rows, 1)
                 if rows else "_No metrics were computed._")
    judge = summary.judge_versus_base()
    if judge and not judge.skipped and judge.n:
        parts.append(f"Judge ({judge.kind}, {code(judge.model)}): the fine-tuned model wins {judge.wins}, ties "
                     f"{judge.ties} and loses {judge.losses} of {judge.n} pairs against the base model.")
    parts += [f"Skipped {code(task)}: {cell(why, 0)}" for task, why in summary.skipped.items()]
    if "eval" in written:
        parts.append(f"![{PLOT_TITLES['eval']}]({PLOTS}/{written['eval']})")
    return "\n\n".join(parts)


def _exports(s: Subject) -> str:
    """Every artifact `recipe export` wrote (export/export.json), its size and hash, and its score where eval
    scored it as a candidate (export:NAME), against the fine-tuned model on the same items."""
    from runner.runs.export_info import ExportInfo

    if not s.run.export_info_path.is_file():
        return ""
    info = ExportInfo.read(s.run.export_info_path)
    if not info.artifacts:
        return ""
    scored = s.summary.candidates if s.summary else {}
    names = list(dict.fromkeys(n for c in scored.values() for n in c.metrics))[:2]
    rows = []
    for name, a in info.artifacts.items():
        c = scored.get(name if name == "merged" else f"export:{name}")
        figures = []
        for metric in names:
            m = c.metrics.get(metric) if c else None
            figures += [fmt(None if m is None else m.value, ".4f"),
                        "—" if m is None or m.delta is None else f"{m.delta:+.4f} {interval(m.ci95)}"]
        rows.append([code(name), fmt(a.size_bytes / 1e6, ",.1f"), code(a.sha256[:16]) if a.sha256 else "—",
                     cell(a.tool, 0), *figures])
    headers = ["artifact", "size (MB)", "sha256", "made with"]
    for metric in names:
        headers += [cell(metric, 0), "Δ vs fine-tuned (95% CI)"]
    return ("## Exported artifacts\n\nWhat `recipe export` wrote (`export/export.json` in the run), scored where "
            "eval scored it as a candidate, on the same items as the fine-tuned model (paired 95% interval):\n\n" +
            table(headers, rows, 1))


def _example_prompt(s: Subject) -> str | None:
    """One user turn rendered by the recipe's template, exactly as `recipe generate` and eval send it."""
    from runner.evaluate.generate import render_prompt

    for folder in (s.folder, Path(s.manifest.base_model_dir)):
        try:
            tokens = resolve.tokenizer_tokens_read(folder)
        except Exception:  # noqa: BLE001 - any tokenizer that does not load here: try the next folder
            continue
        try:
            return render_prompt(s.recipe, EXAMPLE_PROMPT, tokens)
        except (UserError, ValueError, LookupError) as err:  # a template needing more than one instruction
            say(f"note: the model card shows no example prompt: {err}")
            return None
    return None


def _usage(s: Subject) -> str:
    prompt, stop = _example_prompt(s), s.manifest.stop
    parts = ["## Use it", f"Prompts must be in the format the model was trained on: the recipe's "
             f"{code(s.recipe.data.template)} template" + (" with its system prompt" if s.recipe.data.system else "")
             + f". A user turn asking {EXAMPLE_PROMPT!r} renders as:"]
    parts.append(fenced(prompt, "text") if prompt is not None else "_(the template could not be rendered here)_")
    if stop:
        parts.append("Generation ends at " + ", ".join(code(x) for x in stop) + ".")
    hub = base_model_id(s.manifest, s.recipe)
    if s.adapter and hub:
        load = ("from peft import AutoPeftModelForCausalLM\n\n"
                f"model = AutoPeftModelForCausalLM.from_pretrained({s.repo_id!r})  # loads {hub} under it")
    elif s.adapter:
        load = ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
                f"base = AutoModelForCausalLM.from_pretrained('path/to/base-model')  # {s.manifest.base_model}\n"
                f"model = PeftModel.from_pretrained(base, {s.repo_id!r})")
    else:
        load = ("from transformers import AutoModelForCausalLM\n\n"
                f"model = AutoModelForCausalLM.from_pretrained({s.repo_id!r})")
    snippet = (f"{load}\nfrom transformers import AutoTokenizer\n\ntokenizer = AutoTokenizer.from_pretrained("
               f"{s.repo_id!r})\nprompt = {(prompt if prompt is not None else EXAMPLE_PROMPT)!r}\n"
               "inputs = tokenizer(prompt, return_tensors='pt', add_special_tokens=False)  # the template has them\n"
               f"output = model.generate(**inputs, max_new_tokens={s.recipe.eval.max_new_tokens}, do_sample=False"
               + (f", stop_strings={stop!r}, tokenizer=tokenizer" if stop else "") + ")\n"
               "print(tokenizer.decode(output[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))")
    parts.append(fenced(snippet, "python"))
    return "\n\n".join(parts)


def _training(s: Subject, written: dict[str, str]) -> str:
    m, t = s.manifest, s.manifest.train
    batch = (f"{m.batch.micro} × {m.batch.accumulation} accumulation × {m.batch.world_size} processes = "
             f"{m.batch.global_}" + (", packed" if m.batch.packing else "") if m.batch else None)
    hardware = m.hardware
    rows = [("optimizer steps", fmt(t.steps) if t else None), ("tokens trained", fmt(t.tokens) if t else None),
            ("throughput", f"{fmt(t.tokens_per_s, ',.0f')} tokens/s" if t and t.tokens_per_s else None),
            ("training loss", f"{fmt(t.first_loss, '.4f')} → {fmt(t.final_loss, '.4f')}" if t else None),
            ("final validation loss", fmt(t.final_eval_loss, ".4f") if t and t.final_eval_loss else None),
            ("trainable parameters", f"{fmt(t.params_trainable)} of {fmt(t.params_total)}"
             if t and t.params_trainable else None),
            ("achieved TFLOP/s, MFU", f"{fmt(t.tflops, '.4g')}, {fmt(t.mfu, '.1%')}" if t and t.tflops else None),
            ("learning rate", f"{s.recipe.train.learning_rate:g}, {s.recipe.train.schedule}"), ("batch", batch),
            ("hardware", f"profile {hardware.profile}: {hardware.world_size} × {hardware.gpu_model or hardware.device}"
             if hardware else None),
            ("training time", duration(m.timings["train_s"]) if "train_s" in m.timings else None),
            ("software", ", ".join(f"{k} {m.packages[k]}" for k in ("axolotl", "transformers", "peft", "torch")
                                   if k in m.packages) or None)]
    parts = ["## Training", table(["", ""], [[name, value] for name, value in rows if value])]
    parts += [f"![{PLOT_TITLES[name]}]({PLOTS}/{written[name]})" for name in ("loss", "lr") if name in written]
    return "\n\n".join(parts)


def _data(s: Subject) -> str:
    lines = []
    for d in s.recipe.data.datasets:
        source = d.source
        named = (f"[{source[3:]}](https://huggingface.co/datasets/{source[3:]})" if source.startswith("hf:") else
                 f"{code(source.removeprefix('file:'))} (a local file, not published)")
        columns = ", ".join(f"{var} ← {col}" for var, col in d.fields.items()) or "regex extract"
        use = "divided by data.split" if d.use == "split" else f"all {d.use}"
        lines.append(f"- {named}, split {code(d.split)} ({use}); {columns}")
    info = s.manifest.data
    if info:
        lines.append("- Rows after preparation: " + ", ".join(f"{k} {v:,}" for k, v in info.counts.items()))
    return "## Data\n\n" + "\n".join(lines)


def _recipe(s: Subject) -> str:
    resolved = s.run.file(RESOLVED)
    if not resolved.is_file():
        return ""
    text = resolved.read_text(encoding="utf-8", errors="replace")
    return (f"## Recipe\n\nThe resolved recipe ({RESOLVED} in the run); `recipe train` with it reproduces this run."
            f"\n\n<details><summary>{code(s.recipe.name)} {s.recipe.version}</summary>\n\n"
            f"{fenced(text, 'yaml')}\n\n</details>")
