"""`recipe sweep` on tiny-cpu: a 2 × 2 grid trained and evaluated for real (axolotl on CPU, lm-eval), reused on a
second invocation and by later sweeps over the same runs, and decided with a two-level paired bootstrap."""
from __future__ import annotations

import argparse
import difflib
import re

import numpy as np
import pytest

from runner import cli
from runner.decide import sweep as decision
from runner.recipe import loading, snapshots
from runner.runs import rundir
from runner.runs.sweep_file import SWEEP_FILE, SWEEP_MD, SWEEP_PLOT, SweepFile
from tests.helpers import ROOT, offline_workspace

GRID = ["train.max_steps=12", "--grid", "train.learning_rate=1e-9,1e-3", "--seeds", "1,2"]
ONE = ["train.max_steps=12", "train.learning_rate=1e-3"]  # the best variant of GRID, as fixed overrides


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    with offline_workspace(tmp_path_factory.mktemp("project"), {}) as root:
        yield root


def _sweep(capsys, *args: str, what: str = "tiny-cpu") -> tuple[int, str, SweepFile | None]:
    """(exit code, what it printed, its sweep.json; None when it stopped before its last line)."""
    code = cli.main(["sweep", what, *args])
    out, err = capsys.readouterr()
    if "sweep: " not in out:
        return code, out + err, None
    folder = out.rsplit("sweep: ", 1)[1].split(SWEEP_MD)[0]
    return code, out + err, SweepFile.read(rundir.paths.workspace() / folder / SWEEP_FILE)


def _run_dirs() -> set[str]:
    folder = rundir.recipe_runs("tiny-cpu")
    return {p.name for p in folder.iterdir() if not p.is_symlink()} if folder.is_dir() else set()


