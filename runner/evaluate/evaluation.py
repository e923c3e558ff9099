"""The eval stage: run a suite on the base and the fine-tuned model with lm-evaluation-harness.

evaluate(run, recipe, suite) writes into run/eval/:
  tasks/                              lm-eval task YAMLs for the held-out split (runner.evaluate.tasks)
  results-base.json, results-finetuned.json
                                      lm-eval's results dicts, JSON-safe, keyed by "heldout" / "standard"
  samples-<model>-<task>.jsonl        per item: doc_id, prompt, reference, prediction, scores
  judge.json                          per-item pairwise verdicts (when the suite has a judge)
  summary.json                        per metric: base, finetuned, delta, ci95, n, p_sign (paired over the
                                      same items), plus skipped tasks, judge tally, n_items, suite, version
Both models see the same items: same task files, same `limit`, deterministic order, fixed seeds.
Held-out prompts are tokenized exactly as rendered (add_bos_token=False: templates write BOS
themselves); standard tasks run with lm-eval's defaults on the same loaded model.
"""
from __future__ import annotations

import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from runner.data import fields
from runner.evaluate import tasks
from runner.models import resolve
from runner.core import paths
from runner.evaluate import stats
from runner.recipe import templates
from runner.core.errors import Problem, UserError
from runner.evaluate.judge import JudgeUnavailable, judge_pair, local_model_asker, openai_chat_asker, tally
from runner.recipe.schema import ModelSpec
from runner.recipe.suites import Suite, for_recipe, include_task_names
from runner.core.atomic import write_json_atomic, write_text_atomic

MODELS = ("base", "finetuned")
BOOTSTRAP_ITERS = 2000
SEED = 0
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _say(message: str) -> None:
    print(f"eval: {message}", file=sys.stderr, flush=True)


def check_trained(run) -> dict:
    """The run's manifest, or a UserError when it has no trained model to evaluate."""
    manifest = run.manifest()
    model = run.file(manifest.get("model_dir") or "model")
    marker = "adapter_config.json" if manifest.get("adapter") else "config.json"
    if not (model / marker).is_file():
        raise UserError(Problem(paths.display(run.path), "model", f"no trained model in {paths.display(model)} "
                                f"(status: {manifest.get('status', 'unknown')}); train it first: recipe train "
                                f"{manifest.get('recipe', run.path.parent.name)}"))
    base = manifest.get("base_model_dir")
    if not base or (Path(base).is_absolute() and not Path(base).is_dir()):
        raise UserError(Problem(paths.display(run.manifest_path), "base_model_dir", f"base model {base!r} not "
                                "found; rebuild it (e.g. `recipe tiny-model`) or train the run again"))
    return manifest


def model_args(run, manifest: dict, which: str, recipe, dtype: str) -> dict:
    """lm-eval `hf` model arguments for the base or the fine-tuned model."""
    args = {"pretrained": manifest["base_model_dir"], "dtype": dtype,
            "trust_remote_code": recipe.model.trust_remote_code}
    if which == "finetuned":
        model = run.file(manifest.get("model_dir") or "model")
        if manifest.get("adapter"):
            args["peft"] = str(model)
        else:
            args["pretrained"] = str(model)
            if not (model / "tokenizer_config.json").is_file():
                args["tokenizer"] = manifest["base_model_dir"]
    return args


def _device(recipe) -> tuple[str, str]:
    import torch

    if recipe.hardware.device == "cuda" and torch.cuda.is_available():
        return "cuda", _DTYPES[recipe.hardware.precision]
    return "cpu", "float32"


def _plain(value):
    """JSON-safe copy: lm-eval's objects become strings, non-finite floats None."""
    from lm_eval.utils import handle_non_serializable

    def clean(obj):
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else None
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj

    return clean(json.loads(json.dumps(value, default=handle_non_serializable)))


def _standard_tasks(suite: Suite, manager) -> tuple[list[str], dict[str, str]]:
    """Split the suite's lm-eval tasks into those whose data loads here and those skipped, with reasons."""
    runnable, skipped = [], {}
    for name in suite.lm_eval_tasks:
        try:
            manager.load_task_or_group([name])  # builds the task: loads its dataset
            runnable.append(name)
        except Exception as err:  # noqa: BLE001 - a task that cannot be built here is skipped, never a zero
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            if isinstance(err, (ConnectionError, OSError)) or type(err).__module__.startswith("datasets"):
                offline = os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes", "on")
                skipped[name] = f"its dataset could not be loaded{' (offline)' if offline else ''}: {detail}"
            else:
                skipped[name] = f"could not be built ({type(err).__name__}): {detail}"
            _say(f"skipping {name}: {skipped[name]}")
    return runnable, skipped


