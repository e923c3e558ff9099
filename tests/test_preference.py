"""Preference tuning (dpo, ipo, orpo, kto, simpo): recipe keys and their cross-checks, rendered pairs (golden),
preparation counts, the axolotl `rl:` settings (accepted by axolotl's own validation), and short real trainings on
the tiny model through axolotl and trl with their reward metrics in metrics.jsonl and the report.

Regenerate the golden pairs with `make golden` (UPDATE_GOLDEN=1) and review the diff.
"""
from __future__ import annotations

import json
import math
import os
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from runner.core import jsonl
from runner.data import preference
from runner.data.fields import IncompleteRow
from runner.recipe import loading, templates
from runner.recipe.schema import DatasetSpec
from runner.report import plots
from runner.runs.records import MetricsRow
from runner.train import engine
from runner.train.plan import engine_files

GOLDEN = Path(__file__).parent / "golden" / "preference"
ROOT = Path(__file__).resolve().parent.parent
TOKENS = replace(templates.TokenizerTokens(bos_token="<s>", eos_token="</s>"),
                 chat_template=("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
                                "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
                                "{{ '<|im_start|>assistant\n' }}{% endif %}"))
TEXT = {"prompt": "q", "chosen": "c", "rejected": "r"}
ULTRAFEEDBACK = {"prompt": "How many legs has a spider?",
                 "chosen": [{"role": "user", "content": "How many legs has a spider?"},
                            {"role": "assistant", "content": "Eight."}],
                 "rejected": [{"role": "user", "content": "How many legs has a spider?"},
                              {"role": "assistant", "content": "Six, like all insects."}]}
MULTI_TURN = [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7."},
              {"role": "user", "content": "A larger one?"}]
ORCA = {"system": "You are an AI assistant.", "question": "Is 91 prime?", "chosen": "No: 91 = 7 x 13.",
        "rejected": "Yes."}
CASES = {  # name: (template, field mapping, row, kind, data.system)
    "alpaca-text-pair": ("alpaca", TEXT | {"input": "i"}, {"q": "Add them.", "i": "2, 3", "c": "5", "r": "6"},
                         "pairs", None),
    "qa-text-pair": ("qa", TEXT, {"q": "What causes a cold?", "c": "A virus.", "r": "Cold weather."}, "pairs", None),
    "chatml-text-pair-system": ("chatml", TEXT, {"q": "Say hi.", "c": "Hi!", "r": "No."}, "pairs", "Be kind."),
    "chatml-orca-pair": ("chatml", {"system": "system", "prompt": "question", "chosen": "chosen",
                                    "rejected": "rejected"}, ORCA, "pairs", None),
    "chatml-ultrafeedback-pair": ("chatml", {"chosen": "chosen", "rejected": "rejected"}, ULTRAFEEDBACK, "pairs",
                                  None),
    "zephyr-multi-turn-pair": ("zephyr", {"chosen": "chosen", "rejected": "rejected"},
                               {"chosen": [*MULTI_TURN, {"role": "assistant", "content": "11."}],
                                "rejected": [*MULTI_TURN, {"role": "assistant", "content": "9."}]}, "pairs", None),
    "tokenizer-answer-only-lists": ("tokenizer", {"prompt": "p", "chosen": "c", "rejected": "r"},
                                    {"p": "2+2?", "c": [{"role": "assistant", "content": "4"}],
                                     "r": [{"role": "assistant", "content": "5"}]}, "pairs", None),
    "alpaca-kto-row": ("alpaca", {"prompt": "q", "completion": "c", "label": "l"},
                       {"q": "Name a colour.", "c": "Blue.", "l": False}, "kto", None),
}


def _spec(mapping: dict) -> DatasetSpec:
    return DatasetSpec(source="file:x.jsonl", fields=mapping)


