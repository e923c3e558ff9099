"""The suite's judge over a run's candidates: pairwise (both answer orders, every pair or each against the
reference) and single-answer grading, per item into eval/judge.json, tallies, Bradley-Terry ranking and grades for
eval/summary.json. The prompts are files, eval_suites/<judge.prompts>/pairwise.yaml and single.yaml, with a version.

A judge that cannot be reached, or fails mid-way, leaves the judge section `skipped` with the reason (the
report shows it); a reply without a verdict is counted as unparseable (and a tie), never read as a verdict.
"""
from __future__ import annotations

import itertools
import json

import numpy as np

from runner.core import jsonl, paths
from runner.core.console import say
from runner.core.errors import Problem, UserError
from runner.core.yamlio import read_yaml
from runner.data import fields
from runner.evaluate import ranking, stats, tasks
from runner.evaluate.judge import JudgeUnavailable, grade, judge_pair, local_model_asker, openai_chat_asker, tally
from runner.evaluate.scoring import GENERATE_TASK
from runner.models import resolve
from runner.recipe import suites, templates
from runner.recipe.schema import ModelSpec
from runner.recipe.suites import Suite
from runner.runs.eval_summary import BOOTSTRAP_ITERS, SEED, JudgesSummary
from runner.runs.records import JudgeFile, SampleRow, read_rows

MODELS = ("base", "finetuned")
PROMPT_KEYS = {"pairwise": ("version", "system", "user"), "single": ("version", "system", "user", "user_reference")}


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
        return openai_chat_asker(spec.url, spec.model, spec.api_key_env, timeout=spec.timeout_s)
    try:
        model_dir = resolve.resolve_base(ModelSpec(base=spec.model), source="judge.model", root=root)
        return local_model_asker(str(model_dir), max_new_tokens=spec.max_new_tokens)
    except UserError as err:
        raise JudgeUnavailable(f"local judge {spec.model!r}: {err.problems[0].message}") from None
    except (OSError, ValueError, RuntimeError) as err:
        raise JudgeUnavailable(f"local judge {spec.model!r} could not be loaded ({type(err).__name__}: "
                               f"{err})") from None


def load_prompts(suite: Suite) -> dict[str, dict]:
    """The judge's prompt files for its modes: {mode: {version, system, user[, user_reference]}}; exit 2 when
    one is missing or lacks a key."""
    spec, found = suite.judge, {}
    for mode in spec.methods:
        path = paths.find_in_layers("eval_suites", spec.prompts, f"{mode}.yaml")
        where = f"eval_suites/{spec.prompts}/{mode}.yaml"
        if path is None:
            raise UserError(Problem(f"eval_suites/{suite.name}.yaml", "judge.prompts", f"{where} does not exist; "
                                    "the judge's prompts are files (see eval_suites/judges/)"))
        data, _ = read_yaml(path, paths.display(path))
        missing = [k for k in PROMPT_KEYS[mode] if not isinstance(data.get(k), str) or not data[k].strip()]
        if missing:
            raise UserError(Problem(paths.display(path), missing[0], f"missing; a {mode} judge prompt has "
                                    f"{', '.join(PROMPT_KEYS[mode])}"))
        found[mode] = {k: data[k] for k in PROMPT_KEYS[mode]} | {"file": where}
    return found


def _pairs(labels: list[str], reference: str, how: str) -> list[tuple[str, str]]:
    """(a, b) pairs, tallied from a's side: a is the reference (pairs: reference) or the later-listed candidate."""
    if how == "reference":
        return [(reference, b) for b in labels if b != reference]
    return [(b, a) for a, b in itertools.combinations(labels, 2)]


def _answers(run, slugs: dict[str, str], limit: int | None) -> tuple[list[int], dict[str, dict[int, SampleRow]]]:
    answers = {label: {r.doc_id: r for r in read_rows(run.samples_path(slug, GENERATE_TASK), SampleRow)[0]}
               for label, slug in slugs.items()}
    shared = sorted(set.intersection(*(set(a) for a in answers.values())))
    return shared[:limit], answers