def _task_manager(heldout_dir: Path | None, suite: Suite):
    from lm_eval.tasks import TaskManager

    extra = [str(d) for d in suite.include_dirs()]
    custom = include_task_names(tuple(extra))
    include = [str(heldout_dir)] * (heldout_dir is not None) + extra
    needs_builtin = any(name not in custom for name in suite.lm_eval_tasks)
    if needs_builtin:
        _say("indexing lm-eval's tasks (about 10 s)")
    return TaskManager(include_path=include, include_defaults=needs_builtin)


def _run_model(args: dict, device: str, calls: list[tuple[str, list[str], bool]], manager, recipe) -> dict:
    """Load one model once and run each (label, tasks, add_bos) call through lm_eval.simple_evaluate."""
    import lm_eval
    from lm_eval.api.registry import get_model

    lm = get_model("hf").create_from_arg_obj(args, {"batch_size": recipe.eval.batch_size, "device": device})
    out = {}
    try:
        for label, tasks, add_bos in calls:
            lm.add_bos_token = add_bos
            manager.task_group_map.clear()  # reusing a TaskManager must not rename group subtasks "-1"
            out[label] = lm_eval.simple_evaluate(
                model=lm, tasks=tasks, task_manager=manager, limit=recipe.eval.max_items, bootstrap_iters=0,
                log_samples=True, random_seed=SEED, numpy_random_seed=SEED, torch_random_seed=SEED,
                fewshot_random_seed=SEED)
            out[label]["config"] |= {"model_args": args, "batch_size": recipe.eval.batch_size, "device": device}
    finally:
        del lm
        gc.collect()
    return out


def _sample_row(task: str, sample: dict, metric_names: list[str]) -> dict:
    doc = sample.get("doc") or {}
    args = sample.get("arguments") or [[""]]
    row = {"doc_id": sample["doc_id"], "prompt": doc.get("prompt", args[0][0] if args[0] else ""),
           "reference": doc.get("reference", sample.get("target"))}
    if task == tasks.GENERATE_TASK:
        row["prediction"] = sample["prediction"]
        row["scores"] = {m: sample[m] for m in metric_names}
    elif task == tasks.PERPLEXITY_TASK:
        loglikelihood, tokens = sample["perplexity"]
        row |= {"loglikelihood": loglikelihood, "tokens": tokens,
                "scores": {"perplexity": math.exp(-loglikelihood / tokens)}}
    else:
        row["response"] = sample.get("filtered_resps")
        row["scores"] = {m: sample[m] for m in sample.get("metrics", [])
                         if isinstance(sample.get(m), (int, float)) and not isinstance(sample.get(m), bool)}
    return _plain(row)


def _write_outputs(run, which: str, results: dict, suite: Suite) -> dict[str, list[dict]]:
    """results-<which>.json and samples-<which>-<task>.jsonl; returns the sample rows by task."""
    rows: dict[str, list[dict]] = {}
    for output in results.values():
        for task, samples in (output.get("samples") or {}).items():
            rows[task] = sorted((_sample_row(task, s, suite.generation_metrics) for s in samples),
                                key=lambda r: r["doc_id"])
            write_text_atomic(run.file("eval", f"samples-{which}-{task}.jsonl"),
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[task]))
    without_samples = {label: {k: v for k, v in out.items() if k != "samples"} for label, out in results.items()}
    write_json_atomic(run.file("eval", f"results-{which}.json"), _plain(without_samples))
    return rows


def _paired(base: list[dict] | None, ft: list[dict]) -> tuple[list[dict] | None, list[dict]]:
    if base is None:
        return None, ft
    keep = {r["doc_id"] for r in base} & {r["doc_id"] for r in ft}
    return [r for r in base if r["doc_id"] in keep], [r for r in ft if r["doc_id"] in keep]


def _one_sided(values: list[float]) -> dict:
    return {"base": None, "finetuned": round(float(np.mean(values)), 6), "delta": None, "ci95": None,
            "n": len(values), "p_sign": None}


