"""One command grammar: `recipe --help` and every verb's help work; a run is named the same way in every verb
(RECIPE, RECIPE@RUN, a run id, a run folder, --run); every verb on a recipe or run takes key=value overrides, and a
verb on a finished run refuses a key that would change how the run was made."""
from __future__ import annotations

import argparse
import subprocess
import time

import pytest

from runner import cli
from runner.cli import app, targets
from runner.cli.train_verbs import _train_target
from runner.decide import runs_select
from runner.recipe import loading
from tests.helpers import ROOT, finished_run

# Every verb that acts on a run, with the options it needs to parse.
RUN_VERBS = {"merge": [], "eval": [], "generate": ["--prompt", "hi"], "report": [], "serve": [], "chat": [],
             "publish": ["--dry-run"]}


def _verbs() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_recipe_help_lists_every_verb_once_grouped_by_stage(capsys):
    grouped = [name for _, names in app.GROUPS for name in names]
    assert sorted(grouped) == sorted(_verbs()) and len(grouped) == len(set(grouped))
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "other:" not in out
    for title, names in app.GROUPS:
        assert out.index(f"{title}:\n") < min(out.index(f"\n  {name} ") for name in names)


def test_every_verb_help_exits_0(capsys):
    for name in ["--help", *(f"{verb} --help" for verb in _verbs())]:
        with pytest.raises(SystemExit) as done:
            cli.main(name.split())
        out = capsys.readouterr().out
        assert done.value.code == 0, name
        assert out.startswith("usage: recipe"), name
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "decide:\n  compare" in out and "95% intervals" in out and "Traceback" not in out


def test_every_run_spelling_names_the_same_run_in_every_verb(project):
    older = finished_run()
    time.sleep(1.1)  # run ids are stamped to the second
    latest = finished_run()
    assert older.run_id != latest.run_id
    by_option = ["--run", older.run_id]
    spellings = {f"tiny-cpu@{older.run_id}": [], older.run_id: [], str(older.path): [], "tiny-cpu": by_option,
                 str(project / "recipes" / "tiny-cpu.yaml"): by_option}
    parser = cli.build_parser()
    for verb, options in RUN_VERBS.items():
        for token, extra in spellings.items():
            args = parser.parse_args(app._overrides_after_recipe(parser, [verb, token, "eval.max_new_tokens=8",
                                                                          *extra, *options]))
            assert targets.run_of(args).path == older.path, (verb, token)
            assert targets.run_recipe(args, older, verb).eval.max_new_tokens == 8
        args = parser.parse_args([verb, "tiny-cpu", *options])
        assert targets.run_of(args).path == latest.path, verb
    for token, extra in spellings.items():  # train --resume and gate read the same spellings
        args = parser.parse_args(["train", token, "--resume", *extra[1:]])
        recipe, resume = _train_target(args)
        assert (loading.recipe_name(recipe), resume) == ("tiny-cpu", older.run_id), token
        side = runs_select.resolve(f"{token}@{extra[1]}" if extra else token)
        assert [r.path for r in side.runs] == [older.path], token


def test_report_takes_a_run_in_any_spelling_with_overrides(project, run_cli):
    run = finished_run()
    for argv in (["report", f"tiny-cpu@{run.run_id}", "eval.max_new_tokens=8"], ["report", run.run_id],
                 ["report", str(run.path), "publish.merge_adapter=true"], ["report", "tiny-cpu", "--run", run.run_id]):
        run.file("report.md").unlink(missing_ok=True)
        code, out, err = run_cli(*argv)
        assert code == 0, (argv, err)
        assert run.file("report.md").is_file()


def test_a_key_that_would_change_a_finished_run_is_exit_2_saying_why(project, run_cli):
    run = finished_run()
    lr = run.recipe().train.learning_rate
    for verb in ("report", "merge", "serve", "chat", "gate", "generate"):
        extra = ["--prompt", "hi"] if verb == "generate" else []
        code, out, err = run_cli(verb, f"tiny-cpu@{run.run_id}", "train.learning_rate=0.5", *extra)
        assert code == 2, (verb, err)
        assert "train.learning_rate" in err and "only eval.*, publish.* can change after training" in err, verb
        assert "recipe train tiny-cpu train.learning_rate=0.5" in err and "Traceback" not in err, verb
    code, _, err = run_cli("report", run.run_id, f"train.learning_rate={lr}")  # as the run was made: accepted
    assert code == 0, err
    code, _, err = run_cli("report", run.run_id, "eval.no_such_key=1")
    assert code == 2 and "eval.no_such_key" in err


def test_train_refuses_a_run_name_without_resume_and_a_second_run_id(project, run_cli):
    run = finished_run()
    code, _, err = run_cli("train", f"tiny-cpu@{run.run_id}")
    assert code == 2 and "--resume" in err
    code, _, err = run_cli("train", f"tiny-cpu@{run.run_id}", "--resume", "20200101-000000-abcdef12")
    assert code == 2 and "already names run" in err


def test_unknown_runs_are_exit_2_naming_the_spellings(project, run_cli):
    finished_run()
    code, _, err = run_cli("report", "tiny-cpu@20200101-000000-abcdef12")
    assert code == 2 and "unknown run '20200101-000000-abcdef12'" in err
    code, _, err = run_cli("report", "tiny-cpu@")
    assert code == 2 and "RECIPE@RUN" in err


def test_make_targets_pass_run_args_and_target(tmp_path):
    """`make -n` prints each recipe target's command: run= becomes RECIPE@RUN, args= and target= pass through."""
    def command(*argv: str) -> str:
        out = subprocess.run(["make", "-n", "--no-print-directory", "-o", "setup", "-o", "tiny-model", *argv],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return next(line for line in out.splitlines() if "/bin/recipe " in line).split("/bin/recipe ", 1)[1]

    run = ["recipe=tiny-cpu", "run=RUN1", "args=eval.max_new_tokens=8"]
    for verb in ("merge", "eval", "report", "gate", "serve", "chat", "publish", "generate"):
        assert command(*run, verb).split()[:3] == [verb, "tiny-cpu@RUN1", "eval.max_new_tokens=8"], verb
    assert command("recipe=tiny-cpu", "target=slurm", "args=train.max_steps=2", "plan").split() == [
        "plan", "tiny-cpu", "train.max_steps=2", "--target", "slurm"]
    assert command("recipe=tiny-cpu", "run=RUN1", "target=slurm", "train").split() == [
        "train", "tiny-cpu", "--target", "slurm", "--resume", "RUN1"]
    assert command("recipe=tiny-cpu", "prompt=Name a colour.", "generate").endswith('--prompt "Name a colour."')
    assert command("recipe=tiny-cpu", "args=hardware.gpus=2", "fit").split() == ["fit", "tiny-cpu", "hardware.gpus=2"]
    assert command("runs=a b", "compare").split() == ["compare", "a", "b"]
    assert command("recipe=sql-lr", "args=--seeds 1,2", "target=slurm", "sweep").split() == [
        "sweep", "sql-lr", "--seeds", "1,2", "--target", "slurm"]
    listed = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for target in ("generate", "serve", "chat", "publish", "compare", "sweep", "gate", "fit"):
        assert f"make {target} " in listed, target