@pytest.mark.model
def test_a_sweep_trains_decides_reuses_its_runs_and_reports_a_failing_variant(project, capsys):
    """One test for the whole story, so the 2 × 2 grid is trained once whatever the scheduler does with fixtures."""
    # 2 learning rates × 2 seeds, decided on perplexity (1e-9 barely moves the random tiny model)
    code, out, sweep = _sweep(capsys, *GRID, "--metric", "perplexity")
    folder = rundir.paths.workspace() / out.rsplit("sweep: ", 1)[1].split(SWEEP_MD)[0]
    assert code == 0
    assert [v.name for v in sweep.variants] == ["train.learning_rate=1e-9", "train.learning_rate=1e-3"]
    for variant in sweep.variants:
        assert [r.seed for r in variant.runs] == [1, 2] and all(r.status == "evaluated" for r in variant.runs)
        for entry in variant.runs:
            recipe = rundir.find("tiny-cpu", entry.run_id).recipe()  # an ordinary run, its overrides recorded
            assert recipe.train.seed == entry.seed
            assert recipe.train.learning_rate == float(variant.overrides[0].split("=")[1])
    d = sweep.decision
    assert d.metric == "perplexity" and not d.higher_is_better and d.best == "train.learning_rate=1e-3"
    slow, best = d.rows
    assert best.verdict == "best" and best.ci95 is None and best.seeds == 2 and best.seed_sd is not None
    assert slow.verdict == "worse, interval excludes 0" and slow.ci95[0] > 0 and slow.delta > 0
    assert slow.n_items == best.n_items > 0
    md = (folder / SWEEP_MD).read_text()
    assert "| `train.learning_rate=1e-9` | 2 |" in md and "worse, interval excludes 0" in md
    assert "two-level paired bootstrap" in md and (folder / SWEEP_PLOT).stat().st_size > 1000
    assert sweep.cost_s > 0 and SweepFile.read(folder / SWEEP_FILE) == sweep
    assert sweep.estimate.runs == 4 and sweep.estimate.hours > 0 and sweep.estimate.device == "cpu"
    assert "`recipe fit` estimates" in md

    # a second invocation trains nothing new and decides the same
    before = _run_dirs()
    code, _, again = _sweep(capsys, *GRID, "--metric", "perplexity")
    assert code == 0 and _run_dirs() == before
    assert all(r.status == "reused" for v in again.variants for r in v.runs)
    assert [r.run_id for v in again.variants for r in v.runs] == [r.run_id for v in sweep.variants for r in v.runs]
    assert again.decision == sweep.decision

    # the same sweep written down as a sweep file: the same folder, the same runs
    (project / "sweeps").mkdir()
    (project / "sweeps" / "lr.yaml").write_text("sweep: 1\nrecipe: tiny-cpu\noverrides: [train.max_steps=12]\ngrid:\n"
                                                "  train.learning_rate: [1e-9, 1e-3]\nseeds: [1, 2]\n"
                                                "metric: perplexity\n")
    code, out, from_file = _sweep(capsys, what="lr")
    assert code == 0 and _run_dirs() == before and from_file.key == sweep.key
    assert from_file.decision == sweep.decision

    # seeds of one setting, as a grid: the runs above again, indistinguishable
    code, _, seeds = _sweep(capsys, *ONE, "--grid", "train.seed=1,2")
    assert code == 0 and _run_dirs() == before and seeds.metric == "exact_match"  # the suite's first metric
    assert sorted(r.verdict for r in seeds.decision.rows) == ["best", "indistinguishable from best"]

    # a variant that fails is reported and the others go on
    code, out, failing = _sweep(capsys, *ONE, "--seeds", "1", "--grid",
                                "model.base=models/tiny-llama,models/missing")
    assert code == 1 and "the other variants go on" in out
    good, bad = failing.variants
    assert good.runs[0].status == "reused" and bad.runs[0].status == "failed"
    assert "models/missing" in bad.runs[0].error
    # the same with --parallel 2: what is left to run (the failing variant) runs as a process of its own, `recipe
    # sweep ... --task 0`, its output kept in the sweep's logs/, its failure reported as before
    code, out, parallel = _sweep(capsys, *ONE, "--seeds", "1", "--grid",
                                 "model.base=models/tiny-llama,models/missing", "--parallel", "2")
    log = rundir.paths.runs_dir() / "_sweep" / f"tiny-cpu-{parallel.key}" / "logs" / "task-local_0.out"
    assert code == 1 and [t.variant for t in parallel.tasks] == ["model.base=models/missing"]
    failed_run = parallel.variants[1].runs[0]
    assert failed_run.status == "failed" and "exited with code 2" in failed_run.error
    assert "task 0: model.base=models/missing seed 1" in log.read_text() and "models/missing" in log.read_text()
    assert [r.verdict for r in failing.decision.rows] == ["best", "not evaluated"]

    # --pick writes the best variant back into the recipe file, as a diff a reviewer reads line by line
    recipe_file = project / "recipes" / "tiny-cpu.yaml"
    original = recipe_file.read_text()
    code, out, _ = _sweep(capsys, *GRID, "--metric", "perplexity", "--pick", "train.learning_rate=5e-1")
    assert code == 2 and "names no evaluated variant" in out and recipe_file.read_text() == original
    code, out, picked = _sweep(capsys, *GRID, "--metric", "perplexity", "--pick", "best")
    assert code == 0 and _run_dirs() == before and "picked train.learning_rate=1e-3 into recipes/tiny-cpu.yaml" in out
    removed, added = _diff(original, recipe_file.read_text())
    assert removed == ["version: 1.0.0", "  learning_rate: 2.0e-3"]
    assert added[0] == "version: 1.1.0" and added[-1] == "  learning_rate: 1e-3"
    evidence = added[1:-1]
    assert evidence[0].startswith("  # picked by `recipe sweep` on ") and "perplexity" in evidence[0]
    assert "train.learning_rate=1e-9: +" in evidence[1] and "worse, interval excludes 0" in evidence[1]
    assert evidence[-1].startswith("  #   evidence: runs/_sweep/tiny-cpu-") and evidence[-1].endswith("/sweep.md")
    now = loading.load("tiny-cpu")
    assert now.recipe.train.learning_rate == 1e-3 and now.recipe.version == "1.1.0"
    assert (project / "recipes" / "resolved" / "tiny-cpu.yaml").read_text() == snapshots.snapshot(now)
    assert picked.decision == sweep.decision  # the same runs decided the same
    # picking again (the other variant, by name) replaces the value and its comment, and bumps the version again
    code, out, _ = _sweep(capsys, *GRID, "--metric", "perplexity", "--pick", "train.learning_rate=1e-9")
    removed, added = _diff(original, recipe_file.read_text())
    assert code == 0 and removed == ["version: 1.0.0", "  learning_rate: 2.0e-3"]
    assert added[0] == "version: 1.2.0" and added[-1] == "  learning_rate: 1e-9" and len(added) == len(evidence) + 2
    recipe_file.write_text(original)


def _diff(before: str, after: str) -> tuple[list[str], list[str]]:
    lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))[2:]
    return ([x[1:] for x in lines if x.startswith("-")], [x[1:] for x in lines if x.startswith("+")])


