"""The SQL demo's preference pairs (tools/sql_pairs.py): training questions only, every rejected query really wrong."""
from __future__ import annotations

import json
import random
import shutil

import pytest

import sql_pairs
import sqldemo
from runner.metrics.sql import execution_match

DATA = sqldemo.DEFAULT_OUT


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def shop_sql() -> str:
    return (DATA / "shop.sql").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def conn(shop_sql):
    return sqldemo.connect(shop_sql)


def test_the_committed_pairs_are_a_fresh_generation():
    assert sql_pairs.main(["--check"]) == 0, "run: python tools/sql_pairs.py"


def test_pairs_use_training_questions_only_and_every_rejected_query_runs_and_is_wrong(shop_sql, conn):
    pairs, train, test = _rows(sql_pairs.OUT), _rows("train.jsonl"), _rows("test.jsonl")
    gold = {row["question"]: row["answer"] for row in train}
    assert not {p["question"] for p in pairs} & {row["question"] for row in test}
    assert not {p["chosen"] for p in pairs} & {row["answer"] for row in test}  # no held-out gold query either
    assert len({p["question"] for p in pairs}) >= 0.95 * len(train)
    assert {p["kind"] for p in pairs} == set(sql_pairs.KINDS)
    for pair in pairs:
        assert pair["chosen"] == gold[pair["question"]] != pair["rejected"]
        assert sql_pairs.runs(conn, pair["rejected"])
        assert not execution_match(pair["rejected"], pair["chosen"], shop_sql)


def test_each_corruption_makes_the_wrong_query_it_names(conn):
    gold = "SELECT name FROM products WHERE category = 'Office' AND price < 200"
    assert "SELECT city FROM customers WHERE city = 'Oslo'" in sql_pairs.wrong_column(
        "SELECT name FROM customers WHERE city = 'Oslo'", conn)
    assert "SELECT name FROM products WHERE category = 'Sports' AND price < 200" in sql_pairs.wrong_value(gold, conn)
    assert "SELECT name FROM products WHERE category = 'Office' AND price < 240" in sql_pairs.wrong_value(gold, conn)
    assert "SELECT name FROM products WHERE category = 'Office' AND price > 200" in sql_pairs.wrong_operator(gold, conn)
    assert list(sql_pairs.dropped_filter(gold, conn)) == [
        "SELECT name FROM products WHERE price < 200", "SELECT name FROM products WHERE category = 'Office'",
        "SELECT name FROM products"]
    assert list(sql_pairs.wrong_aggregate("SELECT MAX(price) FROM products ORDER BY price LIMIT 3", conn)) == [
        "SELECT MIN(price) FROM products ORDER BY price LIMIT 3",
        "SELECT AVG(price) FROM products ORDER BY price LIMIT 3",
        "SELECT MAX(price) FROM products ORDER BY price DESC LIMIT 3"]
    assert "SELECT name FROM products WHERE category = 'Office' AND price < 200 AND category = 'Beauty'" in \
        sql_pairs.added_filter(gold, conn)
    assert "SELECT T1.name FROM customers AS T1 JOIN orders AS T2 ON T1.id = T2.customer_id WHERE T1.city = 'Athens' " \
           "GROUP BY T1.id" in sql_pairs.added_filter(
               "SELECT T1.name FROM customers AS T1 JOIN orders AS T2 ON T1.id = T2.customer_id GROUP BY T1.id", conn)
    assert "SELECT city FROM customers HAVING COUNT(*) >= 12" in sql_pairs.wrong_aggregate(
        "SELECT city FROM customers GROUP BY city HAVING COUNT(*) >= 12", conn)
    assert "SELECT COUNT(*) FROM orders WHERE order_date LIKE '2023-05%'" in sql_pairs.wrong_value(
        "SELECT COUNT(*) FROM orders WHERE order_date LIKE '2023-04%'", conn)


