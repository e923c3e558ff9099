"""Write lm-eval task YAMLs for a run's held-out test split into run/eval/tasks/.

Two tasks, both reading the same items file (absolute path: lm-eval resolves relative data_files
against the working directory):
  recipe_heldout_generate    generate_until on the prompt exactly as rendered for training, stopping at
                             the run's stop strings; per-item suite metrics via runner.evaluate.task_hooks
  recipe_heldout_perplexity  loglikelihood of the reference given the prompt; aggregated by lm-eval's
                             weighted_perplexity into per-token perplexity (token counts precomputed here
                             the way lm-eval splits context and continuation)
`doc_to_text: prompt` / `doc_to_target: reference` name dataset columns, so lm-eval passes them through
untouched (a Jinja string would turn a reference like "[1, 2]" into a list), and `target_delimiter: ""`
keeps lm-eval from appending a space to the prompt. The folder loads with
`TaskManager(include_path=...)` or `lm-eval run --include_path run/eval/tasks ...`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runner.core import jsonl, paths
from runner.core.atomic import write_json_atomic, write_text_atomic
from runner.core.errors import Problem, UserError
from runner.core.yamlio import dump_yaml
from runner.evaluate.scoring import GENERATE_TASK, PERPLEXITY_TASK
from runner.evaluate.task_hooks import CONFIG_FILE, SHIM
from runner.metrics import registry as metrics
from runner.recipe.suites import Suite

ITEMS_FILE = "heldout.jsonl"
SHIM_FILE = "recipe_metrics.py"


@dataclass(frozen=True)
class HeldoutTasks:
    dir: Path
    names: list[str]  # the task names written (generation and/or perplexity)
    n_items: int  # items lm-eval will evaluate (after eval.max_items)
    limit: int | None  # the `limit` to pass to lm-eval


def tasks_dir(run) -> Path:
    """run/eval/tasks/: the folder to pass to lm-eval as include_path."""
    return run.tasks_dir()


def read_test_split(run) -> list[dict]:
    """The run's held-out test rows (data/test.jsonl); a UserError when there are none."""
    path = run.split_path("test")
    where = paths.display(path)
    if not path.is_file():
        raise UserError(Problem(where, "", "the run has no held-out test split; set data.split.test in the recipe "
                                "and train again"))
    rows = jsonl.read(path).rows
    if not rows:
        raise UserError(Problem(where, "data.split.test", "the held-out test split is empty; set data.split.test "
                                "to a row count or fraction and train again"))
    for number, row in enumerate(rows, 1):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("reference"), str):
            raise UserError(Problem(where, "", f"line {number} has no prompt/reference; prepare the data again "
                                    "with this version of recipe-runner", number))
    return rows


def continuation_tokens(tokenizer, prompt: str, reference: str) -> int:
    """Tokens lm-eval scores for `reference` after `prompt` (HFLM._encode_pair: trailing whitespace of the
    context moves into the continuation; the whole string is encoded and split at the context length)."""
    spaces = len(prompt) - len(prompt.rstrip())
    context, continuation = (prompt[:-spaces], prompt[-spaces:] + reference) if spaces else (prompt, reference)
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    return max(1, len(whole) - len(tokenizer.encode(context, add_special_tokens=False)))


def _sql_database(suite: Suite, rows: list[dict], where: str) -> str | None:
    executed = metrics.executing_sql(suite.metrics)
    if not executed:
        return None
    return suite.database_for([(n, str((row.get("row") or {}).get("db", ""))) for n, row in enumerate(rows, 1)],
                              executed, where)


def _items(rows: list[dict], tokenizer, prompts: list[str] | None = None) -> list[dict]:
    items = []
    for index, row in enumerate(rows):
        original = row.get("row") or {}
        if prompts is not None:  # a candidate prompted otherwise (few-shot, another template): same item, reference
            row = row | {"prompt": prompts[index]}
        item = {"doc_id": index, "prompt": row["prompt"], "reference": row["reference"],
                "source": str(row.get("source", "")), "db": str(original.get("db", "")) if isinstance(original, dict)
                else "", "row": json.dumps(original, ensure_ascii=False, sort_keys=True)}
        if tokenizer is not None:
            item["n_tokens"] = continuation_tokens(tokenizer, row["prompt"], row["reference"])
        items.append(item)
    return items


def _task_yaml(config: dict, process_results: str) -> str:
    # yaml.safe_dump cannot write lm-eval's `!function` tag, so that one line is appended by hand.
    return dump_yaml(config) + f"process_results: !function {SHIM_FILE[:-3]}.{process_results}\n"


def write_tasks(run, recipe, suite: Suite, folder: Path | None = None, prompts: list[str] | None = None,
                stop: list[str] | None = None, tokenizer_dir: str | None = None) -> HeldoutTasks:
    """Write the held-out items, task YAMLs, metric shim and its config into run/eval/tasks/ (or `folder`: a
    candidate's own prompts, stop strings and tokenizer for perplexity token counts)."""
    manifest = run.manifest()
    rows = read_test_split(run)
    folder = folder or tasks_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):  # a task dropped from the suite must not linger in the include path
        old.unlink()
    want_ppl = "perplexity" in suite.metrics
    tokenizer = None
    if want_ppl:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or manifest.base_model_dir,
                                                  trust_remote_code=recipe.model.trust_remote_code)
    items_path = folder / ITEMS_FILE
    jsonl.write(items_path, _items(rows, tokenizer, prompts))
    stop = manifest.stop if stop is None else stop
    write_json_atomic(folder / CONFIG_FILE, {
        "metrics": suite.generation_metrics, "stop": stop, "package_root": str(paths.PACKAGE_DIR.parent),
        "sql_database": _sql_database(suite, rows, paths.display(run.split_path("test")))})
    write_text_atomic(folder / SHIM_FILE, SHIM)
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(items_path.resolve())}},
              "test_split": "test", "doc_to_text": "prompt", "doc_to_target": "reference", "target_delimiter": "",
              "num_fewshot": 0, "metadata": {"version": 1, "suite": suite.name, "suite_version": suite.version}}
    names = []
    if suite.needs_generation:
        metric_list = [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                       for m in suite.generation_metrics]
        metric_list.append({"metric": "prediction", "aggregation": "bypass", "higher_is_better": True})
        config = {"task": GENERATE_TASK, **common, "output_type": "generate_until",
                  "generation_kwargs": {"until": stop, "max_gen_toks": recipe.eval.max_new_tokens, "do_sample": False},
                  "metric_list": metric_list}
        write_text_atomic(folder / f"{GENERATE_TASK}.yaml", _task_yaml(config, "process_generation"))
        names.append(GENERATE_TASK)
    if want_ppl:
        config = {"task": PERPLEXITY_TASK, **common, "output_type": "loglikelihood",
                  "metric_list": [{"metric": "perplexity", "aggregation": "weighted_perplexity",
                                   "higher_is_better": False}]}
        write_text_atomic(folder / f"{PERPLEXITY_TASK}.yaml", _task_yaml(config, "process_perplexity"))
        names.append(PERPLEXITY_TASK)
    limit = recipe.eval.max_items
    return HeldoutTasks(folder, names, min(limit, len(rows)) if limit else len(rows), limit)