@pytest.mark.model
def test_bad_sweeps_are_exit_2_before_anything_trains(project, run_cli):
    before = _run_dirs()
    for args, message in ((["--seeds", "1"], "at least one axis"),
                          (["--grid", "train.learning_rate"], "KEY=V1,V2"),
                          (["--grid", "train.lr=1,2"], "train.lr: unknown key"),
                          (["--grid", "train.seed=1,2", "--seeds", "3"], "use one or the other"),
                          (["--grid", "train.learning_rate=1e-3,1e-3"], "repeats a value"),
                          (["--grid", "train.learning_rate=1e-3", "--seeds", "1,1"], "distinct integer seeds"),
                          (["--grid", "train.learning_rate=1e-3", "--metric", "bleurt"], "does not compute"),
                          (["--grid", "train.learning_rate=log:1e-5..1e-3"], "add --search optuna"),
                          (["--grid", "train.learning_rate=log:1e-5..1e-3", "--search", "optuna"], "--trials N"),
                          (["--grid", "train.learning_rate=log:1e-3..1e-5", "--search", "optuna", "--trials", "2"],
                           "LOW must be below HIGH"),
                          (["--grid", "train.micro_batch_size=int:0..4", "--search", "optuna", "--trials", "2"],
                           "train.micro_batch_size"),
                          (["--grid", "train.learning_rate=1e-3", "--parallel", "0"], "at least 1"),
                          (["--grid", "train.learning_rate=1e-3", "hardware.nodes=2"], "one node"),
                          (["--grid", "train.learning_rate=1e-3", "--parallel", "100000"], "GiB each by `recipe fit`")):
        code, _, err = run_cli("sweep", "tiny-cpu", *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    assert _run_dirs() == before
    sweeps = project / "sweeps"
    sweeps.mkdir(exist_ok=True)
    (sweeps / "broken.yaml").write_text("sweep: 1\nrecipe: tiny-cpu\ngrid:\n  train.learning_rate: [1e-3]\n"
                                        "seed: [1, 2]\n")
    code, _, err = run_cli("sweep", "broken")
    assert code == 2 and "sweeps/broken.yaml:5: seed" in err and "Traceback" not in err, err
    assert _run_dirs() == before


def test_the_two_level_bootstrap_widens_with_seed_noise_and_is_paired_over_items():
    rng = np.random.default_rng(0)
    items = rng.uniform(0, 1, 60)  # item difficulty, shared by every variant: pairing removes it
    same = decision.Scores(np.vstack([items, items]))
    shifted = decision.Scores(np.vstack([items - 0.05, items - 0.05]))
    noisy = decision.Scores(np.vstack([items + 0.2, items - 0.3]))  # two seeds far apart: mean -0.05 as well
    ci = decision.two_level_intervals({"best": same, "shifted": shifted, "noisy": noisy}, "best")
    assert ci["best"] == [0.0, 0.0]
    assert ci["shifted"] == pytest.approx([-0.05, -0.05])  # a constant paired difference: no item noise left
    assert ci["noisy"][0] < -0.2 and ci["noisy"][1] > 0.1  # the seed spread widens it to include 0
    ppl = decision.Scores(np.array([[-2.0, -4.0]]), tokens=np.array([1.0, 2.0]))
    assert ppl.value() == pytest.approx(np.exp(6.0 / 3.0))  # corpus perplexity: summed log-likelihood over tokens


def test_every_shipped_sweep_file_validates_and_plans():
    from runner.cli import sweep_verbs
    from runner.recipe import sweep_spec

    shipped = sorted((ROOT / "sweeps").glob("*.yaml"))
    assert shipped
    for path in shipped:
        args = argparse.Namespace(recipe=str(path), overrides=[], grid=None, seeds=None, metric=None, trials=None,
                                  parallel=None, search=None, target=None)
        sweep_spec.apply(args, sweep_spec.load(path))
        setup = sweep_verbs._setup(args)  # every variant × seed loads and validates, offline
        assert setup.plans and sweep_spec.find(str(path.relative_to(ROOT))) is not None


def test_recipe_edits_change_one_value_and_keep_every_other_byte():
    from runner.core.errors import UserError
    from runner.recipe import edit

    text = ("# top\r\nschema: 1\r\nmethod:\r\n  lora: {r: 8, alpha: 16}\r\ntrain:\r\n  learning_rate: 2.0e-3  # why\r\n"
            "  optimizer: 'adamw_torch'\r\n\r\n")
    picked = ["# picked by `recipe sweep` on a day: lr", "#   evidence: here"]
    out = edit.set_value(text, ["train", "learning_rate"], "1e-3", "r.yaml", picked)
    out = edit.set_value(out, ["method", "lora", "r"], "16", "r.yaml")
    out = edit.set_value(out, ["train", "optimizer"], "'adamw_8bit'", "r.yaml")
    out = edit.set_value(out, ["train", "weight_decay"], "0.1", "r.yaml")  # inherited: added to its section
    out = edit.set_value(out, ["tracking", "tensorboard"], "true", "r.yaml")  # a new section, at the end
    assert out == ("# top\r\nschema: 1\r\nmethod:\r\n  lora: {r: 16, alpha: 16}\r\ntrain:\r\n"
                   "  # picked by `recipe sweep` on a day: lr\r\n  #   evidence: here\r\n"
                   "  learning_rate: 1e-3  # why\r\n  optimizer: 'adamw_8bit'\r\n  weight_decay: 0.1\r\n"
                   "tracking:\r\n  tensorboard: true\r\n\r\n")
    again = edit.set_value(out, ["train", "learning_rate"], "3e-4", "r.yaml", ["# picked by `recipe sweep`: 2nd"])
    assert again.count("picked by") == 1 and "evidence" not in again and "learning_rate: 3e-4  # why" in again
    assert edit.bump_minor("1.1.0") == "1.2.0" and edit.bump_minor("0.9.3-rc1") == "0.10.0"
    for keys, message in ((["data", "datasets", "0", "weight"], "inside a list"), (["train"], "holds a section"),
                          (["method", "lora", "dropout"], "{...} mapping")):
        with pytest.raises(UserError, match=re.escape(message)):
            edit.set_value(text, keys, "2", "r.yaml")