def perplexity_summary(base: list[dict] | None, ft: list[dict]) -> dict:
    """Per-token perplexity of each model, bootstrap CI of the difference, sign test on per-item log-likelihood."""
    f_ll, f_n = (np.array([r[k] for r in ft], dtype=float) for k in ("loglikelihood", "tokens"))
    ppl = lambda ll, n: np.exp(-ll.sum(axis=-1) / n.sum(axis=-1))  # noqa: E731
    if base is None:
        return _one_sided([float(ppl(f_ll, f_n))]) | {"n": len(ft)}
    b_ll, b_n = (np.array([r[k] for r in base], dtype=float) for k in ("loglikelihood", "tokens"))
    idx = np.random.default_rng(SEED).integers(0, len(ft), size=(BOOTSTRAP_ITERS, len(ft)))
    lo, hi = np.percentile(ppl(f_ll[idx], f_n[idx]) - ppl(b_ll[idx], b_n[idx]), [2.5, 97.5])
    sign = stats.sign_test(b_ll / b_n, f_ll / f_n)
    b, f = float(ppl(b_ll, b_n)), float(ppl(f_ll, f_n))
    return {"base": round(b, 6), "finetuned": round(f, 6), "delta": round(f - b, 6),
            "ci95": [round(float(lo), 6), round(float(hi), 6)], "n": len(ft), "p_sign": round(sign["p_value"], 6)}


def summarize(rows: dict[str, dict[str, list[dict]]], suite: Suite) -> dict[str, dict]:
    """Per metric {"base","finetuned","delta","ci95","n","p_sign"}; standard tasks as "<task>/<metric>"."""
    metrics: dict[str, dict] = {}
    ft_rows, base_rows = rows["finetuned"], rows.get("base")
    for task, ft in ft_rows.items():
        base, ft = _paired(base_rows.get(task) if base_rows is not None else None, ft)
        if not ft:
            continue
        if task == tasks.PERPLEXITY_TASK:
            metrics["perplexity"] = perplexity_summary(base, ft)
            continue
        names = sorted(ft[0]["scores"])
        label = (lambda m: m) if task == tasks.GENERATE_TASK else (lambda m: f"{task}/{m}")
        if base is None:
            metrics |= {label(m): _one_sided([r["scores"][m] for r in ft]) for m in names}
            continue
        summary = stats.summarize({m: [r["scores"][m] for r in base] for m in names},
                                  {m: [r["scores"][m] for r in ft] for m in names}, iters=BOOTSTRAP_ITERS, seed=SEED)
        metrics |= {label(m): value for m, value in summary.items()}
    return metrics


# ---------------------------------------------------------------- the pairwise judge


def _question(item: dict, recipe) -> str:
    """The user's question for the judge: the row's instruction (+ input) or last user turn; else the prompt."""
    try:
        row, template = json.loads(item["row"]), templates.load(recipe.data.template)
        for spec in recipe.data.datasets:
            try:
                example = fields.to_example(row, spec, template)
            except (fields.IncompleteRow, AttributeError, TypeError):
                continue
            if "messages" in example:
                return [m for m in example["messages"] if m["role"] == "user"][-1]["content"]
            return "\n\n".join(x for x in (example.get("instruction"), example.get("input")) if x)
    except (ValueError, KeyError, IndexError, UserError):
        pass
    return item["prompt"]


def _asker(spec):
    """ask(messages) for the suite's judge; raises JudgeUnavailable when the model cannot be had."""
    if spec.kind == "openai":
        return openai_chat_asker(spec.url, spec.model, spec.api_key_env)
    try:
        model_dir = resolve.resolve_base(ModelSpec(base=spec.model), source="judge.model")
        return local_model_asker(str(model_dir), max_new_tokens=spec.max_new_tokens)
    except UserError as err:
        raise JudgeUnavailable(f"local judge {spec.model!r}: {err.problems[0].message}") from None
    except (OSError, ValueError, RuntimeError) as err:
        raise JudgeUnavailable(f"local judge {spec.model!r} could not be loaded ({type(err).__name__}: "
                               f"{err})") from None


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def judge_run(run, recipe, suite: Suite) -> dict:
    """Judge base vs fine-tuned answers per item into eval/judge.json; the tally, or {"skipped": reason}."""
    spec, task = suite.judge, tasks.GENERATE_TASK
    base_file, ft_file = (run.file("eval", f"samples-{m}-{task}.jsonl") for m in MODELS)
    result: dict = {"kind": spec.kind, "model": spec.model}
    if not (base_file.is_file() and ft_file.is_file()):
        result["skipped"] = "the judge compares base and fine-tuned answers; set eval.compare_base: true"
    else:
        items = {i["doc_id"]: i for i in _read_jsonl(tasks.tasks_dir(run) / tasks.ITEMS_FILE)}
        base = {r["doc_id"]: r for r in _read_jsonl(base_file)}
        pairs = [(base[r["doc_id"]], r) for r in _read_jsonl(ft_file) if r["doc_id"] in base][:spec.max_items]
        _say(f"judge ({spec.kind} {spec.model}): {len(pairs)} items, both answer orders")
        verdicts = []
        try:
            ask = _asker(spec)
            for b, f in pairs:
                verdict = judge_pair(_question(items[f["doc_id"]], recipe), f["reference"], b["prediction"],
                                     f["prediction"], ask)
                verdicts.append({"doc_id": f["doc_id"], "base": b["prediction"], "finetuned": f["prediction"],
                                 **verdict})
            result |= tally(verdicts)
        except JudgeUnavailable as err:
            result["skipped"] = str(err)
        write_json_atomic(run.file("eval", "judge.json"), {**result, "items": verdicts})
    if "skipped" in result:
        _say(f"judge skipped: {result['skipped']}")
    return result


