"""Candidates evaluated on the tiny model through real lm-eval, transformers and peft: base, base+fewshot:2, the
fine-tuned model, another run (run:tiny-cpu@ID) and a model by path, on the same items; a local tiny judge whose
verdicts cannot be parsed (counted, never a silent zero); the report's candidate table and chart; candidates that
cannot be had (exit 2)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runner.core import jsonl
from runner.core.errors import UserError
from runner.evaluate import fewshot, run_suite, tasks
from runner.evaluate.scoring import GENERATE_TASK, PERPLEXITY_TASK, SEED, format_summary
from runner.models import resolve, tiny
from runner.recipe import suites, templates
from runner.report.markdown import write_report
from tests.helpers import make_eval_run, offline_workspace

pytestmark = pytest.mark.model
LABELS = ["base", "base+fewshot:2", "finetuned", "run:tiny-cpu@{other}", "tiny-again", "tiny-chat"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A throw-away project (recipes, templates, suites; data and the tiny model linked), offline."""
    with offline_workspace(tmp_path_factory.mktemp("project"), {"cands": """\
            suite: 1
            version: 0.1.0
            metrics: [exact_match, token_f1, perplexity]
            judge: {kind: local, model: models/tiny-llama, max_items: 2, max_new_tokens: 8,
                    methods: [pairwise, single], pairs: reference}
            """}) as root:
        yield root


def _with_candidates(recipe, entries, reference=None):
    return recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"candidates": entries,
                                                                           "reference": reference})})


@pytest.fixture(scope="module")
def evaluated(project):
    other, _ = make_eval_run()  # the same seed: its adapter equals this run's, so its answers must match finetuned's
    run, recipe = make_eval_run()
    entries = ["base", "base+fewshot:2", "finetuned", f"run:tiny-cpu@{other.run_id}",
               {"model": "models/tiny-llama", "label": "tiny-again"},
               {"model": "models/tiny-llama", "label": "tiny-chat", "template": "tokenizer"}]
    recipe = _with_candidates(recipe, entries)
    summary = run_suite.evaluate(run, recipe, suites.load("cands"))
    return run, recipe, summary, other


def _answers(run, slug: str, task: str = GENERATE_TASK) -> list[dict]:
    return jsonl.read(run.file("eval", f"samples-{slug}-{task}.jsonl")).rows


def test_every_candidate_answers_the_same_items(evaluated):
    run, _, summary, other = evaluated
    labels = [label.format(other=other.run_id) for label in LABELS]
    assert list(summary.candidates) == labels and summary.reference == "finetuned"
    assert [c.kind for c in summary.candidates.values()] == ["base", "fewshot", "finetuned", "run", "model", "model"]
    reference = _answers(run, "finetuned")
    for c in summary.candidates.values():
        rows = _answers(run, c.slug)
        assert [(r["doc_id"], r["reference"]) for r in rows] == [(r["doc_id"], r["reference"]) for r in reference]
        assert set(rows[0]) == {"doc_id", "prompt", "reference", "prediction", "scores"}
        assert len(_answers(run, c.slug, PERPLEXITY_TASK)) == 6
        assert set(c.metrics) == {"exact_match", "token_f1", "perplexity"}
    # another run with the same adapter, and the base model named by path: the same answers as their twins
    twin = summary.candidates[labels[3]]
    assert [r["prediction"] for r in _answers(run, twin.slug)] == [r["prediction"] for r in reference]
    assert twin.metrics["token_f1"].delta == 0 and twin.metrics["token_f1"].ci95 == [0, 0]
    assert twin.source == str(other.path)
    assert [r["prediction"] for r in _answers(run, "tiny-again")] == [r["prediction"] for r in _answers(run, "base")]
    # the same model prompted with its tokenizer's chat template: the item as one user turn of that template
    chat = _answers(run, "tiny-chat")[0]
    assert summary.candidates["tiny-chat"].template == "tokenizer"
    assert chat["prompt"].startswith("<|im_start|>user\n") and chat["prompt"].endswith("<|im_start|>assistant\n")
    # against the reference: paired intervals; the reference itself has none
    base = summary.candidates["base"].metrics["perplexity"]
    assert base.reference == summary.candidates["finetuned"].metrics["perplexity"].value
    assert base.delta == pytest.approx(base.value - base.reference, abs=1e-5) and len(base.ci95) == 2
    assert summary.candidates["finetuned"].metrics["perplexity"].delta is None
    # version 1's view, read from the candidates: base vs fine-tuned
    assert set(summary.versus_base()) == {"exact_match", "token_f1", "perplexity"}
    assert summary.versus_base()["perplexity"].reference == base.value
    assert "candidates against finetuned" in format_summary(summary)