def _build(case: str) -> dict:
    template, mapping, row, kind, system = CASES[case]
    build = preference.pair if kind == "pairs" else preference.kto_row
    return build(row, _spec(mapping), templates.load(template), TOKENS, system)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_rendered_pairs(case):
    """Each side renders through the recipe's template as SFT renders it: the prompt is the text before the trained
    answer, and the answer carries the template's end marker."""
    built = _build(case)
    template, _, row, _, _ = CASES[case]
    shown = {key: value for key, value in built.items() if key != "segments"}
    text = json.dumps({"template": template, "row": row, **shown}, indent=2, ensure_ascii=False) + "\n"
    path = GOLDEN / f"{case}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text, f"{path.name} changed: review, then `make golden`"


def test_pair_prompt_is_the_sft_prompt():
    """One template, every use: a pair's prompt is what SFT trains on and what evaluation prompts with."""
    template = templates.load("chatml")
    built = preference.pair({"q": "Say hi.", "c": "Hi!", "r": "No."}, _spec(TEXT), template, TOKENS, "Be kind.")
    sft = templates.render(template, {"messages": [{"role": "user", "content": "Say hi."},
                                                   {"role": "assistant", "content": "Hi!"}], "system": "Be kind."},
                           TOKENS)
    prompt, _ = templates.prompt_and_reference(sft)
    assert built["prompt"] == prompt
    assert built["chosen"] == next(s.text for s in sft if s.label) == "Hi!<|im_end|>"


def test_empty_system_column_falls_back_to_data_system():
    """Orca pairs leave `system` empty on some rows: such a row keeps its pair and takes data.system (not dropped)."""
    mapping = {"system": "system", "prompt": "question", "chosen": "chosen", "rejected": "rejected"}
    built = preference.pair(ORCA | {"system": ""}, _spec(mapping), templates.load("chatml"), TOKENS, "Default.")
    assert built["prompt"].startswith("<|im_start|>system\nDefault.<|im_end|>")
    built = preference.pair(ORCA | {"system": ""}, _spec(mapping), templates.load("chatml"), TOKENS)
    assert built["prompt"].startswith("<|im_start|>user\nIs 91 prime?")


@pytest.mark.parametrize(("row", "message"), [
    ({"q": "x", "c": "", "r": "y"}, "column 'c' (for chosen) is missing or empty"),
    ({"q": "x", "c": "y"}, "column 'r' (for rejected) is missing or empty"),
    ({"c": "y", "r": "z"}, "column 'q' (for instruction) is missing or empty"),
])
def test_incomplete_pairs(row, message):
    with pytest.raises(IncompleteRow, match=message.replace("(", r"\(").replace(")", r"\)")):
        preference.pair(row, _spec(TEXT), templates.load("alpaca"), TOKENS)


def test_identical_and_mismatched_pairs():
    with pytest.raises(preference.IdenticalPair):
        preference.pair({"q": "x", "c": "same", "r": "same"}, _spec(TEXT), templates.load("alpaca"), TOKENS)
    other = {**ULTRAFEEDBACK, "rejected": [{"role": "user", "content": "Another question"},
                                           {"role": "assistant", "content": "Six."}]}
    with pytest.raises(IncompleteRow, match="differ before their last answer"):
        preference.pair(other, _spec({"chosen": "chosen", "rejected": "rejected"}), templates.load("chatml"), TOKENS)
    user_last = {**ULTRAFEEDBACK, "chosen": ULTRAFEEDBACK["chosen"][:1]}
    with pytest.raises(IncompleteRow):
        preference.pair(user_last, _spec({"chosen": "chosen", "rejected": "rejected"}), templates.load("chatml"),
                        TOKENS)


@pytest.mark.parametrize("label", ["yes", None, 2.5, [1]])
def test_kto_label_must_be_true_or_false(label):
    spec = _spec({"prompt": "q", "completion": "c", "label": "l"})
    with pytest.raises(IncompleteRow, match="is not true/false"):
        preference.kto_row({"q": "x", "c": "y", "l": label}, spec, templates.load("alpaca"), TOKENS)


# --- recipes: keys and cross-checks -------------------------------------------------------------------------------

