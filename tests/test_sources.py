"""Dataset readers: a row that cannot be parsed is an error naming file and line, never a silently lost or
mangled row (a CSV cut short, a row with too many fields, U+2028 in JSONL, lists where text is mapped)."""
from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.core.errors import UserError
from runner.data import sources
from runner.recipe.schema import DatasetSpec

FIELDS = {"instruction": "instruction", "input": "context", "output": "response"}


def _rows(n: int) -> list[dict]:
    return [{"instruction": f"Question {i}?", "context": f"context, {i}", "response": f"Answer {i}."}
            for i in range(1, n + 1)]


def _read(path, fields=FIELDS, **spec) -> sources.SourceRows:
    return sources.read(DatasetSpec(source=f"file:{path}", fields=fields, **spec), 0)


def _error(path, **spec) -> str:
    with pytest.raises(UserError) as caught:
        _read(path, **spec)
    return str(caught.value)


def _write_csv(path, rows) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("commas", [False, True])
def test_csv_cut_short_inside_a_quote_is_an_error_with_the_line(tmp_path, commas):
    # A 60-row spreadsheet export whose row 30 opens a quote that is never closed: csv.DictReader reads it as
    # one field running to the end of the file (or to the next quote) and keeps only the 29 rows before it.
    path = tmp_path / "cut.csv"
    rows = _rows(60) if commas else [r | {"context": r["context"].replace(",", "")} for r in _rows(60)]
    _write_csv(path, rows)  # with commas, later rows hold quoted fields: the open quote ends at the next one
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[30].startswith("Question 30?,")  # line 31 of the file: header, then data rows 1..29
    lines[30] = 'Question 30?,"context 30,Answer 30.'
    path.write_text("\n".join(lines), encoding="utf-8")
    message = _error(path)
    assert f"{path}:31: data.datasets.0.source: line 31: " in message
    assert "never closed" in message and "cut short" in message
    if not commas:
        assert "so it would run to the end of the file (line 61)" in message


def test_unterminated_quote_in_the_last_column_is_an_error(tmp_path):
    path = tmp_path / "cut.csv"
    _write_csv(path, [r | {"context": r["context"].replace(",", "")} for r in _rows(60)])
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[30] = 'Question 30?,context 30,"Answer 30.'
    path.write_text("\n".join(lines), encoding="utf-8")
    message = _error(path)
    assert f"{path}:31:" in message and "never closed" in message


@pytest.mark.parametrize("line, fields", [("Question 7?,context,Answer 7.,extra", 4), ("Question 7?,Answer 7.", 2)])
def test_csv_row_with_more_or_fewer_fields_than_the_header_is_an_error(tmp_path, line, fields):
    path = tmp_path / "ragged.csv"
    _write_csv(path, _rows(10))
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[7] = line
    path.write_text("\n".join(lines), encoding="utf-8")
    message = _error(path)
    assert f"{path}:8: data.datasets.0.source: line 8: a row with {fields} field(s) where the header has 3 " \
           "(instruction, context, response)" in message


def test_csv_quoted_newlines_and_crlf_still_read_every_row(tmp_path):
    rows = _rows(5)
    rows[2]["response"] = "line one\nline two, with \"quotes\""
    path = tmp_path / "ok.csv"
    _write_csv(path, rows)  # the csv module writes \r\n line ends
    read = _read(path)
    assert read.rows == rows


def test_csv_line_numbers_count_lines_inside_quoted_fields(tmp_path):
    rows = _rows(5)
    rows[1]["context"] = "a\nb\nc"  # data row 2 spans lines 3-5
    path = tmp_path / "multi.csv"
    _write_csv(path, rows)
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[6] = "Question 4?,x"  # data row 4 starts on line 7
    path.write_text("\n".join(lines), encoding="utf-8")
    assert f"{path}:7:" in _error(path)


def test_csv_header_naming_a_column_twice_is_an_error(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("instruction,context,response,context\nq,a,b,c\n", encoding="utf-8")
    assert "the header names column(s) ['context'] more than once" in _error(path)


def test_jsonl_keeps_a_line_separator_inside_a_string(tmp_path):
    rows = _rows(3)
    rows[1]["response"] = "first\u2028second\u0085third\x1cfourth"
    path = tmp_path / "sep.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert _read(path).rows == rows


def test_jsonl_errors_keep_their_line_number_after_a_line_separator(tmp_path):
    good = json.dumps({"instruction": "a\u2028b", "context": "", "response": "c"}, ensure_ascii=False)
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{good}\n{{\"instruction\": \n", encoding="utf-8")
    assert f"{path}:3: data.datasets.0.source: line 3 is not valid JSON" in _error(path)


def test_json_object_with_several_keys_names_the_keys_holding_lists(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 2, "tags": ["a"], "data": _rows(3)}), encoding="utf-8")
    message = _error(path)
    assert "the key(s) holding lists: 'tags', 'data'" in message and "jq '.tags'" in message
    assert "point data.datasets.0.source at it" in message


def test_json_object_with_one_key_holding_the_rows_is_read(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"data": _rows(3)}), encoding="utf-8")
    assert _read(path).rows == _rows(3)


def test_json_array_item_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([*_rows(2), "oops"]), encoding="utf-8")
    assert "item 2 (counting from 0) is a JSON str" in _error(path)


def test_parquet_list_column_mapped_to_text_is_an_error(tmp_path):
    path = tmp_path / "lists.parquet"
    rows = [r | {"response": [r["response"], "alt"]} for r in _rows(4)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    message = _error(path)
    assert "data.datasets.0.fields.output: column 'response' (for output) holds list<element: string>, not text" \
        in message


def test_parquet_struct_column_mapped_to_text_is_an_error(tmp_path):
    path = tmp_path / "structs.parquet"
    rows = [r | {"context": {"title": "t", "body": r["context"]}} for r in _rows(4)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert "column 'context' (for input) holds struct<" in _error(path)


def test_jsonl_row_with_a_list_where_text_is_mapped_names_the_line(tmp_path):
    rows = _rows(4)
    rows[2]["instruction"] = ["two", "questions"]  # str() would train on "['two', 'questions']"
    path = tmp_path / "list.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    message = _error(path)
    assert f"{path}:3: data.datasets.0.fields.instruction: line 3: column 'instruction' (for instruction) " \
           "holds a list, not text" in message


def test_extract_column_holding_an_object_is_an_error(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps([{"text": "<HUMAN>: a <ASSISTANT>: b"}, {"text": {"x": 1}}]), encoding="utf-8")
    message = _error(path, fields={}, extract={"column": "text",
                                                "pattern": "<HUMAN>: (?P<instruction>.*) <ASSISTANT>: (?P<output>.*)"})
    assert "data.datasets.0.extract.column: row 2: column 'text' (for extract) holds an object" in message


def test_numbers_in_text_columns_are_still_read(tmp_path):
    path = tmp_path / "numbers.jsonl"
    path.write_text(json.dumps({"instruction": "2+2?", "context": "", "response": 4}) + "\n", encoding="utf-8")
    assert _read(path).rows[0]["response"] == 4
