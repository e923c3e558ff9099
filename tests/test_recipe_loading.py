"""Extends, overrides, fingerprints, lock and diff; every shipped recipe validates."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.core import paths
from runner.recipe import loading, snapshots
from tests.helpers import VALID_RECIPE as VALID

ROOT = Path(__file__).resolve().parent.parent


def test_every_file_under_recipes_validates():
    # A recursive glob, so a recipe in a subfolder is not silently skipped.
    files = sorted((ROOT / "recipes").rglob("*.yaml"))
    recipes = [f for f in files if not {"_base", "resolved"} & set(f.relative_to(ROOT / "recipes").parts)]
    assert len(recipes) >= 6 and len(loading.base_files()) >= 7
    assert loading.validate_all() == []
    for path in recipes:
        assert loading.load(path).recipe.name == path.stem


def test_resolved_snapshots_are_current():
    assert snapshots.check() == []


def test_extends_deep_merges_mappings_and_replaces_lists(write_recipe):
    write_recipe("parent",
                 VALID.replace("name: demo\n", "name: parent\n") + "train:\n  seed: 7\n  learning_rate: 0.5\n")
    child = """\
    schema: 1
    name: child
    version: 2.0.0
    extends: parent
    train: {learning_rate: 0.25}
    data:
      datasets:
        - source: file:data/samples/dolly15k-sample.jsonl
          fields: {instruction: instruction, input: context, output: response}
    """
    write_recipe("child", child)
    recipe = loading.load("child").recipe
    assert recipe.train.learning_rate == 0.25 and recipe.train.seed == 7  # merged
    assert [d.source for d in recipe.data.datasets] == ["file:data/samples/dolly15k-sample.jsonl"]  # replaced
    assert recipe.data.template == "alpaca" and recipe.method.kind == "lora"  # from the chain


def test_overrides_are_typed_by_the_schema(write_recipe):
    write_recipe("demo", VALID)
    recipe = loading.load("demo", ["train.learning_rate=1e-4", "data.packing=false", "hardware.gpus=8",
                                   "data.datasets.0.weight=2"]).recipe
    assert recipe.train.learning_rate == 1e-4 and recipe.data.packing is False
    assert recipe.hardware.gpus == 8 and recipe.data.datasets[0].weight == 2.0


def test_override_below_a_scalar_list_item_is_a_schema_error(write_recipe, run_cli):
    write_recipe("demo", VALID)
    code, out, err = run_cli("show", "demo", "method.lora.target=[q_proj]", "method.lora.target.0.x=1")
    assert code == 2 and "method.lora.target" in err and "valid string" in err and "Traceback" not in err


def test_override_without_equals_is_a_user_error(write_recipe, run_cli):
    write_recipe("demo", VALID)
    code, out, err = run_cli("show", "demo", "train.learning_rate")
    assert code == 2 and "an override is key.path=value" in err


def test_fingerprint_is_stable_and_sensitive(write_recipe):
    write_recipe("demo", VALID)
    first, again = loading.load("demo"), loading.load("demo")
    changed = loading.load("demo", ["train.seed=1"])
    assert first.fingerprint == again.fingerprint != changed.fingerprint


def test_batch_accumulation_is_derived_from_the_global_batch(write_recipe):
    write_recipe("demo", VALID + "train:\n  micro_batch_size: 2\n  global_batch_size: 32\n")
    recipe = loading.load("demo", ["hardware.gpus=2", "hardware.nodes=2"]).recipe
    assert recipe.gradient_accumulation == 4  # 32 / (2 x 2 x 2)
    assert recipe.global_batch == 32


def test_lock_writes_then_check_detects_a_base_change(project, run_cli):
    (project / "recipes" / "resolved" / "tiny-cpu.yaml").unlink()
    assert "recipes/resolved/tiny-cpu.yaml: missing" in run_cli("lock", "--check")[2]
    code, out, err = run_cli("lock")
    assert code == 0 and "wrote recipes/resolved/tiny-cpu.yaml" in out
    assert run_cli("lock", "--check")[0] == 0
    base = project / "recipes" / "_base" / "method" / "lora.yaml"
    base.write_text(base.read_text().replace("dropout: 0.05", "dropout: 0.1"))
    code, out, err = run_cli("lock", "--check")
    assert code == 1 and "recipes/resolved/codellama7b-text-to-sql.yaml: out of date" in err
    assert "run `make lock`" in err


def test_show_prints_canonical_yaml_with_fingerprint(project, run_cli):
    code, out, err = run_cli("show", "tiny-cpu", "train.seed=3")
    assert code == 0 and out.startswith("# recipes/tiny-cpu.yaml  fingerprint ")
    assert "  seed: 3\n" in out


def test_diff_shows_only_differences(project, run_cli):
    code, out, err = run_cli("diff", "codellama7b-text-to-sql", "mistral7b-text-to-sql")
    assert code == 0
    assert "-  base: codellama/CodeLlama-7b-hf" in out and "+  base: mistralai/Mistral-7B-v0.1" in out
    assert not any(line[:1] in "+-" and "template:" in line for line in out.splitlines())  # equal: not shown


def test_schema_is_json_schema_with_every_section(run_cli):
    import json

    code, out, err = run_cli("schema")
    schema = json.loads(out)
    assert code == 0 and {"model", "method", "data", "train", "hardware", "eval"} <= set(schema["properties"])


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_opens_with_what_it_is_and_how_to_run_it(path):
    head = path.read_text().split("schema:", 1)[0]
    assert f"make recipe={path.stem}" in head and head.count("\n# ") >= 2
    assert paths.display(path).startswith("recipes/")