def _pairs_file(project: Path, rows: int = 48) -> None:
    """pref/pairs.jsonl and pref/kto.jsonl in the throw-away project, made from data/samples/alpaca-sample.jsonl:
    chosen is a row's own answer, rejected the next row's (fluent, wrong); kto rows are both sides, labeled."""
    source = [json.loads(line) for line in (ROOT / "data/samples/alpaca-sample.jsonl").read_text().splitlines()]
    source = [r for r in source if len(r["output"]) < 200][:rows]
    pairs = [{"instruction": r["instruction"], "input": r["input"], "chosen": r["output"],
              "rejected": source[(i + 1) % len(source)]["output"]} for i, r in enumerate(source)]
    (project / "pref").mkdir(exist_ok=True)
    jsonl.write(project / "pref" / "pairs.jsonl", pairs)
    jsonl.write(project / "pref" / "kto.jsonl", [{"instruction": p["instruction"], "input": p["input"],
                                                  "completion": p[side], "label": side == "chosen"}
                                                 for p in pairs for side in ("chosen", "rejected")])


PAIR_FIELDS = "{prompt: instruction, input: input, chosen: chosen, rejected: rejected}"
KTO_FIELDS = "{prompt: instruction, input: input, completion: completion, label: label}"
SFT_FIELDS = "{instruction: instruction, input: input, output: chosen}"


def _recipe_text(name: str, kind: str, fields: str = PAIR_FIELDS, source: str = "pref/pairs.jsonl",
                 extra: str = "", val: int = 4) -> str:
    return f"""\
        schema: 1
        version: 1.0.0
        name: {name}
        extends: [_base/method/lora.yaml, _base/hardware/cpu.yaml]
        model: {{base: models/tiny-llama, context_length: 512}}
        method:
          kind: {kind}
          lora: {{r: 8, alpha: 16, dropout: 0.0, target: all-linear}}
        data:
          datasets:
            - source: file:{source}
              fields: {fields}
          template: alpaca
          max_seq_len: 256
          packing: false
          split: {{val: {val}, test: 4, seed: 42}}
        train:
          epochs: null
          max_steps: 2
          micro_batch_size: 2
          gradient_accumulation_steps: 1
          learning_rate: 1.0e-3
          warmup_ratio: 0.0
          logging_steps: 1
          save_steps: null
        eval: {{max_items: 4}}
        {extra}"""


@pytest.fixture
def pref_project(project, write_recipe):
    _pairs_file(project)
    for kind in ("dpo", "ipo", "orpo", "simpo"):
        write_recipe(f"tiny-{kind}", _recipe_text(f"tiny-{kind}", kind))
    write_recipe("tiny-kto", _recipe_text("tiny-kto", "kto", KTO_FIELDS, "pref/kto.jsonl"))
    return project