def test_fewshot_prompts_are_the_template_rendering_of_train_examples(evaluated):
    run, recipe, summary, _ = evaluated
    alpaca = templates.load("alpaca")
    manifest = run.manifest()
    tokens = resolve.tokenizer_tokens(Path(manifest.base_model_dir))
    shots = fewshot.draw(fewshot.train_examples(recipe, alpaca), 2, SEED)
    test_rows = tasks.read_test_split(run)
    asked = _answers(run, summary.candidates["base+fewshot:2"].slug)
    for row, answered in zip(test_rows[:6], asked, strict=True):
        example = fewshot.to_example(row["row"], recipe, alpaca, recipe.data.system)
        assert answered["prompt"] == fewshot.prompt(alpaca, example, tokens, tuple(manifest.stop), shots)
        shot_text = "".join(s.text for s in templates.render(alpaca, shots[0], tokens))
        assert answered["prompt"].startswith(shot_text) and shot_text.endswith(shots[0]["output"] + tokens.eos_token)
        assert answered["prompt"].endswith(row["prompt"].removeprefix(tokens.bos_token))  # the item, as trained


def test_a_local_judge_that_gives_no_verdicts_is_counted_not_zero(evaluated):
    _, _, summary, _ = evaluated
    judges = summary.judges
    assert judges.skipped is None and len(judges.pairs) == 5  # each candidate against the reference
    for pair in judges.pairs:
        assert pair.a == "finetuned" and pair.n == 2
        # a random tiny model writes no [[A]]/[[B]]/[[C]]: every reply counted unparseable, every item a tie
        assert pair.unparseable == 4 and pair.ties == 2 and pair.win_rate == 0.5
    assert all(g.mean is None and g.n == 0 and g.unparseable == 2 for g in judges.grades.values())
    assert judges.ranking is not None and len(judges.ranking) == 6


def test_report_shows_every_candidate_with_intervals(evaluated):
    run, _, summary, _ = evaluated
    report = write_report(run).read_text()
    assert "### Candidates" in report and "base+fewshot:2 (base model, 2 examples from the train split" in report
    assert "Δ vs finetuned (95% CI)" in report and "— **reference**" in report
    assert "![Every candidate per metric](plots/candidates.png)" in report
    assert run.file("plots", "candidates.png").stat().st_size > 1000
    assert "Bradley–Terry ranking" in report and "unparseable" in report
    assert "| doc | prompt | reference | base | base+fewshot:2 |" in report  # every candidate's answers side by side
    assert "### fewshot-2-recipe" not in report  # samples-base-*.jsonl must not read base-fewshot-2's files as base's
    assert json.loads(run.file("eval", "summary.json").read_text())["version"] == 4


def test_candidates_that_cannot_be_had_are_exit_2_before_the_run_fails(evaluated, own_run, tmp_path):
    run, recipe, _, _ = evaluated
    run = own_run(run)
    broken, no_tokenizer = tmp_path / "broken-model", tmp_path / "no-tokenizer"
    shutil.copytree(tiny.default_dir(), broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny.default_dir() / name, no_tokenizer / name)
    cases = [("run:no-such-recipe", "has no runs yet"), ("run:tiny-cpu@20990101-000000-nope", "unknown run"),
             ("models/no-such-model", "does not exist"), (str(no_tokenizer), "has no usable tokenizer"),
             (str(broken), "could not be loaded")]
    summary = run.summary_path.read_bytes()
    for entry, message in cases:
        with pytest.raises(UserError, match=message) as caught:
            run_suite.evaluate(run, _with_candidates(recipe, ["finetuned", entry]), suites.load("heldout-qa"))
        assert caught.value.problems[0].file == f"eval.candidates: {entry}"
        assert run.manifest().status != "failed"
        if entry != str(broken):  # found wanting before anything ran: the last eval is kept as it was
            assert run.summary_path.read_bytes() == summary, entry


def test_the_merged_model_is_a_candidate_on_the_same_prompts(project, tmp_path, monkeypatch):
    """`merged` scores run/merged/ on the fine-tuned model's own prompts; before `recipe merge` it is exit 2 naming
    the command (eval never builds an artifact)."""
    from runner.models.merge import merge

    monkeypatch.setenv("RECIPE_RUNS_DIR", str(tmp_path / "runs"))  # a run of its own, merged below
    run, recipe = make_eval_run()
    recipe = _with_candidates(recipe, ["finetuned", "merged"])
    with pytest.raises(UserError, match=f"run `recipe merge tiny-cpu@{run.run_id}` first") as caught:
        run_suite.evaluate(run, recipe, suites.load("heldout-qa"))
    assert caught.value.problems[0].file == "eval.candidates: merged" and run.manifest().status != "failed"
    merge(run)
    summary = run_suite.evaluate(run, recipe, suites.load("heldout-qa"))
    merged = summary.candidates["merged"]
    assert merged.kind == "merged" and merged.source == str(run.merged_path) and merged.template == recipe.data.template
    assert not (run.path / "eval" / "tasks-merged").exists()  # the fine-tuned model's own task folder
    ours, theirs = _answers(run, "finetuned"), _answers(run, "merged")
    assert [a["prompt"] for a in ours] == [a["prompt"] for a in theirs]
    # folded into the weights, the LoRA product rounds differently: on the random adapter's near-tied logits a greedy
    # choice can tip, which is why the merged model is scored rather than assumed equal; most answers are the same
    same = [a["prediction"] == b["prediction"] for a, b in zip(ours, theirs, strict=True)]
    assert sum(same) >= len(same) // 2
    assert set(merged.metrics) == set(summary.candidates["finetuned"].metrics)
    assert all(len(m.ci95) == 2 for m in merged.metrics.values())  # paired against the reference, finetuned
