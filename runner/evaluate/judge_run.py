"""The suite's pairwise judge over a run: base vs fine-tuned answers per held-out item, both answer orders,
per-item verdicts in eval/judge.json and the tally for eval/summary.json."""
from __future__ import annotations

import json

from runner.core import jsonl
from runner.core.atomic import write_json_atomic
from runner.core.console import say
from runner.core.errors import UserError
from runner.data import fields
from runner.evaluate import tasks
from runner.evaluate.judge import JudgeUnavailable, judge_pair, local_model_asker, openai_chat_asker, tally
from runner.evaluate.summary import GENERATE_TASK, JudgeSummary
from runner.models import resolve
from runner.recipe import suites, templates
from runner.recipe.schema import ModelSpec
from runner.recipe.suites import Suite

MODELS = ("base", "finetuned")


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


def _asker(spec, root=None):
    """ask(messages) for the suite's judge; raises JudgeUnavailable when the model cannot be had. A relative
    local model path is under the workspace, else under root (the suite file's layer)."""
    if spec.kind == "openai":
        return openai_chat_asker(spec.url, spec.model, spec.api_key_env)
    try:
        model_dir = resolve.resolve_base(ModelSpec(base=spec.model), source="judge.model", root=root)
        return local_model_asker(str(model_dir), max_new_tokens=spec.max_new_tokens)
    except UserError as err:
        raise JudgeUnavailable(f"local judge {spec.model!r}: {err.problems[0].message}") from None
    except (OSError, ValueError, RuntimeError) as err:
        raise JudgeUnavailable(f"local judge {spec.model!r} could not be loaded ({type(err).__name__}: "
                               f"{err})") from None


def judge_run(run, recipe, suite: Suite) -> JudgeSummary:
    """Judge base vs fine-tuned answers per item into eval/judge.json; the tally, or why it was skipped."""
    spec, task = suite.judge, GENERATE_TASK
    base_file, ft_file = (run.file("eval", f"samples-{m}-{task}.jsonl") for m in MODELS)
    result: dict = {"kind": spec.kind, "model": spec.model}
    if not (base_file.is_file() and ft_file.is_file()):
        result["skipped"] = "the judge compares base and fine-tuned answers; set eval.compare_base: true"
    else:
        items = {i["doc_id"]: i for i in jsonl.read(tasks.tasks_dir(run) / tasks.ITEMS_FILE).rows}
        base = {r["doc_id"]: r for r in jsonl.read(base_file).rows}
        pairs = [(base[r["doc_id"]], r) for r in jsonl.read(ft_file).rows if r["doc_id"] in base][:spec.max_items]
        say(f"eval: judge ({spec.kind} {spec.model}): {len(pairs)} items, both answer orders")
        verdicts = []
        try:
            ask = _asker(spec, suites.root_of(suite))
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
        say(f"eval: judge skipped: {result['skipped']}")
    return JudgeSummary.model_validate(result)


