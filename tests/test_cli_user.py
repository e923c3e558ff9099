"""What a new user hit on the command line: overrides anywhere, a name or a path for every verb, the tiny model
built on demand, figures for people, eval with the run's own recipe."""
from __future__ import annotations

import os

import pytest

from runner import cli
from runner.cli import app, train_verbs
from runner.recipe import loading
from runner.runs import rundir
from tests.helpers import finished_run


def test_overrides_after_an_option_are_accepted(project, run_cli):
    code, out, err = run_cli("plan", "gemma7b-dolly-chatml", "--target", "slurm", "hardware.nodes=2",
                             "hardware.gpus=8", "train.global_batch_size=128")
    assert code == 0, err
    run = rundir.RunDir(project / out.splitlines()[0].removeprefix("planned ").rstrip(":"))
    manifest = run.manifest()
    assert manifest.target == "slurm" and manifest.batch.world_size == 16
    assert "#SBATCH --nodes=2" in run.file("launch.sh").read_text()


def test_an_option_value_that_looks_like_an_override_stays_the_option_value():
    parser = cli.build_parser()
    argv = app._overrides_after_recipe(parser, ["generate", "tiny-cpu", "--prompt", "a=b", "eval.max_new_tokens=4"])
    args = parser.parse_args(argv)
    assert args.prompt == ["a=b"] and args.overrides == ["eval.max_new_tokens=4"]


def test_every_verb_finds_the_same_runs_from_a_name_or_a_path(project, run_cli):
    run = finished_run()
    code, out, err = run_cli("report", str(project / "recipes" / "tiny-cpu.yaml"))
    assert code == 0, err
    assert run.file("report.md").is_file()
    code, _, err = run_cli("merge", "recipes/tiny-cpu.yaml")  # a path relative to the working directory
    assert code == 2 and "has no runs yet" not in err and "no trained model in" in err


def test_figures_are_rounded_for_people():
    assert train_verbs._figure(2.874032735824585) == "2.874" and train_verbs._figure(0.024503) == "0.0245"
    assert train_verbs._figure(None) == "-"


def test_eval_uses_the_recipe_the_run_was_trained_with(project, run_cli):
    run = finished_run()
    trained_lr = loading.load("tiny-cpu").recipe.train.learning_rate
    current = loading.load("tiny-cpu", ["train.learning_rate=0.5", "eval.max_items=3"]).recipe
    recipe, changed = rundir.recipe_for_eval(run, current)
    assert changed == ["train"]
    assert recipe.train.learning_rate == trained_lr and recipe.eval.max_items == 3
    code, _, err = run_cli("eval", "tiny-cpu", "train.learning_rate=0.5")
    assert "differs from the recipe run" in err and "(train)" in err
    assert code == 2 and "no trained model in" in err  # this run has no model: said after the note


@pytest.mark.model
def test_the_tiny_model_is_built_when_a_recipe_names_it(project, run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(tmp_path / "cache"))
    assert not (project / "models").exists()
    code, out, err = run_cli("prepare", "tiny-cpu")
    assert code == 0, err
    assert (project / "models" / "tiny-llama" / "config.json").is_file()
    assert "hf download" not in err


@pytest.mark.model
def test_recipe_tiny_model_shows_its_own_lines_and_logs_the_libraries(tmp_path):
    import subprocess
    import sys

    env = os.environ | {"RECIPE_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "tm"
    built = subprocess.run([sys.executable, "-m", "runner", "tiny-model", "--out", str(out)], capture_output=True,
                           text=True, timeout=300, env=env, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    assert built.stdout.strip() == "tm" and (out / "config.json").is_file()
    assert built.stderr.splitlines() == ["building tiny model in tm (a few seconds)"]  # torch's warnings: the log
    assert (tmp_path / "cache" / "logs" / "tiny-model.log").is_file()


@pytest.mark.model
def test_library_noise_goes_to_the_log_and_the_terminal_shows_the_runners_messages(project, tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("RECIPE_CACHE_DIR", str(tmp_path / "cache"))
    argv = [sys.executable, "-m", "runner", "generate", "tiny-cpu", "--prompt", "hi", "--max-new-tokens", "2"]
    quiet = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stderr.splitlines() == ["building tiny model in models/tiny-llama (a few seconds)",  # on demand
                                         "generate: tiny-cpu has no trained run yet; showing the base model only"]
    assert "> hi" in quiet.stdout
    log = (tmp_path / "cache" / "logs" / "generate.log").read_text()
    assert "Loading weights" in log  # transformers' progress bar, written to fd 2 by the library
    loud = subprocess.run([*argv, "-v"], capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0 and "Loading weights" in loud.stderr


def test_the_terminal_shows_the_trainers_progress_not_its_log():
    from runner.train.launch import _PROGRESS  # noqa: PLC0415

    shown = [" 83%|████████▎ | 5/6 [00:10<00:01,  1.17s/it]", "{'loss': '7.314', 'grad_norm': '0.2148'}",
             "{'eval_loss': '7.308'}", "{'train_runtime': '12.99'}"]
    hidden = ["Tokenizing Prompts (num_proc=2):  18%|█▊        | 40/218 [00:00<00:01, 136.41 examples/s]",
              "[2026-11-30 05:59:11,368] [INFO] [axolotl.core.trainers.base] Saving model checkpoint",
              "Failed to load /x/torchao/_C_mxfp8.so: Could not load this library"]
    assert all(_PROGRESS.search(line) for line in shown)
    assert not any(_PROGRESS.search(line) for line in hidden)