def test_a_corruption_that_returns_the_gold_rows_is_never_a_rejected_answer(monkeypatch, shop_sql, conn):
    gold = "SELECT name FROM customers WHERE city = 'Oslo'"
    same = [f"{gold} ORDER BY name", "SELECT name FROM customers WHERE city = 'Oslo' AND 1 = 1"]  # same rows
    monkeypatch.setattr(sql_pairs, "KINDS", {"same": lambda sql, _: iter(same),
                                             "broken": lambda sql, _: iter(["SELECT nme FROM customers"]),
                                             "wrong": lambda sql, _: iter([*same, "SELECT name FROM customers"])})
    found = sql_pairs.wrong_queries(gold, conn, shop_sql, random.Random(0))
    assert found == {"wrong": "SELECT name FROM customers"}


def test_generation_is_deterministic_and_draws_kinds_per_question(tmp_path):
    assert sql_pairs.render(DATA, per_question=1, seed=3) == sql_pairs.render(DATA, per_question=1, seed=3)
    one = [json.loads(line) for line in sql_pairs.render(DATA, per_question=1).splitlines()]
    assert len(one) == len({p["question"] for p in one})
    assert len({p["kind"] for p in one}) == len(sql_pairs.KINDS)


def test_a_test_question_in_the_training_file_is_refused(tmp_path):
    for name in ("train.jsonl", "test.jsonl", "shop.sql"):
        (tmp_path / name).write_text((DATA / name).read_text(encoding="utf-8"), encoding="utf-8")
    with open(tmp_path / "train.jsonl", "a", encoding="utf-8") as handle:
        handle.write((DATA / "test.jsonl").read_text(encoding="utf-8").splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="1 test questions are in train.jsonl"):
        sql_pairs.render(tmp_path)


def test_policy_pairs_keep_the_models_wrong_answers_only(shop_sql):
    """--policy: an answer that returns the gold rows (even written another way) is right, not a pair; an answer
    that fails to run or returns other rows is the rejected side, as the model wrote it; an empty one is no pair."""
    row = {"question": "Show the names of all customers whose city is Oslo.", "context": "CREATE TABLE customers (...)",
           "answer": "SELECT name FROM customers WHERE city = 'Oslo'", "db": "shop", "shape": "filter_eq"}
    answers = ["SELECT name FROM customers WHERE 'Oslo' = city", "SELECT name FROM customers WHERE city = 'Rome'",
               "SELECT nme FROM customers", "  "]
    pairs = sql_pairs.policy_pairs([row] * 4, [[a] for a in answers], {"shop": shop_sql})
    assert [p["rejected"] for p in pairs] == answers[1:3]
    sampled = sql_pairs.policy_pairs([row], [answers + answers[::-1]], {"shop": shop_sql})
    assert [p["rejected"] for p in sampled] == answers[1:3]  # each distinct wrong sample once
    assert all(p["chosen"] == row["answer"] and p["kind"] == "policy" and p["question"] == row["question"]
               for p in pairs)


def test_policy_pairs_without_a_trained_sft_run_say_which_command_makes_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECIPE_RUNS_DIR", str(tmp_path / "runs"))
    data = tmp_path / "sql-demo"
    shutil.copytree(DATA, data)
    assert sql_pairs.main(["--policy", "--limit", "2", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "make demo" in err and "smollm2-135m-sql-chatml" in err and "Traceback" not in err
    assert not (data / sql_pairs.POLICY_OUT).exists()


def test_mixed_pairs_add_one_corruption_per_question_the_model_answered_right():
    """As many corruption pairs as policy pairs, never on a question that has a policy pair, at most one per
    question; the same seed gives the same pairs in the same order."""
    policy = [{"question": f"wrong {i}", "kind": "policy"} for i in range(3)]
    corruptions = [{"question": q, "kind": k} for q in ("wrong 0", "right a", "right b", "right c", "right d")
                   for k in ("wrong_value", "dropped_filter")]
    rows = sql_pairs.mixed_pairs(policy, corruptions, seed=0)
    added = [r for r in rows if r["kind"] != "policy"]
    assert sorted(map(str, rows)) == sorted(map(str, policy + added)) and len(added) == 3
    assert all(r["question"].startswith("right") for r in added)
    assert len({r["question"] for r in added}) == 3
    assert rows == sql_pairs.mixed_pairs(policy, corruptions, seed=0)
