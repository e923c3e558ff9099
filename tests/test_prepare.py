"""Data preparation on the real public samples, every file format, the content-keyed cache, and bad input."""
from __future__ import annotations

import json
import shutil
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.core.errors import UserError
from runner.data import prepare
from runner.recipe import loading

SAMPLES = "data/samples"
# every test prepares through the tiny model's tokenizer (recipe_for: tiny_model_dir), which builds the model
pytestmark = pytest.mark.model


@pytest.fixture
def recipe_for(project, tiny_model_dir, monkeypatch):
    """recipe_for(dataset_yaml, template, **data settings) -> Loaded: a CPU LoRA recipe, tiny tokenizer."""
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(project / "cache"))
    counter = iter(range(1000))

    def make(dataset: str, template: str = "alpaca", **data) -> loading.Loaded:
        name = f"r{next(counter)}"
        settings = {"max_seq_len": 512, "overlength": "truncate", "split": "{val: 4, test: 4, seed: 1}"} | data
        text = f"""\
        schema: 1
        name: {name}
        version: 1.0.0
        extends: [_base/method/lora.yaml, _base/hardware/cpu.yaml]
        model: {{base: {tiny_model_dir}}}
        data:
          template: {template}
          datasets:
        """
        block = textwrap.indent(textwrap.dedent(dataset).strip(), "    ")
        lines = "".join(f"  {key}: {value}\n" for key, value in settings.items())
        (project / "recipes" / f"{name}.yaml").write_text(textwrap.dedent(text) + block + "\n" + lines)
        return loading.load(name)

    return make


def _rows(prepared, split):
    return [json.loads(line) for line in prepared.split(split).read_text().splitlines()]


def _labeled(row) -> str:
    return "".join(s["text"] for s in row["segments"] if s["label"])


@pytest.mark.parametrize("dataset, template, expected_trained", [
    ("- source: file:data/samples/dolly15k-sample.jsonl\n  fields: {instruction: instruction, input: context, "
     "output: response}", "alpaca", 12),
    ("- source: file:data/samples/alpaca-sample.jsonl\n  fields: {instruction: instruction, input: input, "
     "output: output}", "alpaca", 300),
    ("- source: file:data/samples/sql-create-context-sample.jsonl\n  fields: {instruction: question, input: context, "
     "output: answer}", "alpaca", 100),
    ("- source: file:data/samples/mental-health-sample.jsonl\n  extract:\n    column: text\n"
     "    pattern: '<HUMAN>:\\s*(?P<instruction>.*?)\\s*<ASSISTANT>:\\s*(?P<output>.*)'", "falcon-instruct", 172),
    ("- source: file:data/samples/medical-chat-sample.jsonl\n  fields: {instruction: instruction, input: input, "
     "output: output}", "qa", 300),
    ("- source: file:data/samples/chat-messages-sample.jsonl\n  fields: {messages: messages}", "chatml", 200),
])
def test_real_samples_prepare_through_their_field_mapping(recipe_for, dataset, template, expected_trained):
    loaded = recipe_for(dataset, template)
    prepared = prepare.prepare(loaded, quiet=True)
    info = prepared.info.to_json()
    source = next(iter(info["sources"].values()))
    assert source["rows"] == expected_trained
    # Every row is accounted for: written, incomplete, duplicate, or too long even when truncated.
    dropped = sum(stats["dropped_overlength"] for stats in info["stats"].values())
    assert sum(info["counts"].values()) + source["incomplete"] + info["duplicates_removed"] + dropped \
        == expected_trained
    for row in _rows(prepared, "train")[:20]:
        assert any(s["label"] for s in row["segments"]) and not row["segments"][0]["label"]
    test_row = _rows(prepared, "test")[0]
    assert test_row["prompt"] and test_row["reference"] and test_row["row"]
    assert info["stats"]["train"]["tokens_per_row"]["p50"] > 0


def test_chat_rows_train_only_assistant_turns(recipe_for):
    prepared = prepare.prepare(recipe_for("- source: file:data/samples/chat-messages-sample.jsonl\n"
                                          "  fields: {messages: messages}", "chatml"),
                               quiet=True)
    row = _rows(prepared, "train")[0]
    for segment in row["segments"]:
        if "<|im_start|>user" in segment["text"] or "<|im_start|>system" in segment["text"]:
            assert not segment["label"]
    assert all(s["text"].endswith("<|im_end|>") for s in row["segments"] if s["label"])