def _pairwise(pairs, doc_ids, answers, questions, ask, prompt) -> tuple[list[dict], list[dict]]:
    """Per pair: its tally (wins for a) and per-item verdicts."""
    tallies, verdicts = [], []
    for a, b in pairs:
        items = []
        for doc_id in doc_ids:
            mine, theirs = answers[a][doc_id], answers[b][doc_id]
            # judge_pair(question, ref, other, this): asks other-first, then this-first; the outcome is this side's
            v = judge_pair(questions[doc_id], mine.reference, theirs.prediction, mine.prediction, ask, prompt)
            items.append({"doc_id": doc_id, "answers": {a: mine.prediction, b: theirs.prediction},
                          "outcome": v["outcome"], "verdict_b_first": v["verdict_base_first"],
                          "verdict_a_first": v["verdict_ft_first"], "raw": v["raw"],
                          "unparseable": v["unparseable"], "position_bias": v["position_bias"]})
        counts = tally(items)
        tallies.append({"a": a, "b": b, "wins": counts["wins"], "ties": counts["ties"], "losses": counts["losses"],
                        "n": counts["n"], "win_rate": counts["adjusted_win_rate"],
                        "position_bias": sum(i["position_bias"] for i in items),
                        "unparseable": sum(i["unparseable"] for i in items)})
        verdicts.append({"a": a, "b": b, "items": items})
    return tallies, verdicts


def _ranking(labels: list[str], verdicts: list[dict], doc_ids: list[int]) -> list[dict]:
    index, position = {label: i for i, label in enumerate(labels)}, {d: i for i, d in enumerate(doc_ids)}
    score = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    outcomes = [(position[item["doc_id"]], index[pair["a"]], index[pair["b"]], score[item["outcome"]])
                for pair in verdicts for item in pair["items"]]
    return ranking.rank(labels, ranking.per_item_scores(outcomes, len(doc_ids), len(labels)), seed=SEED)


def _grades(labels, doc_ids, answers, questions, ask, prompt) -> tuple[dict, dict]:
    grades, per_item = {}, {}
    for label in labels:
        rows = [{"doc_id": d, **grade(questions[d], answers[label][d].reference, answers[label][d].prediction,
                                      ask, prompt)} for d in doc_ids]
        rated = np.array([r["rating"] for r in rows if r["rating"] is not None], dtype=float)
        ci = stats.bootstrap_ci(lambda idx, rated=rated: rated[idx].mean(axis=1), len(rated), BOOTSTRAP_ITERS,
                                SEED) if len(rated) else None
        grades[label] = {"mean": round(float(rated.mean()), 6) if len(rated) else None,
                         "ci95": None if ci is None else [round(x, 6) for x in ci], "n": len(rated),
                         "unparseable": len(rows) - len(rated)}
        per_item[label] = rows
    return grades, per_item


def judge_run(run, recipe, suite: Suite, slugs: dict[str, str] | None = None,
              reference: str = "finetuned") -> JudgesSummary:
    """Judge the candidates' answers (label -> file slug; default base and fine-tuned) into eval/judge.json;
    returns the judges section of the summary (its fine-tuned-vs-base tally: EvalSummary.judge_versus_base)."""
    spec = suite.judge
    slugs = slugs or {m: m for m in MODELS if run.samples_path(m, GENERATE_TASK).is_file()}
    labels = list(slugs)
    prompts = load_prompts(suite)
    result: dict = {"kind": spec.kind, "model": spec.model,
                    "prompts": {p["file"]: p["version"] for p in prompts.values()}}
    written: dict = {}
    if len(labels) < 2 and "pairwise" in spec.methods:
        result["skipped"] = "the pairwise judge compares candidates; list two or more (e.g. base and finetuned)"
    else:
        doc_ids, answers = _answers(run, slugs, spec.max_items)
        items = {i["doc_id"]: i for i in jsonl.read(tasks.tasks_dir(run) / tasks.ITEMS_FILE).rows}
        questions = {d: _question(items[d], recipe) for d in doc_ids}
        pairs = _pairs(labels, reference, spec.pairs) if "pairwise" in spec.methods else []
        say(f"eval: judge ({spec.kind} {spec.model}): {len(doc_ids)} items, {len(pairs)} pairs in both answer "
            f"orders{', single grades of ' + str(len(labels)) + ' candidates' if 'single' in spec.methods else ''}")
        try:
            ask = _asker(spec, suites.root_of(suite))
            if pairs:
                result["pairs"], written["pairs"] = _pairwise(pairs, doc_ids, answers, questions, ask,
                                                              prompts["pairwise"])
                if len(labels) >= 3:
                    result["ranking"] = _ranking(labels, written["pairs"], doc_ids)
            if "single" in spec.methods:
                result["grades"], written["grades"] = _grades(labels, doc_ids, answers, questions, ask,
                                                              prompts["single"])
                result["reference_guided"] = all(answers[labels[0]][d].reference for d in doc_ids)
        except JudgeUnavailable as err:
            result = {k: v for k, v in result.items() if k in ("kind", "model", "prompts")} | {"skipped": str(err)}
            written = {}
    JudgeFile.model_validate({**result, **written}).write(run.judge_path)
    if "skipped" in result:
        say(f"eval: judge skipped: {result['skipped']}")
    return JudgesSummary.model_validate(result)
