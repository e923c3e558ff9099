"""The eval stage: run a suite on every candidate (by default the base and the fine-tuned model) with
lm-evaluation-harness, then the judge.

evaluate(run, recipe, suite) writes into run/eval/:
  tasks/                              lm-eval task YAMLs for the held-out split (runner.evaluate.tasks)
  tasks-<slug>/                       the same items for a candidate prompted otherwise (few-shot, another
                                      template or tokenizer; runner.evaluate.fewshot)
  results-<slug>.json                 lm-eval's results dicts, JSON-safe, keyed by "heldout" / "standard"
  samples-<slug>-<task>.jsonl         per item: doc_id, prompt, reference, prediction, scores
  judge.json                          per-item judge verdicts and grades (when the suite has a judge)
  summary.json                        runner.runs.eval_summary.EvalSummary
<slug> is the candidate's file-safe label (base, finetuned, base-fewshot-3, run-other-recipe...). Every candidate
sees the same items: same test rows and references, same `limit`, same decoding settings, fixed seeds.
Every candidate is resolved (its model found, its run finished) before any is evaluated.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from runner.core import paths
from runner.core.console import say
from runner.core.errors import Problem, UserError
from runner.evaluate import candidate_models, fewshot, harness, tasks
from runner.evaluate.judge_run import judge_run
from runner.evaluate.scoring import PERPLEXITY_TASK, candidate_metrics
from runner.recipe import candidates
from runner.recipe.suites import Suite, for_recipe
from runner.runs import tracking
from runner.runs.eval_summary import BOOTSTRAP_ITERS, SEED, EvalSummary
from runner.runs.manifest import EvalRef, RunError, Status


def _clear(run) -> None:
    for path in run.stale_eval_files():  # a re-run with another suite must not leave old files
        path.unlink()
    for folder in run.stale_task_dirs():
        shutil.rmtree(folder, ignore_errors=True)


def _candidate_tasks(run, recipe, suite: Suite, resolved: candidate_models.Resolved, heldout):
    """The held-out task folder this candidate answers: this run's own, or its own prompts in eval/tasks-<slug>/."""
    if resolved.same_prompts or heldout is None:
        return heldout
    c = resolved.candidate
    if c.kind == "endpoint":
        say(f"eval: {c.label}: the {heldout.n_items} items as chat messages (the server applies its template)")
        prompts, stop = fewshot.message_prompts(run, recipe), []  # the server ends answers where its template does
    else:
        say(f"eval: {c.label}: rendering the {heldout.n_items} items in template {resolved.template}"
            f"{f' with {c.shots} examples from the train split' if c.shots else ''}")
        prompts, stop = fewshot.candidate_prompts(run, recipe, resolved.template, resolved.system,
                                                  resolved.tokenizer_dir, shots=c.shots, seed=SEED)
    return tasks.write_tasks(run, recipe, suite, folder=run.tasks_dir(c.slug), prompts=prompts,
                             stop=stop, tokenizer_dir=resolved.tokenizer_dir)


def _run_candidate(run, recipe, suite, resolved, heldout, standard, device, manager,
                   clock: harness.AnswerClock) -> dict:
    c = resolved.candidate
    held = _candidate_tasks(run, recipe, suite, resolved, heldout)
    if held is not heldout:  # its own task folder: the same task names, so a manager of its own
        manager = harness.task_manager(held.dir, suite)
    runs_standard = standard and c.kind not in ("fewshot", "endpoint")  # lm-eval's own prompts: base again
    names = held.names if held else []
    if c.kind == "endpoint":  # an API gives no log-likelihoods: generation metrics only
        names = [n for n in names if n != PERPLEXITY_TASK]
    calls = [x for x in (("heldout", names, False),
                         ("standard", standard if runs_standard else [], None)) if x[1]]
    if not calls:
        return {}
    items = f", {held.n_items} held-out items" if held else ""
    say(f"eval: {c.label}: {', '.join(n for _, names, _ in calls for n in names)} ({device}{items})")
    results = harness.run_model(resolved.args, device, calls, manager, recipe, lm=_load(resolved, device, recipe),
                                clock=clock)
    return harness.write_outputs(run, c.slug, results, suite)


def _load(resolved: candidate_models.Resolved, device: str, recipe):
    """The candidate's model; one that is not this run's own and cannot be loaded is the user's to fix (exit 2)."""
    c = resolved.candidate
    if c.kind in candidates.DEFAULT:
        return None  # this run's models: a failure there is the run's (status failed), loaded by run_model
    if resolved.engine == "llama.cpp":
        return _load_gguf(resolved, recipe)
    if resolved.engine == "endpoint":
        return harness.load_endpoint(resolved.args, c.api_key_env)
    try:
        return harness.load_model(resolved.args, device, recipe)
    except Exception as err:  # noqa: BLE001 - transformers, safetensors and peft raise many types for a bad model
        detail = (str(err).strip().splitlines() or [""])[0][:300]
        raise UserError(Problem(f"eval.candidates: {c.label}", "", f"{resolved.source} could not be loaded "
                                f"({type(err).__name__}: {detail}); give a model directory written by "
                                "save_pretrained, a .gguf file, pkg:// or a hub id in the cache")) from None


