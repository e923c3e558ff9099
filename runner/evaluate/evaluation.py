"""The eval stage: run a suite on the base and the fine-tuned model with lm-evaluation-harness.

evaluate(run, recipe, suite) writes into run/eval/:
  tasks/                              lm-eval task YAMLs for the held-out split (runner.evaluate.tasks)
  results-base.json, results-finetuned.json
                                      lm-eval's results dicts, JSON-safe, keyed by "heldout" / "standard"
  samples-<model>-<task>.jsonl        per item: doc_id, prompt, reference, prediction, scores
  judge.json                          per-item pairwise verdicts (when the suite has a judge)
  summary.json                        runner.evaluate.summary.EvalSummary
Both models see the same items: same task files, same `limit`, deterministic order, fixed seeds.
"""
from __future__ import annotations

import time

from runner.core import paths
from runner.core.console import say
from runner.evaluate import harness, tasks
from runner.evaluate.judge_run import MODELS, judge_run
from runner.evaluate.summary import BOOTSTRAP_ITERS, SEED, EvalSummary, summarize
from runner.recipe.suites import Suite, for_recipe
from runner.runs import tracking
from runner.runs.manifest import EvalRef, RunError, Status


def _clear(run) -> None:
    for stale in ("samples-*.jsonl", "results-*.json", "judge.json", "summary.json"):
        for path in run.file("eval").glob(stale):  # a re-run with another suite must not leave old files
            path.unlink()


def _measure(run, recipe, suite: Suite, manifest, timings: dict) -> EvalSummary:
    say(f"eval: suite {suite.name} {suite.version}")
    heldout = None
    if suite.metrics or suite.judge:
        say(f"eval: writing lm-eval tasks for the held-out split to {paths.display(tasks.tasks_dir(run))}")
        heldout = tasks.write_tasks(run, recipe, suite)
    manager = harness.task_manager(heldout.dir if heldout else None, suite)
    standard, skipped = harness.standard_tasks(suite, manager)
    calls = [c for c in (("heldout", heldout.names if heldout else [], False), ("standard", standard, None)) if c[1]]
    device, dtype = harness.device_and_dtype(recipe)
    rows: dict[str, dict[str, list[dict]]] = {}
    for which in MODELS if recipe.eval.compare_base else ("finetuned",):
        phase = time.monotonic()
        if calls:
            items = f", {heldout.n_items} held-out items" if heldout else ""
            task_names = ", ".join(n for _, names, _ in calls for n in names)
            say(f"eval: {which} model: {task_names} ({device}, {dtype}{items})")
        args = harness.model_args(run, manifest, which, recipe, dtype)
        results = harness.run_model(args, device, calls, manager, recipe) if calls else {}
        rows[which] = harness.write_outputs(run, which, results, suite)
        timings[f"eval_{which}_s"] = round(time.monotonic() - phase, 2)
    judge = None
    if suite.judge is not None:
        phase = time.monotonic()
        judge = judge_run(run, recipe, suite)
        timings["judge_s"] = round(time.monotonic() - phase, 2)
    return EvalSummary(metrics=summarize(rows), skipped=skipped, judge=judge,
                       n_items=heldout.n_items if heldout else 0, suite=suite.name, suite_version=suite.version,
                       bootstrap_iters=BOOTSTRAP_ITERS, seed=SEED)


def evaluate(run, recipe, suite: Suite | None = None) -> EvalSummary:
    """Evaluate a trained run on its suite (base and fine-tuned); writes run/eval/ and returns the summary."""
    suite = suite or for_recipe(recipe)
    manifest = run.trained()
    started = time.monotonic()
    timings = dict(manifest.timings)
    try:
        _clear(run)
        summary = _measure(run, recipe, suite, manifest, timings)
        summary.write(run.file("eval", "summary.json"))
    except BaseException as err:
        run.update(status=Status.FAILED, error=RunError(stage="eval", message=str(err) or type(err).__name__))
        raise
    timings["eval_s"] = round(time.monotonic() - started, 2)
    run.update(status=Status.EVALUATED, error=None, timings=timings,
               eval=EvalRef(suite=suite.name, suite_version=suite.version))
    say(f"eval: wrote {paths.display(run.file('eval', 'summary.json'))} in {timings['eval_s']:.0f} s")
    from runner.ship import card

    card.refresh(run)  # the model cards (model/, merged/) take these results as their model-index
    tracking.log_eval(run, recipe, summary)
    return summary
