"""`recipe sweep` on tiny-cpu: a 2 × 2 grid trained and evaluated for real (axolotl on CPU, lm-eval), reused on a
second invocation and by later sweeps over the same runs, and decided with a two-level paired bootstrap."""
from __future__ import annotations

import numpy as np
import pytest

from runner import cli
from runner.decide import sweep as decision
from runner.runs import rundir
from runner.runs.sweep_file import SWEEP_FILE, SWEEP_MD, SWEEP_PLOT, SweepFile
from tests.helpers import offline_workspace

GRID = ["--grid", "train.learning_rate=1e-9,1e-3", "--seeds", "1,2"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    with offline_workspace(tmp_path_factory.mktemp("project"), {}) as root:
        yield root


def _sweep(capsys, *args: str) -> tuple[int, str, SweepFile]:
    code = cli.main(["sweep", "tiny-cpu", *args])
    out, err = capsys.readouterr()
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

    # a second invocation trains nothing new and decides the same
    before = _run_dirs()
    code, _, again = _sweep(capsys, *GRID, "--metric", "perplexity")
    assert code == 0 and _run_dirs() == before
    assert all(r.status == "reused" for v in again.variants for r in v.runs)
    assert [r.run_id for v in again.variants for r in v.runs] == [r.run_id for v in sweep.variants for r in v.runs]
    assert again.decision == sweep.decision

    # seeds of one setting, as a grid: the runs above again, indistinguishable
    code, _, seeds = _sweep(capsys, "train.learning_rate=1e-3", "--grid", "train.seed=1,2")
    assert code == 0 and _run_dirs() == before and seeds.metric == "exact_match"  # the suite's first metric
    assert sorted(r.verdict for r in seeds.decision.rows) == ["best", "indistinguishable from best"]

    # a variant that fails is reported and the others go on
    code, out, failing = _sweep(capsys, "train.learning_rate=1e-3", "--seeds", "1", "--grid",
                                "model.base=models/tiny-llama,models/missing")
    assert code == 1 and "the other variants go on" in out
    good, bad = failing.variants
    assert good.runs[0].status == "reused" and bad.runs[0].status == "failed"
    assert "models/missing" in bad.runs[0].error
    assert [r.verdict for r in failing.decision.rows] == ["best", "not evaluated"]


@pytest.mark.model
def test_bad_sweeps_are_exit_2_before_anything_trains(project, run_cli):
    before = _run_dirs()
    for args, message in ((["--seeds", "1"], "at least one axis"),
                          (["--grid", "train.learning_rate"], "KEY=V1,V2"),
                          (["--grid", "train.lr=1,2"], "train.lr: unknown key"),
                          (["--grid", "train.seed=1,2", "--seeds", "3"], "use one or the other"),
                          (["--grid", "train.learning_rate=1e-3,1e-3"], "repeats a value"),
                          (["--grid", "train.learning_rate=1e-3", "--seeds", "1,1"], "distinct integer seeds"),
                          (["--grid", "train.learning_rate=1e-3", "--metric", "bleurt"], "does not compute")):
        code, _, err = run_cli("sweep", "tiny-cpu", *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
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