def test_mental_health_regex_extracts_both_sides(recipe_for):
    dataset = ("- source: file:data/samples/mental-health-sample.jsonl\n  extract:\n    column: text\n"
               "    pattern: '<HUMAN>:\\s*(?P<instruction>.*?)\\s*<ASSISTANT>:\\s*(?P<output>.*)'")
    row = _rows(prepare.prepare(recipe_for(dataset, "falcon-instruct"), quiet=True),
                "test")[0]
    assert "<HUMAN>" not in row["prompt"] and "###Question: " in row["prompt"] and "<ASSISTANT>" not in row["reference"]


@pytest.mark.parametrize("suffix", ["json", "csv", "bom.csv", "parquet"])
def test_every_file_format_gives_the_same_rows_as_jsonl(recipe_for, project, suffix):
    rows = [json.loads(line) for line in (project / SAMPLES / "dolly15k-sample.jsonl").read_text().splitlines()]
    path = project / f"dolly.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix.endswith("csv"):  # bom.csv: as spreadsheets export it, with a UTF-8 byte-order mark
        import csv

        with path.open("w", newline="", encoding="utf-8-sig" if suffix == "bom.csv" else "utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    mapping = "  fields: {instruction: instruction, input: context, output: response}"
    other = prepare.prepare(recipe_for(f"- source: file:{path}\n{mapping}"), quiet=True)
    jsonl = prepare.prepare(recipe_for(f"- source: file:{SAMPLES}/dolly15k-sample.jsonl\n{mapping}"), quiet=True)
    for split in prepare.SPLITS:
        assert [r["segments"] for r in _rows(other, split)] == [r["segments"] for r in _rows(jsonl, split)]


DOLLY = "- source: file:data/samples/dolly15k-sample.jsonl\n  fields: {instruction: instruction, input: context, " \
        "output: response}"


def test_same_input_is_a_cache_hit_with_identical_hashes(recipe_for, capsys):
    first = prepare.prepare(recipe_for(DOLLY))
    second = prepare.prepare(recipe_for(DOLLY))  # another recipe, same data-shaping settings
    assert first.key == second.key and first.dir == second.dir
    assert "cache hit" in capsys.readouterr().err


def test_a_workspace_sharing_the_cache_gets_its_own_labels(recipe_for, project, monkeypatch):
    # the same file read through another workspace is named otherwise (labels are relative to the workspace):
    # its data.json and test rows must name it as that workspace does, not as whichever prepared first
    first = prepare.prepare(recipe_for(DOLLY), quiet=True)
    other = project.parent / f"{project.name}-other"
    shutil.copytree(project / "recipes", other / "recipes")
    shutil.copytree(project / "templates", other / "templates")
    (other / "data").mkdir()
    shutil.copytree(project / "data" / "samples", other / "data" / "samples")
    monkeypatch.setenv("RECIPE_RUNNER_HOME", str(other))
    monkeypatch.chdir(other)
    again = prepare.prepare(loading.load("r0"), quiet=True)  # the first recipe, copied with the workspace
    assert list(again.info.fingerprints) == ["data/samples/dolly15k-sample.jsonl"]  # this workspace's own name
    assert list(first.info.fingerprints) != list(again.info.fingerprints) and again.key != first.key


@pytest.mark.parametrize("change", [
    ("template", "qa"),
    ("fields", "{instruction: instruction, input: category, output: response}"),
    ("data", {"max_seq_len": 300}),
    ("data", {"system": "Be brief."}),
])
def test_any_shaping_change_re_prepares(recipe_for, change):
    base = prepare.prepare(recipe_for(DOLLY), quiet=True)
    kind, value = change
    if kind == "template":
        changed = recipe_for(DOLLY, template=value)
    elif kind == "fields":
        changed = recipe_for(DOLLY.replace("{instruction: instruction, input: context, output: response}", value))
    else:
        changed = recipe_for(DOLLY, **value)
    assert prepare.prepare(changed, quiet=True).key != base.key


def test_changed_dataset_bytes_re_prepare(recipe_for, project):
    copy = project / "dolly.jsonl"
    shutil.copy(project / SAMPLES / "dolly15k-sample.jsonl", copy)
    dataset = DOLLY.replace(f"{SAMPLES}/dolly15k-sample.jsonl", str(copy))
    first = prepare.prepare(recipe_for(dataset), quiet=True)
    copy.write_text(copy.read_text().replace("Virgin Australia", "Virgin Oceania"))
    assert prepare.prepare(recipe_for(dataset), quiet=True).key != first.key


def test_split_is_deterministic_and_disjoint(recipe_for):
    prepared = prepare.prepare(recipe_for(DOLLY), quiet=True)
    info = prepared.info.to_json()
    assert info["counts"]["val"] == info["counts"]["test"] == 4
    assert info["counts"]["train"] + info["stats"]["train"]["dropped_overlength"] == 4
    assert prepare.prepare(recipe_for(DOLLY, split="{val: 4, test: 4, seed: 1}"), quiet=True).key == prepared.key
    texts = {split: {json.dumps(r["segments"]) for r in _rows(prepared, split)} for split in prepare.SPLITS}
    assert not (texts["train"] & texts["test"]) and not (texts["val"] & texts["test"])


def test_duplicates_are_removed_and_counted(recipe_for, project):
    path = project / "dupes.jsonl"
    lines = (project / SAMPLES / "dolly15k-sample.jsonl").read_text().splitlines()
    path.write_text("\n".join(lines + lines[:3]) + "\n")
    prepared = prepare.prepare(recipe_for(DOLLY.replace(f"{SAMPLES}/dolly15k-sample.jsonl", str(path))), quiet=True)
    info = prepared.info.to_json()
    dropped = sum(stats["dropped_overlength"] for stats in info["stats"].values())
    assert info["duplicates_removed"] == 3 and sum(info["counts"].values()) + dropped == 12


def test_weights_mix_sources_by_count(recipe_for):
    dataset = DOLLY + "\n  weight: 2.0\n" + ("- source: file:data/samples/alpaca-sample.jsonl\n  fields: {instruction: "
                                             "instruction, input: input, output: output}\n  weight: 0.1")
    prepared = prepare.prepare(recipe_for(dataset), quiet=True)
    by_source = prepared.info.to_json()["rows_by_source"]["train"]
    dolly = next(n for label, n in by_source.items() if label.endswith("dolly15k-sample.jsonl"))
    alpaca = next(n for label, n in by_source.items() if label.endswith("alpaca-sample.jsonl"))
    # 312 rows, 8 held out; each source's remaining rows are scaled by its weight.
    assert prepared.info.to_json()["counts"]["train"] == dolly + alpaca
    assert dolly >= 18 and alpaca <= 31


def test_one_file_listed_twice_is_not_counted_twice(recipe_for):
    alpaca = ("- source: file:data/samples/alpaca-sample.jsonl\n  fields: {instruction: instruction, input: input, "
              "output: output}")
    once = prepare.prepare(recipe_for(alpaca, split="{val: 0, test: 0, seed: 1}"), quiet=True).info.to_json()["counts"]
    listed_twice = recipe_for(alpaca + "\n  use: train\n" + alpaca + "\n  use: val", split="{val: 0, test: 0, seed: 1}",
                              dedupe="false")
    twice = prepare.prepare(listed_twice, quiet=True).info.to_json()["counts"]
    assert twice["train"] == once["train"] and twice["val"] == once["train"]


def test_overlength_rows_are_dropped_or_truncated(recipe_for):
    dropping = recipe_for(DOLLY, max_seq_len=96, overlength="drop")
    dropped = prepare.prepare(dropping, quiet=True).info.to_json()["stats"]["train"]
    truncated = prepare.prepare(recipe_for(DOLLY, max_seq_len=96), quiet=True).info.to_json()["stats"]["train"]
    assert dropped["over_max_seq_len"] > 0 and dropped["dropped_overlength"] == dropped["over_max_seq_len"]
    assert truncated["tokens_per_row"]["max"] <= 96 and truncated["rows"] > dropped["rows"]


# ---------------------------------------------------------------- bad input: clear error, exit 2


def _prepare_error(run_cli, loaded) -> str:
    code, out, err = run_cli("prepare", loaded.recipe.name)
    assert code == 2 and "Traceback" not in err
    return err


def test_missing_dataset_file(recipe_for, run_cli):
    err = _prepare_error(run_cli, recipe_for(DOLLY.replace("dolly15k-sample", "nope")))
    assert "data/samples/nope.jsonl: data.datasets.0.source: dataset file not found" in err


def test_missing_field_is_named_when_rows_are_rejected(recipe_for, run_cli):
    loaded = recipe_for(DOLLY.replace("output: response", "output: answer"), incomplete="error")
    err = _prepare_error(run_cli, loaded)
    assert "row 1: column 'answer' (for output) is missing or empty" in err and "data.incomplete: drop" in err


def test_mapping_that_matches_no_row_lists_the_columns(recipe_for, run_cli):
    err = _prepare_error(run_cli, recipe_for(DOLLY.replace("output: response", "output: answer")))
    assert "no usable rows" in err and "['category', 'context', 'instruction', 'response']" in err


def test_empty_dataset(recipe_for, run_cli, project):
    (project / "empty.jsonl").write_text("\n")
    dataset = DOLLY.replace(f"{SAMPLES}/dolly15k-sample.jsonl", str(project / "empty.jsonl"))
    err = _prepare_error(run_cli, recipe_for(dataset))
    assert "the dataset is empty" in err


def test_malformed_jsonl_line_names_file_and_line(recipe_for, run_cli, project):
    lines = (project / SAMPLES / "dolly15k-sample.jsonl").read_text().splitlines()
    (project / "bad.jsonl").write_text("\n".join([*lines[:4], '{"instruction": "x",', *lines[4:]]) + "\n")
    dataset = DOLLY.replace(f"{SAMPLES}/dolly15k-sample.jsonl", str(project / "bad.jsonl"))
    err = _prepare_error(run_cli, recipe_for(dataset))
    assert "bad.jsonl:5: data.datasets.0.source: line 5 is not valid JSON" in err


def test_csv_cut_short_is_an_error_not_29_rows(recipe_for, run_cli, project):
    # A 60-row spreadsheet export with an unterminated quote on data row 30 (file line 31): csv.DictReader read
    # it as one field running to the end of the file, and prepare trained on the 29 rows before it.
    rows = [json.loads(line) for line in (project / SAMPLES / "alpaca-sample.jsonl").read_text().splitlines()][:60]
    rows = [{key: " ".join(str(value).replace('"', "").split()) for key, value in row.items()} for row in rows]
    lines = ["instruction,input,output", *(",".join(f'"{v}"' for v in row.values()) for row in rows)]
    lines[30] = lines[30][: lines[30].rindex('"')]  # the closing quote of the last field is gone
    (project / "cut.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    dataset = (f"- source: file:{project / 'cut.csv'}\n"
               "  fields: {instruction: instruction, input: input, output: output}")
    err = _prepare_error(run_cli, recipe_for(dataset))
    assert "cut.csv:31: data.datasets.0.source: line 31: " in err and "never closed" in err


def test_non_utf8_dataset(recipe_for, run_cli, project):
    row = '{"instruction": "caf\xe9", "context": "", "response": "x"}\n'
    (project / "latin1.jsonl").write_bytes(row.encode("latin-1"))
    err = _prepare_error(run_cli, recipe_for(DOLLY.replace(f"{SAMPLES}/dolly15k-sample.jsonl",
                                                           str(project / "latin1.jsonl"))))
    assert "latin1.jsonl:1: data.datasets.0.source: line 1 is not UTF-8 (byte 0xe9)" in err


def test_hub_dataset_offline_explains_how_to_use_a_local_copy(recipe_for, run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    err = _prepare_error(run_cli, recipe_for("- source: hf:databricks/databricks-dolly-15k\n"
                                             "  fields: {instruction: instruction, input: context, output: response}"))
    assert "cannot load hub dataset 'databricks/databricks-dolly-15k'" in err and "file:<path>" in err


def test_failed_prepare_leaves_no_partial_cache_entry(recipe_for, project):
    loaded = recipe_for(DOLLY.replace("output: response", "output: answer"), incomplete="error")
    with pytest.raises(UserError):
        prepare.prepare(loaded, quiet=True)
    data_cache = project / "cache" / "data"
    assert not data_cache.exists() or not any(p for p in data_cache.iterdir() if not p.name.startswith("."))


def test_fit_finds_the_prepared_data_of_a_grpo_recipe_rewarded_by_executing_sql(recipe_for, project):
    """grpo rewarded by sql_execution keys its prepared data by the eval suite's sql.database too: `recipe fit` finds
    that folder (one cache key for both) and takes its exact rows and tokens, not an estimate from sampled rows."""
    from runner.core import jsonl
    from runner.estimate import data_size

    (project / "sqlq").mkdir()
    jsonl.write(project / "sqlq" / "train.jsonl", jsonl.read(project / "data" / "sql-demo" / "train.jsonl").rows[:24])
    loaded = loading.load("smollm2-135m-sql-grpo", ["model.base=models/tiny-llama", "model.context_length=512",
                                                    "data.datasets.0.source=file:sqlq/train.jsonl"])
    prepared = prepare.prepare(loaded, quiet=True)
    assert prepare.reward_database(loaded.recipe) and prepared.info.rows == "prompts"
    size = data_size.measure(loaded)
    train = prepared.info.stats["train"]
    assert size.source == "prepared data (recipe prepare)", size.source
    assert (size.rows, size.tokens) == (train.rows, train.tokens)