BAD = {  # name: (method kind, fields, extra yaml, key in the message, words of the fix)
    "dpo-without-pairs": ("dpo", "{instruction: instruction, input: input, output: chosen}", "",
                          "data.datasets.0.fields", "maps no chosen and no rejected"),
    "dpo-only-chosen": ("dpo", "{prompt: instruction, chosen: chosen}", "", "data.datasets.0.fields",
                        "rejected is not mapped"),
    "kto-on-pairs": ("kto", PAIR_FIELDS, "", "data.datasets.0.fields", "kto takes completion + label rows"),
    "lora-on-pairs": ("lora", PAIR_FIELDS, "", "data.datasets.0.fields", "set method.kind to dpo"),
    "gamma-on-dpo": ("dpo", PAIR_FIELDS, "method: {gamma: 0.5}", "method.gamma", "use kind: simpo"),
    "kto-weight-on-orpo": ("orpo", PAIR_FIELDS, "method: {desirable_weight: 2.0}", "method.desirable_weight",
                           "use kind: kto"),
    "beta-on-sft": ("lora", "{instruction: instruction, output: chosen}", "method: {beta: 0.1}", "method.beta",
                    "set kind to one of"),
    "tuning-on-sft": ("lora", "{instruction: instruction, output: chosen}", "method: {tuning: full}",
                      "method.tuning", "remove method.tuning"),
    "qlora-dpo-on-cpu": ("dpo", PAIR_FIELDS, "method: {tuning: qlora}", "method.tuning", "use lora on cpu"),
    "full-dpo-with-lora": ("dpo", PAIR_FIELDS, "method: {tuning: full}", "method.lora", "remove method.lora"),
    "packed-dpo": ("dpo", PAIR_FIELDS, "data: {packing: true}", "data.packing", "set data.packing: false"),
    "simpo-warmup": ("simpo", PAIR_FIELDS, "train: {warmup_ratio: 0.1}", "train.warmup_ratio",
                     "set train.warmup_ratio: 0"),
    "negative-beta": ("dpo", PAIR_FIELDS, "method: {beta: -1}", "method.beta", "greater than 0"),
    "grpo-without-rewards": ("grpo", SFT_FIELDS, "", "method.rewards", "add e.g. rewards: [token_f1]"),
    "grpo-sql-reward-without-database": ("grpo", SFT_FIELDS, "method: {rewards: [sql_execution]}", "method.rewards",
                                         "has no sql.database; set eval.suite to a suite that has one"),
    "grpo-unknown-reward": ("grpo", SFT_FIELDS, "method: {rewards: [token_f2]}", "method.rewards",
                            "allowed: bleu, exact_match"),
    "grpo-batch": ("grpo", SFT_FIELDS, "method: {rewards: [token_f1], generations: 3}", "method.generations",
                   "make the batch a multiple of 3"),
    "sft-weight-on-orpo": ("orpo", PAIR_FIELDS, "method: {sft_weight: 1.0}", "method.sft_weight", "use kind: dpo"),
    "generations-on-dpo": ("dpo", PAIR_FIELDS, "method: {generations: 4}", "method.generations",
                           "use kind: grpo"),
    "grpo-on-pairs": ("grpo", PAIR_FIELDS, "method: {rewards: [token_f1]}", "data.datasets.0.fields",
                      "set method.kind to dpo"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_preference_recipes_exit_2(case, project, write_recipe, run_cli):
    kind, fields, extra, key, fix = BAD[case]
    _pairs_file(project)
    text = _recipe_text("bad", kind, fields)
    if extra:  # merge the extra section into the recipe as a mapping
        data = yaml.safe_load(textwrap.dedent(text))
        for section, values in yaml.safe_load(extra).items():
            data[section] = {**data[section], **values}
        text = yaml.safe_dump(data, sort_keys=False)
    write_recipe("bad", text)
    code, _, err = run_cli("validate", "bad")
    assert code == 2, err
    assert "recipes/bad.yaml" in err and key in err and fix in err, err
    assert "Traceback" not in err


@pytest.mark.model
def test_preference_data_counts(pref_project, run_cli):
    """Prepared pairs: identical pairs are dropped and counted, empty sides follow data.incomplete."""
    rows = [json.loads(line) for line in (pref_project / "pref" / "pairs.jsonl").read_text().splitlines()]
    rows[0]["rejected"] = rows[0]["chosen"]  # identical
    rows[1]["rejected"] = "  "  # an empty side
    del rows[2]["chosen"]  # a missing field
    jsonl.write(pref_project / "pref" / "pairs.jsonl", rows)
    code, out, err = run_cli("prepare", "tiny-dpo")
    assert code == 0, err
    assert "pref/pairs.jsonl: 48 rows, 2 incomplete, 1 identical pairs dropped" in out
    assert "pairs: {'train': 37, 'val': 4, 'test': 4}" in out  # 48 - 3 dropped = 45 pairs: 4 val, 4 test, 37 train
    from runner.data.prepare import prepare

    prepared = prepare(loading.load("tiny-dpo"), quiet=True)
    assert prepared.info.rows == "pairs"
    train = jsonl.read(prepared.split("train")).rows
    assert set(train[0]) == {"prompt", "chosen", "rejected"}
    assert all(r["chosen"].endswith("</s>") and r["rejected"].endswith("</s>") for r in train)
    test = jsonl.read(prepared.split("test")).rows
    assert {"prompt", "reference", "chosen", "rejected", "segments"} <= set(test[0])
    assert test[0]["chosen"].startswith(test[0]["reference"])  # evaluation scores against the chosen answer

    (pref_project / "recipes" / "tiny-dpo.yaml").write_text(
        (pref_project / "recipes" / "tiny-dpo.yaml").read_text().replace("packing: false",
                                                                         "packing: false\n  incomplete: error"))
    code, _, err = run_cli("prepare", "tiny-dpo")
    assert code == 2
    assert "pref/pairs.jsonl" in err and "data.datasets.0.fields" in err and "row 2" in err
    assert "set data.incomplete: drop" in err


@pytest.mark.model
def test_render_shows_pairs(pref_project, run_cli):
    """`recipe render` of a preference recipe shows the prompt and each trained answer, as trl receives them."""
    code, out, err = run_cli("render", "tiny-dpo")
    assert code == 0, err
    assert "### Response:\n  chosen: [[" in out and "\n  rejected: [[" in out
    code, out, err = run_cli("render", "tiny-kto")
    assert code == 0, err
    assert "completion (label true): [[" in out and "completion (label false): [[" in out


@pytest.mark.model
def test_all_identical_is_an_error(pref_project, run_cli):
    rows = [json.loads(line) for line in (pref_project / "pref" / "pairs.jsonl").read_text().splitlines()]
    jsonl.write(pref_project / "pref" / "pairs.jsonl", [r | {"rejected": r["chosen"]} for r in rows])
    code, _, err = run_cli("prepare", "tiny-dpo")
    assert code == 2
    assert "chosen equals rejected" in err and "data.datasets.0.fields" in err


# --- engine settings, accepted by axolotl ------------------------------------------------------------------------

EXPECTED = {
    "dpo": {"rl": "dpo", "rl_beta": 0.1},
    "ipo": {"rl": "ipo", "rl_beta": 0.1},
    "orpo": {"rl": "orpo", "orpo_alpha": 0.1},
    "simpo": {"rl": "simpo", "rl_beta": 2.0, "simpo_gamma": 0.5},
    "kto": {"rl": "kto", "rl_beta": 0.1, "kto_desirable_weight": 1.0, "kto_undesirable_weight": 1.0,
            "remove_unused_columns": False},
}


GRPO = "method: {kind: grpo, rewards: [token_f1, exact_match], generations: 2, max_completion_length: 16}"


def test_grpo_config_and_rewards(project, write_recipe):
    """grpo: the eval metrics are the reward functions axolotl imports; generation runs without vLLM; no reference
    model unless beta is set. axolotl's validation accepts the config."""
    _pairs_file(project)
    data = yaml.safe_load(textwrap.dedent(_recipe_text("tiny-grpo", "grpo", SFT_FIELDS)))
    data["method"] |= yaml.safe_load(GRPO)["method"]
    write_recipe("tiny-grpo", yaml.safe_dump(data, sort_keys=False))
    loaded = loading.load("tiny-grpo")
    config = yaml.safe_load(engine_files(loaded, "local", "models/tiny-llama", has_val=True)["axolotl.yaml"])
    assert config["rl"] == "grpo" and config["trl"] == {
        "beta": 0.0, "num_generations": 2, "use_vllm": False, "max_completion_length": 16,
        "reward_funcs": ["runner.metrics.rewards.token_f1", "runner.metrics.rewards.exact_match"]}
    assert _validate(config, loaded.recipe)["rl"].value == "grpo"
    from runner.metrics import rewards

    assert rewards.token_f1(["Paris.### Question: more"], ["Paris."], [["### Question:"]]) == [1.0]
    assert rewards.exact_match(["Lyon</s>", "Paris"], ["Paris", "Paris"], [["</s>"], ["</s>"]]) == [0.0, 1.0]
    assert rewards.token_f1.__name__ == "token_f1"  # trl logs rewards/token_f1/mean


SQL_GRPO = "method: {kind: grpo, rewards: [sql_execution], generations: 2, max_completion_length: 16}"


def _sql_grpo_recipe(project, write_recipe, rows: list[dict] | None = None) -> None:
    """tiny-sql-grpo: the tiny model on the SQL demo's first 24 training questions, scored by the sql suite."""
    rows = rows or jsonl.read(ROOT / "data" / "sql-demo" / "train.jsonl").rows[:24]
    (project / "sqlq").mkdir(exist_ok=True)
    jsonl.write(project / "sqlq" / "train.jsonl", rows)
    data = yaml.safe_load(textwrap.dedent(_recipe_text("tiny-sql-grpo", "grpo", SQL_FIELDS, "sqlq/train.jsonl",
                                                       val=0)))
    data["method"] |= yaml.safe_load(SQL_GRPO)["method"]
    data["eval"] = {"suite": "sql", "max_items": 4}
    write_recipe("tiny-sql-grpo", yaml.safe_dump(data, sort_keys=False))


SQL_FIELDS = "{instruction: question, input: context, output: answer}"


def test_sql_execution_rewards_each_answer_on_its_rows_database():
    """grpo's sql_execution reward runs each answer on the database its row names (the eval suite's pattern), as
    evaluation scores it: the same rows written another way earn 1, other rows or an error 0."""
    from runner.metrics import rewards

    pattern = str(ROOT / "data" / "sql-demo" / "{db}.sql")
    gold = "SELECT name FROM customers WHERE city = 'Vienna'"
    answers = ["SELECT name FROM customers WHERE 'Vienna' = city<|im_end|>junk", "SELECT name FROM customers",
               "SELECT nme FROM customers"]
    assert rewards.sql_execution(answers, [gold] * 3, [["<|im_end|>"]] * 3, db=["shop"] * 3,
                                 sql_database=[pattern] * 3) == [1.0, 0.0, 0.0]


@pytest.mark.model
def test_grpo_rewarded_by_sql_names_each_rows_database(project, write_recipe, tiny_model_dir, run_cli,
                                                       monkeypatch):
    """Prepared grpo rows carry their db and the suite's database pattern (trl passes both to the reward); a row
    whose db names no database file is exit 2 naming the row, and nothing is published to the cache."""
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(project / "cache"))  # its own: model tests share one per session
    _sql_grpo_recipe(project, write_recipe)
    code, _, err = run_cli("prepare", "tiny-sql-grpo")
    assert code == 0, err
    prepared = next((project / "cache" / "data").glob("*/train.jsonl"))
    row = jsonl.read(prepared).rows[0]
    assert row["db"] == "shop" and row["sql_database"] == str(project / "data" / "sql-demo" / "{db}.sql")
    rows = jsonl.read(ROOT / "data" / "sql-demo" / "train.jsonl").rows[:24]
    rows[2]["db"] = "warehouse"
    _sql_grpo_recipe(project, write_recipe, rows)
    code, _, err = run_cli("prepare", "tiny-sql-grpo")
    assert code == 2 and "warehouse.sql does not exist (row 3 of sqlq/train.jsonl, db 'warehouse')" in err, err
    assert "Traceback" not in err and len(list((project / "cache" / "data").glob("*/train.jsonl"))) == 1


def _validate(config: dict, recipe) -> dict:
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    gpu = recipe.hardware.device == "cuda"
    # The capabilities axolotl would probe on an A100 (no GPU exists here).
    capabilities = {"bf16": gpu, "fp8": False, "tf32": gpu, "n_gpu": recipe.hardware.world_size,
                    "compute_capability": "sm_80" if gpu else None}
    config = DictDefault(config)
    prepare_plugins(config)
    return validate_config(config, capabilities=capabilities, env_capabilities={"torch_version": "2.13.0"})


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_axolotl_accepts_each_method(kind, pref_project):
    recipe = loading.load(f"tiny-{kind}").recipe
    config = yaml.safe_load(engine_files(loading.load(f"tiny-{kind}"), "local", "models/tiny-llama",
                                         has_val=True)["axolotl.yaml"])
    assert {k: config[k] for k in EXPECTED[kind]} == EXPECTED[kind]
    assert config["sample_packing"] is False and "type" not in config["datasets"][0]
    assert config["adapter"] == "lora" and "rl_adapter_ref_model" not in config  # reference: adapter disabled
    validated = _validate(config, recipe)
    assert validated["rl"].value == kind


def test_dpo_with_sft_weight_adds_the_chosen_likelihood_term(pref_project, write_recipe):
    write_recipe("tiny-dpo", _recipe_text("tiny-dpo", "dpo").replace(
        "        method:\n          kind: dpo\n", "        method:\n          kind: dpo\n          sft_weight: 0.5\n"))
    loaded = loading.load("tiny-dpo")
    config = yaml.safe_load(engine_files(loaded, "local", "models/tiny-llama", has_val=True)["axolotl.yaml"])
    assert (config["dpo_loss_type"], config["dpo_loss_weights"]) == (["sigmoid", "sft"], [1.0, 0.5])
    validated = _validate(config, loaded.recipe)
    assert (validated["dpo_loss_type"], validated["dpo_loss_weights"]) == (["sigmoid", "sft"], [1.0, 0.5])


def test_sft_config_has_no_rl_keys():
    config = engine.axolotl_config(loading.load("tiny-cpu").recipe, "models/tiny-llama")
    assert "rl" not in config and config["datasets"][0]["type"] == "input_output"


@pytest.mark.parametrize("name", ["mistral7b-sft-ultrachat", "mistral7b-dpo-ultrafeedback", "gemma7b-orpo-orca"])
def test_gpu_recipes_plan_and_validate(name):
    """The shipped GPU recipes plan offline (hub ids stay hub ids) and axolotl accepts what they emit."""
    loaded = loading.load(name)
    files = engine_files(loaded, "local", loaded.recipe.model.base, has_val=True)
    config = yaml.safe_load(files["axolotl.yaml"])
    validated = _validate(config, loaded.recipe)
    assert validated["micro_batch_size"] == loaded.recipe.train.micro_batch_size
    if loaded.recipe.method.preference:
        assert config["adapter"] == "qlora" and config["load_in_4bit"] is True
        assert config["rl"] == loaded.recipe.method.kind


# --- the report ----------------------------------------------------------------------------------------------------

def test_rewards_figure_only_for_preference_runs():
    sft = [MetricsRow.model_validate(r) for r in ({"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9})]
    assert plots.rewards_figure(sft) is None
    dpo = [{"step": s, "loss": 0.7, "rewards/chosen": 0.01 * s, "rewards/rejected": -0.01 * s,
            "rewards/margins": 0.02 * s, "rewards/accuracies": 0.5} for s in (1, 2, 3)]
    dpo = [MetricsRow.model_validate(r) for r in dpo]
    assert plots.rewards_figure(dpo) is not None


# --- real training through axolotl and trl ---------------------------------------------------------------------------

REWARDS = {"rewards/chosen", "rewards/rejected", "rewards/margins"}


@pytest.mark.model
@pytest.mark.parametrize(("kind", "reference", "logged"), [
    ("dpo", "adapter-disabled", REWARDS | {"rewards/accuracies"}),
    ("orpo", "none (reference-free)", REWARDS | {"rewards/accuracies", "log_odds_ratio", "nll_loss"}),
    ("kto", "adapter-disabled", {"kl"}),  # kto logs rewards/chosen or /rejected only when the batch has that label
])
def test_train_preference_method(kind, reference, logged, pref_project, write_recipe, tiny_model_dir, run_cli,
                                 monkeypatch):
    """Two real steps through axolotl and trl on CPU; trl's reward metrics land in metrics.jsonl and the report plots
    them; with LoRA the trainer holds no second model (the reference is the adapter-disabled model)."""
    fields, source = (KTO_FIELDS, "pref/kto.jsonl") if kind == "kto" else (PAIR_FIELDS, "pref/pairs.jsonl")
    write_recipe(f"tiny-{kind}", _recipe_text(f"tiny-{kind}", kind, fields, source, val=0))  # no eval: faster
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(pref_project / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code, _, err = run_cli("train", f"tiny-{kind}")
    assert code == 0, err[-3000:]
    run = pref_project / "runs" / f"tiny-{kind}" / "latest"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert logged <= set(steps[-1]), sorted(steps[-1])
    assert any(key.startswith("rewards/") for r in steps for key in r)
    engine_record = json.loads(next((run / "ranks").glob("*.engine.json")).read_text())
    assert engine_record["reference_model"] == reference
    code, _, err = run_cli("report", f"tiny-{kind}")
    assert code == 0, err
    report = (run / "report.md").read_text()
    assert "### Preference rewards" in report and "plots/rewards.png" in report
    assert (run / "plots" / "rewards.png").read_bytes()[:4] == b"\x89PNG"
    assert "preference pairs" in report if kind != "kto" else "labeled completions" in report
    if kind == "dpo":  # before the first update the adapter is zero, the model is its reference: loss = ln 2
        assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)


@pytest.mark.model
def test_train_dpo_with_sft_weight_adds_the_chosen_answers_nll(pref_project, write_recipe, tiny_model_dir, run_cli,
                                                               monkeypatch):
    """method.sft_weight through trl: the first step's loss is ln 2 (DPO at its reference) plus the weighted
    cross-entropy of the chosen answers, which the tiny model finds unlikely (several nats)."""
    text = _recipe_text("tiny-dpo", "dpo", val=0).replace(
        "        method:\n          kind: dpo\n", "        method:\n          kind: dpo\n          sft_weight: 0.5\n")
    write_recipe("tiny-dpo", text.replace("max_steps: 2", "max_steps: 1"))
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(pref_project / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli("train", "tiny-dpo")
    assert code == 0, err[-3000:]
    run = pref_project / "runs" / "tiny-dpo" / "latest"
    first = next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line)
    assert first["loss"] > math.log(2) + 0.5 * 1.0


@pytest.mark.model
def test_train_grpo_with_metric_rewards(project, write_recipe, tiny_model_dir, run_cli, monkeypatch):
    """grpo through axolotl and trl on CPU: the model answers each prompt twice, token_f1 and exact_match (the eval
    metrics) reward the answers, and trl's reward log lands in metrics.jsonl and the report."""
    _pairs_file(project)
    data = yaml.safe_load(textwrap.dedent(_recipe_text("tiny-grpo", "grpo", SFT_FIELDS, val=0)))
    data["method"] |= yaml.safe_load(GRPO)["method"]
    write_recipe("tiny-grpo", yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(project / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code, _, err = run_cli("train", "tiny-grpo")
    assert code == 0, err[-3000:]
    run = project / "runs" / "tiny-grpo" / "latest"
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert {"reward", "rewards/token_f1/mean", "rewards/exact_match/mean"} <= set(steps[-1])
    train_rows = jsonl.read(run / "data" / "train.jsonl").rows
    assert set(train_rows[0]) == {"prompt", "reference", "stop"}
    code, _, err = run_cli("report", "tiny-grpo")
    assert code == 0, err
    assert "rewards/token_f1/mean" in (run / "report.md").read_text()
    assert (run / "plots" / "rewards.png").is_file()


@pytest.mark.model
def test_train_grpo_rewarded_by_executing_sql(project, write_recipe, tiny_model_dir, run_cli, monkeypatch):
    """grpo with sql_execution, the SQL suite's own metric, through axolotl and trl: each answer is executed on its
    row's database inside the trainer, and trl's log of that reward lands in metrics.jsonl."""
    _sql_grpo_recipe(project, write_recipe)
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(project / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code, _, err = run_cli("train", "tiny-sql-grpo")
    assert code == 0, err[-3000:]
    steps = [r for r in map(json.loads, (project / "runs" / "tiny-sql-grpo" / "latest" / "metrics.jsonl")
                            .read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all("rewards/sql_execution/mean" in r for r in steps)
