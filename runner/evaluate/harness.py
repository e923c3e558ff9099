"""lm-evaluation-harness calls for one run: model arguments, task manager, one loaded model per side, and the
per-item rows lm-eval logs, written as eval/results-<model>.json and eval/samples-<model>-<task>.jsonl.

Held-out prompts are tokenized exactly as rendered (add_bos_token=False: templates write BOS themselves);
standard tasks run with lm-eval's defaults on the same loaded model. Seeds are fixed.
"""
from __future__ import annotations

import gc
import json
import math
import os
import time
from pathlib import Path

from runner.core.atomic import write_json_atomic
from runner.core.console import say
from runner.evaluate.scoring import GENERATE_TASK, PERPLEXITY_TASK, SEED
from runner.models import numerics
from runner.models.numerics import device_and_dtype  # noqa: F401  (evaluation and tests call harness.device_and_dtype)
from runner.recipe.suites import Suite, include_task_names
from runner.runs.manifest import Manifest
from runner.runs.records import SampleRow, write_rows


def model_args(run, manifest: Manifest, which: str, recipe, dtype: str) -> dict:
    """lm-eval `hf` model arguments for the base or the fine-tuned model."""
    args = {"pretrained": manifest.base_model_dir, "dtype": dtype,
            "trust_remote_code": recipe.model.trust_remote_code}
    if which == "finetuned":
        model = run.file(manifest.model_dir)
        if manifest.adapter:
            args["peft"] = str(model)
        else:
            args["pretrained"] = str(model)
            if not (model / "tokenizer_config.json").is_file():
                args["tokenizer"] = manifest.base_model_dir
    return args


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


def standard_tasks(suite: Suite, manager) -> tuple[list[str], dict[str, str]]:
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
            say(f"eval: skipping {name}: {skipped[name]}")
    return runnable, skipped


def task_manager(heldout_dir: Path | None, suite: Suite):
    from lm_eval.tasks import TaskManager

    extra = [str(d) for d in suite.include_dirs()]
    custom = include_task_names(tuple(extra))
    include = [str(heldout_dir)] * (heldout_dir is not None) + extra
    needs_builtin = any(name not in custom for name in suite.lm_eval_tasks)
    if needs_builtin:
        say("eval: indexing lm-eval's tasks (about 10 s)")
    return TaskManager(include_path=include, include_defaults=needs_builtin)


def load_model(args: dict, device: str, recipe):
    """lm-eval's `hf` model for these arguments (loaded once per candidate), loaded under the recipe's numerics
    (runner.models.numerics: lm-eval's `peft=` keeps a LoRA adapter in float32, as `recipe generate` does)."""
    from lm_eval.api.registry import get_model

    how = numerics.decide(recipe, recipe.eval.batch_size)
    with how.applied():
        return get_model("hf").create_from_arg_obj(args, {"batch_size": how.batch_size, "device": device})


def load_gguf(args: dict, recipe):
    """A GGUF file in llama.cpp (runner.evaluate.llamacpp_lm), with the threads every other candidate gets."""
    from runner.evaluate.llamacpp_lm import LlamaCppLM

    how = numerics.decide(recipe, recipe.eval.batch_size)
    return LlamaCppLM(Path(args["gguf"]), how.threads, args.get("context_length"), recipe.eval.max_new_tokens)


def load_endpoint(args: dict, api_key_env: str | None):
    """lm-eval's local-chat-completions on the endpoint (runner.evaluate.endpoint_lm): one request at a time."""
    from runner.evaluate.endpoint_lm import EndpointChat

    return EndpointChat(api_key_env=api_key_env, **args)