def evaluate(run, recipe, suite: Suite | None = None) -> dict:
    """Evaluate a trained run on its suite (base and fine-tuned); writes run/eval/ and returns the summary."""
    suite = suite or for_recipe(recipe)
    manifest = check_trained(run)
    started = time.monotonic()
    timings = dict(manifest.get("timings") or {})
    try:
        for stale in ("samples-*.jsonl", "results-*.json", "judge.json", "summary.json"):
            for path in run.file("eval").glob(stale):  # a re-run with another suite must not leave old files
                path.unlink()
        _say(f"suite {suite.name} {suite.version}")
        heldout = None
        if suite.metrics or suite.judge:
            _say(f"writing lm-eval tasks for the held-out split to {paths.display(tasks.tasks_dir(run))}")
            heldout = tasks.write_tasks(run, recipe, suite)
        manager = _task_manager(heldout.dir if heldout else None, suite)
        standard, skipped = _standard_tasks(suite, manager)
        calls = [c for c in (("heldout", heldout.names if heldout else [], False), ("standard", standard, None))
                 if c[1]]
        device, dtype = _device(recipe)
        rows: dict[str, dict[str, list[dict]]] = {}
        for which in MODELS if recipe.eval.compare_base else ("finetuned",):
            phase = time.monotonic()
            if calls:
                items = f", {heldout.n_items} held-out items" if heldout else ""
                task_names = ", ".join(n for _, names, _ in calls for n in names)
                _say(f"{which} model: {task_names} ({device}, {dtype}{items})")
            results = _run_model(model_args(run, manifest, which, recipe, dtype), device, calls, manager,
                                 recipe) if calls else {}
            rows[which] = _write_outputs(run, which, results, suite)
            timings[f"eval_{which}_s"] = round(time.monotonic() - phase, 2)
        judge = None
        if suite.judge is not None:
            phase = time.monotonic()
            judge = judge_run(run, recipe, suite)
            timings["judge_s"] = round(time.monotonic() - phase, 2)
        summary = {"metrics": summarize(rows, suite), "skipped": skipped, "judge": judge,
                   "n_items": heldout.n_items if heldout else 0, "suite": suite.name,
                   "suite_version": suite.version, "bootstrap_iters": BOOTSTRAP_ITERS, "seed": SEED}
        write_json_atomic(run.file("eval", "summary.json"), summary)
    except BaseException as err:
        run.update(status="failed", error={"stage": "eval", "message": str(err) or type(err).__name__})
        raise
    timings["eval_s"] = round(time.monotonic() - started, 2)
    run.update(status="evaluated", error=None, timings=timings,
               eval={"suite": suite.name, "suite_version": suite.version, "summary": "eval/summary.json"})
    _say(f"wrote {paths.display(run.file('eval', 'summary.json'))} in {timings['eval_s']:.0f} s")
    return summary


def format_summary(summary: dict) -> str:
    """summary.json as a terminal table: base, fine-tuned, delta, 95% CI, sign-test p, n; then skips and judge."""
    def num(x, signed=False):
        return "-" if x is None else (f"{x:+.4f}" if signed else f"{x:.4f}")

    lines = [f"suite {summary['suite']} {summary['suite_version']}, {summary['n_items']} held-out items",
             f"{'metric':28} {'base':>10} {'fine-tuned':>10} {'delta':>10} {'95% CI':>21} {'p(sign)':>8} {'n':>5}"]
    for name, m in summary["metrics"].items():
        ci = "-" if m["ci95"] is None else f"[{num(m['ci95'][0], True)}, {num(m['ci95'][1], True)}]"
        lines.append(f"{name:28} {num(m['base']):>10} {num(m['finetuned']):>10} {num(m['delta'], True):>10} "
                     f"{ci:>21} {num(m['p_sign']):>8} {m['n']:>5}")
    lines += [f"skipped {task}: {reason}" for task, reason in summary["skipped"].items()]
    judge = summary.get("judge")
    if judge:
        lines.append(f"judge skipped: {judge['skipped']}" if "skipped" in judge else
                     f"judge ({judge['kind']} {judge['model']}): fine-tuned {judge['wins']} wins, {judge['ties']} ties, "
                     f"{judge['losses']} losses of {judge['n']}")
    return "\n".join(lines) + "\n"