def _load_gguf(resolved: candidate_models.Resolved, recipe):
    from runner.models import llamacpp

    where = f"eval.candidates: {resolved.candidate.label}"
    if llamacpp.installed_version() is None:
        raise UserError(Problem(where, "", "scoring a GGUF file needs llama.cpp, which is not installed; run `make "
                                f"llama-cpp` (builds llama-cpp-python {llamacpp.VERSION}: {llamacpp.BUILD_NOTE})"))
    try:
        return harness.load_gguf(resolved.args, recipe)
    except (ValueError, RuntimeError) as err:  # llama-cpp-python's message for a file llama.cpp cannot load
        raise UserError(Problem(where, "", f"llama.cpp could not load {resolved.source} ({err}); export it again "
                                "with `recipe export`")) from None


def _counter(resolved: candidate_models.Resolved):
    """How an endpoint's answers are counted in tokens: with the run's tokenizer (the server's is not here)."""
    if resolved.engine != "endpoint":
        return None
    from runner.models import resolve

    tokenizer = resolve.load_tokenizer(Path(resolved.tokenizer_dir))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def _resolve(run, recipe, suite: Suite, manifest) -> tuple[list[candidate_models.Resolved], str]:
    """Every candidate found (its model, its run) before anything runs or any earlier result is cleared."""
    listed, reference = candidates.for_eval(recipe, suite)
    _, dtype = harness.device_and_dtype(recipe)
    return [candidate_models.resolve(c, run, manifest, recipe, dtype) for c in listed], reference


def _measure(run, recipe, suite: Suite, resolved: list[candidate_models.Resolved], reference: str,
             timings: dict) -> EvalSummary:
    device, _ = harness.device_and_dtype(recipe)
    heldout = None
    if suite.metrics or suite.judge:
        say(f"eval: writing lm-eval tasks for the held-out split to {paths.display(tasks.tasks_dir(run))}")
        heldout = tasks.write_tasks(run, recipe, suite)
    manager = harness.task_manager(heldout.dir if heldout else None, suite)
    standard, skipped = harness.standard_tasks(suite, manager)
    rows: dict[str, dict[str, list[dict]]] = {}
    clocks = {r.candidate.label: harness.AnswerClock(_counter(r)) for r in resolved}
    for r in resolved:
        phase = time.monotonic()
        rows[r.candidate.label] = _run_candidate(run, recipe, suite, r, heldout, standard, device, manager,
                                                 clocks[r.candidate.label])
        timings[f"eval_{r.candidate.slug}_s"] = round(time.monotonic() - phase, 2)
    judges = None
    if suite.judge is not None:
        phase = time.monotonic()
        judges = judge_run(run, recipe, suite, {r.candidate.label: r.candidate.slug for r in resolved}, reference)
        timings["judge_s"] = round(time.monotonic() - phase, 2)
    per_candidate = candidate_metrics(rows, reference)
    summary_of = {r.candidate.label: {"kind": r.candidate.kind, "slug": r.candidate.slug, "source": r.source,
                                      "template": r.template, "shots": r.candidate.shots, "engine": r.engine,
                                      "size_bytes": r.size_bytes,
                                      "answer_tokens_per_s": clocks[r.candidate.label].per_second,
                                      "metrics": per_candidate[r.candidate.label]} for r in resolved}
    return EvalSummary(skipped=skipped, judges=judges,
                       n_items=heldout.n_items if heldout else 0, suite=suite.name, suite_version=suite.version,
                       bootstrap_iters=BOOTSTRAP_ITERS, seed=SEED, reference=reference, candidates=summary_of)


def evaluate(run, recipe, suite: Suite | None = None) -> EvalSummary:
    """Evaluate a trained run's candidates on its suite; writes run/eval/ and returns the summary."""
    suite = suite or for_recipe(recipe)
    manifest = run.trained()
    started = time.monotonic()
    timings = dict(manifest.timings)
    say(f"eval: suite {suite.name} {suite.version}")
    try:
        resolved, reference = _resolve(run, recipe, suite, manifest)  # a bad candidate leaves the last eval as it was
        _clear(run)
        summary = _measure(run, recipe, suite, resolved, reference, timings)
        summary.write(run.summary_path)
    except UserError:
        raise  # a candidate or judge prompt the user must fix: the run stays as it was (trained)
    except BaseException as err:
        run.update(status=Status.FAILED, error=RunError(stage="eval", message=str(err) or type(err).__name__))
        raise
    timings["eval_s"] = round(time.monotonic() - started, 2)
    run.update(status=Status.EVALUATED, error=None, timings=timings,
               eval=EvalRef(suite=suite.name, suite_version=suite.version))
    say(f"eval: wrote {paths.display(run.summary_path)} in {timings['eval_s']:.0f} s")
    tracking.log_eval(run, recipe, summary)  # the model cards take these results when `recipe eval` refreshes them
    return summary
