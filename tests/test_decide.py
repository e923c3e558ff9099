"""recipe compare and recipe gate on hand-built evaluated runs (no model): every file is written through the contract
its real writer uses (Manifest, EvalSummary from candidate_metrics(), samples rows as the harness writes them), so these
tests pin the statistics, the verdicts and the error paths exactly; test_review_workflow runs them on real runs."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from runner.core.errors import UserError
from runner.decide import compare, gate, items, runs_select
from runner.evaluate import stats
from runner.evaluate.scoring import GENERATE_TASK, PERPLEXITY_TASK, candidate_metrics
from runner.recipe import loading, suites
from runner.runs import rundir
from runner.runs.eval_summary import CandidateSummary, EvalSummary
from runner.runs.manifest import Manifest, Seeds, Status, TrainSummary
from runner.train import engine

N = 40
GATED = """\
suite: 1
version: 1.0.0
metrics: [exact_match, rouge_l, perplexity]
gates:
  exact_match: {min: %(floor)s}
  rouge_l: {max_drop: %(drop)s}
  perplexity: {max_drop: 5.0}
"""


def _rows(exact: list[float], rouge: list[float], ll: list[float], prompt: str = "Q{}") -> dict[str, list[dict]]:
    generate = [{"doc_id": i, "prompt": prompt.format(i), "reference": f"answer {i}",
                 "prediction": f"answer {i}" if e else f"wrong {i}", "scores": {"exact_match": e, "rouge_l": r}}
                for i, (e, r) in enumerate(zip(exact, rouge, strict=True))]
    perplexity = [{"doc_id": i, "prompt": prompt.format(i), "reference": f"answer {i}", "loglikelihood": v,
                   "tokens": 4, "scores": {"perplexity": float(np.exp(-v / 4))}} for i, v in enumerate(ll)]
    return {GENERATE_TASK: generate, PERPLEXITY_TASK: perplexity}


def make_run(recipe: str, run_id: str, rows: dict, overrides=(), group=None, seed=42, evaluated=True,
             suite="gated", loss=1.0) -> rundir.RunDir:
    """An evaluated run of `recipe` (tiny-cpu with overrides) whose fine-tuned model gave these per-item rows."""
    loaded = loading.load("tiny-cpu", [*overrides, f"train.seed={seed}"])
    run = rundir.RunDir(rundir.recipe_runs(recipe) / run_id)
    run.path.mkdir(parents=True)
    (run.path / "recipe.resolved.yaml").write_text(loading.resolved_yaml(loaded.recipe))
    Manifest(run_id=run_id, recipe=recipe, recipe_version="1.0.0", fingerprint=loaded.fingerprint, target="local",
             base_model="models/tiny-llama", base_model_dir="/m", adapter=True, seeds=Seeds(train=seed, split=42),
             status=Status.EVALUATED if evaluated else Status.TRAINED, group=group,
             train=TrainSummary(steps=3, first_loss=2 * loss, final_loss=loss)).write(run.manifest_path)
    run.file("metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": loss * (4 - s) / 2}) + "\n"
                                                 for s in (1, 2, 3)))
    if evaluated:
        run.file("eval").mkdir()
        for task, task_rows in rows.items():
            run.file("eval", f"samples-finetuned-{task}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in task_rows))
        own = CandidateSummary(kind="finetuned", slug="finetuned",
                               metrics=candidate_metrics({"finetuned": rows}, "finetuned")["finetuned"])
        EvalSummary(suite=suite, suite_version="1.0.0", n_items=N, candidates={"finetuned": own}).write(
            run.file("eval", "summary.json"))
    rundir.point_latest(run)
    return run


@pytest.fixture
def gated(project):
    def write(floor=0.2, drop=0.05):
        (project / "eval_suites" / "gated.yaml").write_text(GATED % {"floor": floor, "drop": drop})
    write()
    return write


def _scores(seed: int, p_exact: float, rouge_shift: float = 0.0):
    rng = np.random.default_rng(seed)
    exact = [float(x) for x in rng.random(N) < p_exact]
    rouge = [float(np.clip(r + rouge_shift, 0, 1)) for r in rng.random(N)]
    ll = list(-rng.uniform(2, 6, N))
    return exact, rouge, ll


# ---------------------------------------------------------------- compare


def test_compare_two_runs_writes_md_json_and_the_loss_picture(gated, run_cli, tmp_path):
    exact, rouge, ll = _scores(0, 0.5)
    better = [1.0 if i % 3 == 0 else e for i, e in enumerate(exact)]  # some items flip to right
    make_run("tiny-cpu", "r-a", _rows(exact, rouge, ll), ["train.learning_rate=2e-3"], loss=1.0)
    make_run("tiny-cpu", "r-b", _rows(better, [min(1.0, r + 0.1) for r in rouge], ll), ["train.learning_rate=1e-3"],
             loss=0.5)
    code, out, err = run_cli("compare", "tiny-cpu@r-a", "tiny-cpu@r-b", "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert "compare.md" in out
    data = compare.Comparison.read(tmp_path / "out" / "compare.json")
    changed = {c.key: c.values for c in data.recipe_changes}
    assert changed["train.learning_rate"] == [0.002, 0.001]
    assert data.data_changes == []  # same prepared data
    row = {m.name: m for m in data.metrics}["exact_match"]
    expected = stats.paired_bootstrap(exact, better, iters=2000, seed=0)
    assert row.values == [round(float(np.mean(exact)), 6), round(float(np.mean(better)), 6)]
    assert row.paired[0] is None and row.paired[1].n == N
    assert row.paired[1].delta == pytest.approx(expected["delta"], abs=1e-6)
    assert row.paired[1].ci95 == pytest.approx(expected["ci95"], abs=1e-6)
    flipped = [f for f in data.flips if f.right_in == "side"]
    assert {f.doc_id for f in flipped} == {i for i in range(N) if i % 3 == 0 and not exact[i]}
    assert flipped[0].answers == [f"wrong {flipped[0].doc_id}", f"answer {flipped[0].doc_id}"]
    assert not [f for f in data.flips if f.right_in == "reference"]
    md = (tmp_path / "out" / "compare.md").read_text()
    for section in ("## Runs", "## Recipe changes", "`train.learning_rate`", "## Loss", "![Loss curves",
                    "## Metrics", "## Flipped items", "right in B, wrong in A"):
        assert section in md, section
    with Image.open(tmp_path / "out" / "loss.png") as img:
        assert img.format == "PNG" and img.width >= 600


def test_compare_default_folder_is_under_the_runs_dir_and_stable(gated, run_cli, project):
    rows = _rows(*_scores(1, 0.5))
    make_run("tiny-cpu", "r-a", rows)
    make_run("other", "r-b", rows)
    first = run_cli("compare", "r-a", "other")
    second = run_cli("compare", "r-a", "other")
    assert first[0] == 0 and first[1] == second[1]
    folder = next((project / "runs" / "_compare").iterdir())
    assert (folder / "compare.md").is_file() and folder.name.startswith("r-a-vs-other-")
    data = compare.Comparison.read(folder / "compare.json")
    assert all(m.paired[1].delta == 0 and m.paired[1].ci95 == [0, 0] for m in data.metrics)


def test_a_different_test_split_is_said_not_zeroed(gated, run_cli, tmp_path):
    rows = _rows(*_scores(2, 0.5))
    make_run("tiny-cpu", "r-a", rows)
    make_run("tiny-cpu", "r-b", _rows(*_scores(3, 0.5), prompt="Other question {}"), ["data.split.seed=7"])
    code, out, _ = run_cli("compare", "tiny-cpu@r-a", "tiny-cpu@r-b", "-o", str(tmp_path))
    assert code == 0
    assert "shares no items" in out
    data = compare.Comparison.read(tmp_path / "compare.json")
    assert all(m.paired[1] is None for m in data.metrics)
    assert data.items[0].shared == 0 and data.items[0].prompts_differ == N
    assert {c.key for c in data.recipe_changes} >= {"data.split.seed"}
    md = (tmp_path / "compare.md").read_text()
    assert "no shared items" in md and "shares no items" in md


@pytest.mark.parametrize("argv, message", [
    (["nope-recipe", "tiny-cpu"], "unknown recipe 'nope-recipe'"),
    (["tiny-cpu@nope", "tiny-cpu"], "unknown run or seed group 'nope'"),
    (["tiny-cpu@r-t", "tiny-cpu@r-a"], "not evaluated"),
    (["tiny-cpu"], "two or more runs"),
    (["tiny-cpu@r-a", "r-a"], "each run may stand on one side only"),
])
def test_compare_bad_input_is_exit_2(gated, run_cli, argv, message):
    make_run("tiny-cpu", "r-a", _rows(*_scores(4, 0.5)))
    make_run("tiny-cpu", "r-t", {}, evaluated=False)
    code, out, err = run_cli("compare", *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_recipe_without_runs_says_train_it(gated, run_cli):
    make_run("other", "r-a", _rows(*_scores(4, 0.5)))
    code, _, err = run_cli("compare", "other", "tiny-cpu")
    assert code == 2 and "has no runs yet" in err and "recipe train tiny-cpu" in err


def test_seed_groups_report_the_spread_between_seeds(gated, tmp_path):
    for side, p in (("g1", 0.4), ("g2", 0.6)):
        for seed in (1, 2, 3):
            make_run("tiny-cpu", f"{side}-{seed}", _rows(*_scores(10 * seed + (side == "g2"), p)), group=side,
                     seed=seed)
    left, right = runs_select.resolve("tiny-cpu@g1"), runs_select.resolve("tiny-cpu")  # latest run -> its group
    assert left.group == "g1" and len(left.runs) == 3 and right.group == "g2" and len(right.runs) == 3
    assert runs_select.resolve("g1").runs == left.runs
    folder, data = compare.write([left, right], tmp_path)
    row = {m.name: m for m in data.metrics}["exact_match"]
    per_seed = [EvalSummary.read(r.file("eval", "summary.json")).versus_base()["exact_match"].value for r in left.runs]
    assert row.seed_sd[0] == pytest.approx(float(np.std(per_seed, ddof=1)), abs=1e-6)
    assert row.seed_range[0] == [min(per_seed), max(per_seed)]
    assert row.values[0] == pytest.approx(np.mean(per_seed), abs=1e-6)
    assert row.paired[1].n == N
    assert {c.key: c.values for c in data.recipe_changes}["train.seed"] == [{"varies": [1, 2, 3]}] * 2
    md = (folder / "compare.md").read_text()
    assert "seed sd" in md and "seed group `g1`" in md


# ---------------------------------------------------------------- gate


def _gate(run_cli, *argv):
    return run_cli("gate", "tiny-cpu", *argv)


def test_gate_passes_and_fails_on_the_interval_not_the_point(gated, run_cli, project):
    exact, rouge, ll = _scores(5, 0.5)
    make_run("tiny-cpu", "base", _rows(exact, rouge, ll))
    make_run("tiny-cpu", "same", _rows(exact, rouge, ll))
    code, out, _ = _gate(run_cli, "--run", "same", "--baseline", "tiny-cpu@base")
    assert code == 0 and "PASS" in out
    # A small mean drop (0.01 < max_drop 0.05) whose interval still reaches past -0.05 fails: the point estimate
    # alone would pass, the conservative reading does not.
    rng = np.random.default_rng(9)
    noisy = [float(np.clip(r + d, 0, 1)) for r, d in zip(rouge, rng.normal(-0.01, 0.2, N), strict=True)]
    make_run("tiny-cpu", "noisy", _rows(exact, noisy, ll))
    result = gate.judge(runs_select.resolve("tiny-cpu@noisy"), runs_select.resolve("tiny-cpu@base"))
    row = next(r for r in result.rows if r.metric == "rouge_l")
    assert -0.05 < row.value < 0 and row.ci95[0] < -0.05 < row.ci95[1]
    assert row.verdict == "fail" and "uncertain" in row.why and not result.passed
    code, out, _ = _gate(run_cli, "--run", "noisy", "--baseline", "tiny-cpu@base")
    assert code == 1 and "FAIL" in out
    # the other side of the bound: the same drop with a lower bound just inside -max_drop passes
    gated(drop=-row.ci95[0] + 1e-4)
    assert _gate(run_cli, "--run", "noisy", "--baseline", "tiny-cpu@base")[0] == 0
    report = rundir.RunDir(project / "runs" / "tiny-cpu" / "noisy").file("report.md").read_text()
    assert "## Gate: PASS" in report
    assert gate.GateResult.read(project / "runs" / "tiny-cpu" / "noisy" / "gate.json").passed


def test_gate_takes_a_seed_group_per_side(gated, run_cli):
    for side in ("g1", "g2"):
        for seed in (1, 2):
            exact, rouge, ll = _scores(seed, 0.5)
            make_run("tiny-cpu", f"{side}-{seed}", _rows(exact, [min(1.0, r + 0.01 * seed) for r in rouge], ll),
                     group=side, seed=seed)
    code, out, err = _gate(run_cli, "--baseline", "tiny-cpu@g1")  # tiny-cpu: its latest run's group, g2
    assert code in (0, 1), err
    result = gate.GateResult.read(rundir.recipe_runs("tiny-cpu") / "g2-1" / "gate.json")
    assert result.runs == ["g2-1", "g2-2"] and result.baseline == ["g1-1", "g1-2"]
    row = next(r for r in result.rows if r.metric == "rouge_l")
    assert row.seed_sd is not None and row.seed_sd > 0 and row.value == 0


def test_floor_gate_uses_the_lower_bound(gated, run_cli):
    exact, rouge, ll = _scores(6, 0.5)
    make_run("tiny-cpu", "b", _rows(exact, rouge, ll))
    make_run("tiny-cpu", "r", _rows(exact, rouge, ll))
    value, ci, _ = items.own_interval("exact_match", items.side_items([items.load_run(rundir.find("tiny-cpu"))],
                                                                          GENERATE_TASK))
    gated(floor=ci[0] - 1e-3, drop=1.0)
    assert _gate(run_cli, "--baseline", "tiny-cpu@b")[0] == 0
    gated(floor=ci[0] + 1e-3, drop=1.0)  # still below the point value, above the lower bound: fails
    assert ci[0] + 1e-3 < value
    code, out, _ = _gate(run_cli, "--baseline", "tiny-cpu@b")
    assert code == 1 and "exact_match" in out and "uncertain" in out


def test_a_perplexity_rise_is_a_drop(gated, run_cli):
    exact, rouge, ll = _scores(7, 0.5)
    make_run("tiny-cpu", "base", _rows(exact, rouge, ll))
    make_run("tiny-cpu", "worse", _rows(exact, rouge, [v - 8.0 for v in ll]))  # far less likely references
    result = gate.judge(runs_select.resolve("tiny-cpu@worse"), runs_select.resolve("tiny-cpu@base"))
    row = next(r for r in result.rows if r.metric == "perplexity")
    assert row.value > 5 and row.ci95[0] > 5 and row.verdict == "fail" and "clear" in row.why
    assert not row.higher_is_better


def test_gate_on_a_metric_the_suite_does_not_compute_is_exit_2(project, run_cli):
    (project / "eval_suites" / "bad.yaml").write_text(textwrap.dedent("""\
        suite: 1
        version: 1.0.0
        metrics: [rouge_l]
        gates:
          sql_execution: {min: 0.75}
        """))
    with pytest.raises(UserError) as err:
        suites.load("bad")
    assert "bad.yaml:5: gates.sql_execution: the suite does not compute 'sql_execution'" in str(err.value)
    (project / "eval_suites" / "empty.yaml").write_text("suite: 1\nversion: 1.0.0\nmetrics: [rouge_l]\n"
                                                        "gates: {rouge_l: {}}\n")
    with pytest.raises(UserError, match="gates.rouge_l: a gate needs min, max or max_drop"):
        suites.load("empty")
    (project / "eval_suites" / "odd.yaml").write_text("suite: 1\nversion: 1.0.0\nmetrics: [rouge_l]\n"
                                                      "gates: {rouge_l: {max_drop: 0.02, candidate: 'export:q4'}}\n")
    with pytest.raises(UserError, match="export:gguf-QUANT"):  # a candidate the gate names must be one
        suites.load("odd")
    code, _, err_text = run_cli("validate")  # every suite too
    assert code == 2 and "does not compute" in err_text


def test_max_drop_needs_a_baseline_and_another_run(gated, run_cli):
    make_run("tiny-cpu", "r", _rows(*_scores(8, 0.5)))
    code, _, err = _gate(run_cli)
    assert code == 2 and "--baseline" in err
    code, _, err = _gate(run_cli, "--baseline", "tiny-cpu")
    assert code == 2 and "the baseline is the run being gated" in err


def test_a_baseline_on_another_split_is_exit_2_not_a_pass(gated, run_cli):
    make_run("tiny-cpu", "other-split", _rows(*_scores(3, 0.5), prompt="Other question {}"), ["data.split.seed=7"])
    make_run("tiny-cpu", "r", _rows(*_scores(8, 0.5)))
    code, _, err = _gate(run_cli, "--baseline", "tiny-cpu@other-split")
    assert code == 2 and "share no test items" in err and "gated.yaml" in err


def test_suite_without_gates_is_exit_2(gated, run_cli):
    make_run("tiny-cpu", "r", _rows(*_scores(8, 0.5)), suite="heldout-qa")
    code, _, err = _gate(run_cli)
    assert code == 2 and "declares no gates" in err
    assert "evaluated with suite 'heldout-qa'" in err and "recipe eval tiny-cpu@r eval.suite=NAME" in err


# ---------------------------------------------------------------- seeds and determinism (the files)


@pytest.mark.parametrize("seeds", ["1,1", "a,b", ","])
def test_bad_seeds_are_exit_2(project, run_cli, seeds):
    code, _, err = run_cli("train", "tiny-cpu", "--seeds", seeds)
    assert code == 2 and "--seeds" in err


def test_deterministic_reaches_the_trainer(project):
    recipe = loading.load("tiny-cpu", ["train.deterministic=true"]).recipe
    assert engine.axolotl_config(recipe, "m")["recipe_runner_deterministic"] is True
    assert "recipe_runner_deterministic" not in engine.axolotl_config(loading.load("tiny-cpu").recipe, "m")
    gpu = loading.load("tiny-cpu", ["train.deterministic=true", "hardware.device=cuda"]).recipe
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8" in engine.launch_script(gpu, "local")
    assert "CUBLAS" not in engine.launch_script(recipe, "local")


@pytest.mark.model
def test_train_seeds_makes_one_seed_group(session_dirs, project, run_cli, tiny_model_dir):
    """`recipe train --seeds`: one real (2-step) axolotl run per seed, each manifest with its seed and the group id;
    the recipe's name then means the whole group."""
    (project / "models").mkdir()
    (project / "models" / "tiny-llama").symlink_to(tiny_model_dir)
    code, out, err = run_cli("train", "tiny-cpu", "--seeds", "5,6", "train.max_steps=2", "train.save_steps=null",
                             "train.deterministic=true")
    assert code == 0, err[-2000:]
    side = runs_select.resolve("tiny-cpu")
    manifests = [run.manifest() for run in side.runs]
    assert side.group and [m.seeds.train for m in manifests] == [5, 6]
    assert all(m.group == side.group and m.status == Status.TRAINED for m in manifests)
    assert all(next(iter(m.train.ranks.values())).engine.deterministic for m in manifests)
    assert f"recipe compare tiny-cpu@{side.group}" in out
    assert "train.seed" in {c.key for c in compare._changes([[compare._flatten(
        r.recipe().model_dump(mode="json")) for r in side.runs]])}
