"""The generated text-to-SQL demo data (tools/sqldemo.py) and the SQL metrics that score it (runner/metrics/sql.py)."""
from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter

import pytest

import sqldemo
from runner.metrics.sql import clean_sql, execution_match, normalized_sql_match

DATA = sqldemo.DEFAULT_OUT


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return _rows("train.jsonl")


@pytest.fixture(scope="module")
def eval_rows() -> list[dict]:
    return _rows("test.jsonl")


@pytest.fixture(scope="module")
def shop_sql() -> str:
    return (DATA / "shop.sql").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- generation

def test_same_seed_gives_identical_bytes(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    sqldemo.generate(first, seed=0)
    sqldemo.generate(second, seed=0)
    for name in sqldemo.FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert sqldemo.check(first) == []


def test_committed_files_match_a_fresh_generation():
    assert sqldemo.check(DATA) == [], "run: python -m runner.sqldemo"


def test_check_names_the_stale_file_and_main_exits_1(tmp_path, capsys):
    sqldemo.generate(tmp_path)
    (tmp_path / "test.jsonl").write_text("{}\n", encoding="utf-8")
    (tmp_path / "README.md").unlink()
    assert sqldemo.check(tmp_path) == ["test.jsonl", "README.md"]
    assert sqldemo.main(["--out", str(tmp_path), "--check"]) == 1
    assert "test.jsonl" in capsys.readouterr().err
    assert sqldemo.main(["--out", str(tmp_path)]) == 0
    assert sqldemo.main(["--out", str(tmp_path), "--check"]) == 0


def test_another_seed_gives_other_data(tmp_path):
    sqldemo.generate(tmp_path, seed=1)
    assert sorted(sqldemo.check(tmp_path)) == sorted(sqldemo.FILES)


def test_split_sizes_and_every_shape_in_both(train, eval_rows):
    assert 1000 <= len(train) <= 2000
    assert 60 <= len(eval_rows) <= 100
    shapes = {shape.name for shape in sqldemo.SHAPES}
    assert set(Counter(row["shape"] for row in train)) == shapes
    assert set(Counter(row["shape"] for row in eval_rows)) == shapes


def test_row_fields_and_contexts(train, eval_rows):
    for row in train + eval_rows:
        assert list(row) == ["question", "context", "answer", "db", "shape"]
        assert row["db"] == "shop"
        read = set(re.findall(r"\b(?:FROM|JOIN) (\w+)", row["answer"]))
        used = [table for table in sqldemo.SCHEMA if table in read]
        assert row["context"].split("\n") == [sqldemo.SCHEMA[table] for table in used]
        assert len(row["question"]) + len(row["context"]) + len(row["answer"]) < 700
        assert row["answer"] == row["answer"].strip() and not row["answer"].endswith(";")


def test_every_gold_query_returns_rows_in_a_fixed_order(train, eval_rows, shop_sql):
    conn = sqlite3.connect(":memory:")
    conn.executescript(shop_sql)
    for row in train + eval_rows:
        rows = conn.execute(row["answer"]).fetchall()
        assert rows and rows not in ([(0,)], [(None,)]), row
    # Reversing the scan order of unordered selects would reorder ties that ORDER BY leaves open.
    conn.execute("PRAGMA reverse_unordered_selects = ON")
    for row in train + eval_rows:
        if "ORDER BY" in row["answer"]:
            reversed_rows = conn.execute(row["answer"]).fetchall()
            conn.execute("PRAGMA reverse_unordered_selects = OFF")
            assert conn.execute(row["answer"]).fetchall() == reversed_rows, row
            conn.execute("PRAGMA reverse_unordered_selects = ON")


def test_no_test_question_or_gold_query_is_in_train(train, eval_rows):
    train_questions = {row["question"] for row in train}
    train_answers = {row["answer"] for row in train}
    assert not [row for row in eval_rows if row["question"] in train_questions]
    # Entities are held out per shape: every test query is a SQL string training never showed.
    assert not [row for row in eval_rows if row["answer"] in train_answers]
    assert len({row["question"] for row in train}) == len(train)
    assert len({row["question"] for row in eval_rows}) == len(eval_rows)


def test_held_out_phrasings_appear_only_in_test(train, eval_rows):
    held_out = [sqldemo.phrasing_pattern(t) for shape in sqldemo.SHAPES for t in shape.held_out]
    assert not [row["question"] for row in train if any(p.match(row["question"]) for p in held_out)]
    for shape in sqldemo.SHAPES:
        patterns = [sqldemo.phrasing_pattern(t) for t in shape.held_out]
        questions = [row["question"] for row in eval_rows if row["shape"] == shape.name]
        with_held_out = [q for q in questions if any(p.match(q) for p in patterns)]
        assert len(with_held_out) * 2 >= len(questions), shape.name
    # The patterns really recognise phrasings: every train question matches one of its shape's templates.
    for row in train:
        shape = next(s for s in sqldemo.SHAPES if s.name == row["shape"])
        assert any(sqldemo.phrasing_pattern(t).match(row["question"]) for t in shape.templates), row



# ----------------------------------------------------------------------------- execution_match

JOIN_GOLD = ("SELECT T2.id FROM customers AS T1 JOIN orders AS T2 ON T1.id = T2.customer_id "
             "WHERE T1.city = 'Berlin' AND T2.status = 'delivered'")


def test_equivalent_queries_match(shop_sql):
    swapped = ("SELECT o.id FROM orders o JOIN customers c ON o.customer_id = c.id "
               "WHERE o.status = 'delivered' AND c.city = 'Berlin'")
    assert execution_match(swapped, JOIN_GOLD, shop_sql)
    # Without ORDER BY in the gold, row order does not matter.
    assert execution_match(swapped + " ORDER BY o.id DESC", JOIN_GOLD, shop_sql)
    assert execution_match("select avg(price) from products where category='Office'",
                           "SELECT SUM(price) / COUNT(*) FROM products WHERE category = 'Office'", shop_sql)
    assert execution_match("SELECT COUNT(*) FROM orders WHERE order_date BETWEEN '2023-04-01' AND '2023-04-30'",
                           "SELECT COUNT(*) FROM orders WHERE order_date LIKE '2023-04%'", shop_sql)


def test_ordered_gold_compares_order(shop_sql):
    gold = "SELECT name FROM products ORDER BY price DESC LIMIT 3"
    assert execution_match("SELECT name FROM products ORDER BY price DESC LIMIT 3", gold, shop_sql)
    assert not execution_match("SELECT name FROM (SELECT name, price FROM products ORDER BY price DESC LIMIT 3) "
                               "ORDER BY price ASC", gold, shop_sql)


def test_wrong_queries_do_not_match(shop_sql):
    assert not execution_match(JOIN_GOLD.replace("Berlin", "Oslo"), JOIN_GOLD, shop_sql)
    assert not execution_match("SELECT T2.id, T1.name FROM customers AS T1 JOIN orders AS T2 ON T1.id = "
                               "T2.customer_id WHERE T1.city = 'Berlin' AND T2.status = 'delivered'",
                               JOIN_GOLD, shop_sql)  # an extra column is a different result
    assert not execution_match("SELECT name FROM customers", "SELECT name FROM customers LIMIT 1", shop_sql)


@pytest.mark.parametrize("prediction", ["", None, "SELEC name FROM customers", "SELECT nope FROM customers",
                                        "The answer is 42.", "SELECT name FROM customers WHERE city = ?",
                                        "SELECT 'unclosed FROM customers", "```\n```"])
def test_invalid_predictions_are_false_without_raising(prediction, shop_sql):
    assert execution_match(prediction, "SELECT name FROM customers", shop_sql) is False


def test_broken_gold_or_database_is_false_without_raising(shop_sql):
    assert execution_match("SELECT 1", "SELECT nope FROM nowhere", shop_sql) is False
    assert execution_match("SELECT 1", "SELECT 1", "CREATE TABLE broken (") is False


def test_code_fences_semicolons_and_second_statements_are_stripped(shop_sql):
    gold = "SELECT COUNT(*) FROM customers"
    assert execution_match("```sql\nSELECT COUNT(*) FROM customers;\n```", gold, shop_sql)
    assert execution_match("Here it is:\n```SQL\nselect count(*) from customers\n```\nDone.", gold, shop_sql)
    assert execution_match("  SELECT COUNT(*) FROM customers ;  DROP TABLE customers;", gold, shop_sql)
    assert clean_sql("SELECT ';' AS x; DELETE FROM t") == "SELECT ';' AS x"
    assert clean_sql("SELECT 1 -- ; not a split\n; SELECT 2") == "SELECT 1 -- ; not a split"


@pytest.mark.parametrize("attack", [
    "DROP TABLE customers",
    "DELETE FROM customers",
    "UPDATE customers SET city = 'Oslo'",
    "INSERT INTO customers VALUES (999, 'X', 'Oslo', 2020)",
    "CREATE TABLE x (a)",
    "ATTACH DATABASE '/tmp/evil.db' AS evil",
    "PRAGMA query_only = OFF",
    "BEGIN",
    "WITH gone AS (SELECT 1) DELETE FROM customers",
])
def test_writing_predictions_fail_and_leave_the_database_intact(attack, shop_sql):
    gold_count = "SELECT COUNT(*) FROM customers"
    assert execution_match(gold_count, gold_count, shop_sql)
    assert execution_match(attack, gold_count, shop_sql) is False
    assert execution_match("SELECT 90", gold_count, shop_sql)  # still 90 customers
    assert execution_match(JOIN_GOLD, JOIN_GOLD, shop_sql)


def test_runaway_queries_are_stopped(shop_sql):
    gold = "SELECT COUNT(*) FROM customers"
    started = time.monotonic()
    assert not execution_match("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) "
                               "SELECT COUNT(*) FROM n", gold, shop_sql)
    assert not execution_match("SELECT COUNT(*) FROM order_items, order_items AS b, order_items AS c",
                               gold, shop_sql)
    assert not execution_match("SELECT length(randomblob(1000000000))", gold, shop_sql)
    assert time.monotonic() - started < 30
    assert execution_match("SELECT 90", gold, shop_sql)  # the connection still works afterwards


def test_bounded_recursive_cte_is_allowed(shop_sql):
    assert execution_match("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 90) "
                           "SELECT COUNT(*) FROM n", "SELECT COUNT(*) FROM customers", shop_sql)


def test_normalized_sql_match():
    gold = "SELECT name FROM customers WHERE city = 'Lisbon'"
    assert normalized_sql_match("select  name\nfrom Customers where city='Lisbon';", gold)
    assert normalized_sql_match("```sql\nSELECT name FROM customers WHERE city = 'Lisbon'\n```", gold)
    assert normalized_sql_match("SELECT COUNT( * ) FROM t WHERE a>=1", "SELECT COUNT(*) FROM t WHERE a >= 1")
    assert not normalized_sql_match("SELECT name FROM customers WHERE city = 'lisbon'", gold)
    assert not normalized_sql_match("SELECT name FROM customers WHERE city = 'Oslo'", gold)
    assert not normalized_sql_match("", gold)
