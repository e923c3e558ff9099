"""One test per error shape: a malformed recipe gives exit 2, the file, the key path and a hint; no traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import VALID_RECIPE as VALID


def _validate(write_recipe, run_cli, text: str, name: str = "demo"):
    write_recipe(name, text)
    code, out, err = run_cli("validate", name)
    assert "Traceback" not in err
    return code, err


def test_valid_recipe_passes(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID)
    assert code == 0, err


@pytest.mark.parametrize("text, expected", [
    ("", "the file is empty"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("schema: 1\nname: [unclosed\n", "invalid YAML"),
    ("schema: 1\nname: demo\nname: demo\n", "duplicate key 'name' (first at line 2)"),
    ("schema: 1\nname: !!python/object/apply:os.system ['echo hi']\n", "no Python object tags"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     "an alias bomb"),
])
def test_yaml_level_errors(write_recipe, run_cli, text, expected):
    code, err = _validate(write_recipe, run_cli, text)
    assert code == 2
    assert "recipes/demo.yaml" in err and expected in err


def test_non_utf8_bytes(project, run_cli):
    (project / "recipes" / "demo.yaml").write_bytes(VALID.encode() + b"description: caf\xe9\n")
    code, out, err = run_cli("validate", "demo")
    assert code == 2 and "not UTF-8 (byte 0xe9" in err and "demo.yaml:11" in err


def test_unknown_key_suggests_the_closest(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID + "train:\n  lerning_rate: 0.1\n")
    assert code == 2
    assert "recipes/demo.yaml:12: train.lerning_rate: unknown key (did you mean learning_rate?)" in err


def test_missing_required_key(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID.replace("version: 1.0.0\n", ""))
    assert code == 2 and "version: required key is missing" in err


def test_wrong_type_names_the_value(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID + "train:\n  micro_batch_size: lots\n")
    assert code == 2 and "train.micro_batch_size" in err and "'lots'" in err


def test_closed_choice_lists_allowed_values(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID + "method:\n  kind: qlor\n")
    assert code == 2
    assert ("method.kind: 'qlor' is not allowed (allowed: full, lora, qlora, dpo, ipo, orpo, kto, simpo, grpo) "
            "(did you mean qlora?)") in err


def test_all_problems_reported_at_once(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID + "train:\n  lerning_rate: 1\n  epoch: 2\n")
    assert code == 2 and "2 problems" in err and "lerning_rate" in err and "epoch" in err


def test_unknown_schema_version(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID.replace("schema: 1", "schema: 7"))
    assert code == 2 and "schema: recipe-language version 7 is not supported" in err


def test_missing_schema_version(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID.replace("schema: 1\n", ""))
    assert code == 2 and "schema: missing; a recipe starts with `schema: 1`" in err


def test_name_must_match_file(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID.replace("name: demo", "name: other"))
    assert code == 2 and "name: 'other' differs from the file name 'demo'" in err


def test_missing_parent_is_named(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID.replace("_base/method/lora.yaml", "_base/method/lorra.yaml"))
    assert code == 2 and "extends: parent '_base/method/lorra.yaml' not found" in err


def test_extends_cycle_is_printed(write_recipe, run_cli):
    write_recipe("b", "schema: 1\nextends: demo\n")
    code, err = _validate(write_recipe, run_cli, VALID.replace("extends: [", "extends: [b, "))
    assert code == 2 and "cycle: recipes/demo.yaml -> recipes/b.yaml -> recipes/demo.yaml" in err


def test_batch_arithmetic_shows_the_numbers(write_recipe, run_cli):
    text = VALID + "train:\n  micro_batch_size: 4\n  gradient_accumulation_steps: 2\n  global_batch_size: 16\n"
    code, err = _validate(write_recipe, run_cli, text)
    assert code == 2
    assert "16 != micro_batch_size x gradient_accumulation_steps x gpus x nodes = 4 x 2 x 1 x 1 = 8" in err


def test_global_batch_must_divide(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID + "train:\n  micro_batch_size: 4\n  global_batch_size: 10\n")
    assert code == 2 and "10 is not a multiple of micro_batch_size x gpus x nodes = 4 x 1 x 1 = 4" in err


def test_qlora_needs_a_gpu(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID + "method:\n  kind: qlora\n")
    assert code == 2 and "method.kind: qlora needs 4-bit kernels on a GPU" in err


def test_deepspeed_needs_several_processes(write_recipe, run_cli):
    text = VALID.replace("_base/hardware/cpu.yaml", "_base/hardware/1gpu.yaml") + "hardware:\n  deepspeed: zero2\n"
    code, err = _validate(write_recipe, run_cli, text)
    assert code == 2 and "hardware.deepspeed: zero2 shards across processes but gpus x nodes = 1 x 1 = 1" in err


def test_flash_attention_only_on_gpu(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID + "hardware:\n  attention: flash\n")
    assert code == 2 and "hardware.attention: flash attention needs a GPU" in err


def test_lora_keys_only_with_adapters(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID + "method:\n  kind: full\n")
    assert code == 2 and "method.lora: LoRA settings given but method.kind is 'full'" in err


def test_template_variable_not_mapped(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID.replace("instruction: instruction, ", ""))
    assert code == 2
    assert "data.datasets.0.fields: template 'alpaca' needs ['instruction']" in err


def test_unknown_template_lists_templates(write_recipe, run_cli):
    code, err = _validate(write_recipe, run_cli, VALID.replace("template: alpaca", "template: alpacca"))
    assert code == 2 and "unknown template 'alpacca' (did you mean alpaca?); available: alpaca, chatml" in err


def test_sequence_length_within_model_limit(write_recipe, run_cli):
    text = VALID.replace("model: {base: models/tiny-llama}", "model: {base: models/tiny-llama, context_length: 128}")
    code, err = _validate(write_recipe, run_cli, text + "  max_seq_len: 256\n")
    assert code == 2 and "data.max_seq_len: 256 exceeds the model's context length 128" in err


def test_trust_remote_code_is_off_and_needs_a_real_boolean(write_recipe, run_cli, project):
    from runner.recipe import loading

    write_recipe("demo", VALID)
    assert loading.load("demo").recipe.model.trust_remote_code is False
    code, err = _validate(write_recipe, run_cli, VALID.replace("{base: models/tiny-llama}",
                                                                "{base: x, trust_remote_code: 'yes'}"))
    assert code == 2 and "model.trust_remote_code" in err


def test_unknown_recipe_name_suggests(project, run_cli):
    code, out, err = run_cli("show", "tiny-cpuu")
    assert code == 2 and "unknown recipe 'tiny-cpuu' (did you mean tiny-cpu?)" in err


def test_console_script_exits_2_without_traceback(write_recipe, project):
    write_recipe("demo", VALID + "train:\n  lerning_rate: 0.1\n")
    result = subprocess.run([sys.executable, "-m", "runner", "validate", "demo"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "did you mean learning_rate?" in result.stderr


def test_generate_with_a_missing_prompts_file_is_a_clear_error(run_cli, tmp_path):
    code, out, err = run_cli("generate", "tiny-cpu", "--file", str(tmp_path / "missing.txt"))
    assert code == 2 and "missing.txt: --file: cannot read the prompts file" in err and "Traceback" not in err