class AnswerClock:
    """Answer tokens per second of one candidate: lm-eval's generate_until calls timed, their answers' tokens
    counted with the candidate's own tokenizer (`count`, for a candidate whose model has none here)."""

    def __init__(self, count=None):
        self.seconds = 0.0
        self.tokens = 0
        self.count = count

    def watch(self, lm) -> None:
        inner = lm.generate_until

        def timed(requests, *rest, **kwargs):
            started = time.perf_counter()
            answers = inner(requests, *rest, **kwargs)
            self.seconds += time.perf_counter() - started
            self.tokens += sum(self.count(a) if self.count else _count_tokens(lm, a) for a in answers)
            return answers

        lm.generate_until = timed  # lm-eval looks the request type up on the instance

    @property
    def per_second(self) -> float | None:
        return round(self.tokens / self.seconds, 1) if self.seconds > 0 and self.tokens else None


def _count_tokens(lm, text: str) -> int:
    if hasattr(lm, "count_tokens"):
        return lm.count_tokens(text)
    return len(lm.tokenizer.encode(text, add_special_tokens=False))


def run_model(args: dict, device: str, calls: list[tuple[str, list[str], bool]], manager, recipe, lm=None,
              clock: AnswerClock | None = None) -> dict:
    """Load one model once (or take the loaded `lm`) and run each (label, tasks, add_bos) call through
    lm_eval.simple_evaluate; `clock` times its answers."""
    import lm_eval

    lm = lm if lm is not None else load_model(args, device, recipe)
    if clock is not None:
        clock.watch(lm)
    out = {}
    how = numerics.decide(recipe, recipe.eval.batch_size)  # threads, autocast off: as generate and serve compute
    try:
        for label, tasks, add_bos in calls:
            lm.add_bos_token = add_bos
            manager.task_group_map.clear()  # reusing a TaskManager must not rename group subtasks "-1"
            with how.applied():
                out[label] = lm_eval.simple_evaluate(
                    model=lm, tasks=tasks, task_manager=manager, limit=recipe.eval.max_items, bootstrap_iters=0,
                    log_samples=True, random_seed=SEED, numpy_random_seed=SEED, torch_random_seed=SEED,
                    fewshot_random_seed=SEED)
            out[label]["config"] |= {"model_args": args, "batch_size": how.batch_size, "device": device}
    finally:
        del lm
        gc.collect()
    return out


def _sample_row(task: str, sample: dict, metric_names: list[str]) -> dict:
    doc = sample.get("doc") or {}
    args = sample.get("arguments") or [[""]]
    row = {"doc_id": sample["doc_id"], "prompt": doc.get("prompt", args[0][0] if args[0] else ""),
           "reference": doc.get("reference", sample.get("target"))}
    if task == GENERATE_TASK:
        row["prediction"] = sample["prediction"]
        row["scores"] = {m: sample[m] for m in metric_names}
    elif task == PERPLEXITY_TASK:
        loglikelihood, tokens = sample["perplexity"]
        row |= {"loglikelihood": loglikelihood, "tokens": tokens,
                "scores": {"perplexity": math.exp(-loglikelihood / tokens)}}
    else:
        row["response"] = sample.get("filtered_resps")
        row["scores"] = {m: sample[m] for m in sample.get("metrics", [])
                         if isinstance(sample.get(m), (int, float)) and not isinstance(sample.get(m), bool)}
    return _plain(row)


def write_outputs(run, which: str, results: dict, suite: Suite) -> dict[str, list[dict]]:
    """results-<which>.json and samples-<which>-<task>.jsonl; returns the sample rows by task."""
    rows: dict[str, list[dict]] = {}
    for output in results.values():
        for task, samples in (output.get("samples") or {}).items():
            rows[task] = sorted((_sample_row(task, s, suite.generation_metrics) for s in samples),
                                key=lambda r: r["doc_id"])
            write_rows(run.samples_path(which, task), [SampleRow.model_validate(r) for r in rows[task]])
    without_samples = {label: {k: v for k, v in out.items() if k != "samples"} for label, out in results.items()}
    write_json_atomic(run.results_path(which), _plain(without_samples))
    return rows


