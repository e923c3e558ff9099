"""Preference pairs for the SQL demo's DPO stage, made from TRAINING questions only (never test questions).

chosen = the gold query; rejected = a wrong query made by a deterministic corruption of the gold one:
  wrong_column     a column swapped for another of the same table        SELECT city FROM customers ...
  wrong_value      a literal swapped for another value of that column    ... WHERE city = 'Oslo'
  wrong_aggregate  another aggregate, the sort reversed, GROUP BY gone   SELECT MAX(price) ... / ORDER BY x ASC
  wrong_operator   a comparison flipped                                  ... WHERE price < 240
  dropped_filter   the WHERE clause, or one of its AND conditions, gone  SELECT name FROM customers
  added_filter     a condition the question does not ask for             ... WHERE city = 'Oslo' AND name = 'Ana Berg'
Each wrong query is executed on the row's database and kept only when it runs and returns a different result
than the gold query (runner.metrics.sql.execution_match, the metric the demo is scored with). Which corruption a
question gets is drawn from random.Random(seed, question): same data and seed, same bytes.

    python tools/sql_pairs.py [--data data/sql-demo] [--per-question 2] [--seed 0] [--check]

--policy makes the DPO demo's pairs, into policy-pairs.jsonl: the SQL demo's trained model (its latest run, or
--run ID) answers every training question greedily, exactly as evaluation prompts it; an answer that does not
return the gold query's rows becomes the rejected side of a pair (kind "policy"): what the model really gets wrong.
As many corruption pairs again, one per question the model answered right, are mixed in (measured: without them
DPO learns the fixes' patterns everywhere, e.g. adding GROUP BY to every count question).

    python tools/sql_pairs.py --policy [--run RUN_ID] [--limit N] [--samples N --temperature T]

--samples N: N answers per question sampled at --temperature (torch seeded with --seed) instead of the greedy one;
each distinct wrong one is a pair (measured in the README: 4 at 0.7, about 4 times the greedy pass's time).
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import sqldemo
from runner.core.atomic import write_text_atomic
from runner.core.errors import UserError
from runner.metrics.sql import execution_match

DEFAULT_DATA = sqldemo.DEFAULT_OUT
OUT = "pairs.jsonl"
POLICY_OUT = "policy-pairs.jsonl"
SFT_RECIPE = "smollm2-135m-sql-chatml"  # the demo's first stage, whose answers --policy pairs against the gold
PER_QUESTION = 2  # pairs per training question, each from another kind of corruption
COLUMNS = {table: re.findall(r"[(,] ?(\w+) [A-Z]+", create) for table, create in sqldemo.SCHEMA.items()}
AGGREGATES = {"AVG": ("SUM", "MAX", "MIN"), "SUM": ("AVG", "MAX", "MIN"), "MAX": ("MIN", "AVG"),
              "MIN": ("MAX", "AVG")}
OPERATORS = {">=": ("<", "<="), "<=": (">", ">="), ">": ("<", "<="), "<": (">", ">=")}
_STRING = re.compile(r"((?:(\w+)\.)?(\w+)) (=|LIKE) '((?:[^']|'')*)'")
_NUMBER = re.compile(r"(?<![\w.'])(\d+(?:\.\d+)?)(?![\w.'%])")
_WHERE = re.compile(r" WHERE (.+?)(?= GROUP BY| ORDER BY| LIMIT|$)")


def _aliases(sql: str) -> dict[str, str]:
    """alias (and table name) -> table, for the tables a query reads."""
    found = {}
    for table, alias in re.findall(r"\b(?:FROM|JOIN) (\w+)(?: AS (\w+))?", sql):
        found[table] = table
        if alias:
            found[alias] = table
    return found


def _table_of(sql: str, prefix: str | None, column: str) -> str | None:
    tables = _aliases(sql)
    if prefix:
        return tables.get(prefix)
    owners = [t for t in dict.fromkeys(tables.values()) if column in COLUMNS.get(t, [])]
    return owners[0] if len(owners) == 1 else None


def wrong_column(sql: str, conn: sqlite3.Connection) -> Iterator[str]:
    for match in re.finditer(r"\b(?:(\w+)\.)?(\w+)\b", sql):
        prefix, column = match.groups()
        table = _table_of(sql, prefix, column)
        if table is None or column not in COLUMNS[table] or sql[match.end():].startswith(" AS"):
            continue
        for other in COLUMNS[table]:
            if other != column:
                yield sql[:match.start(2)] + other + sql[match.end(2):]


def wrong_value(sql: str, conn: sqlite3.Connection) -> Iterator[str]:
    for match in _STRING.finditer(sql):
        _, prefix, column, operator, value = match.groups()
        table = _table_of(sql, prefix, column)
        if table is None:
            continue
        values = [str(v) for (v,) in conn.execute(f"SELECT DISTINCT {column} FROM {table} ORDER BY 1")]  # noqa: S608
        if operator == "LIKE":  # keep the pattern's shape: the same length of prefix, then %
            stem = value.rstrip("%")
            values = sorted({v[:len(stem)] + value[len(stem):] for v in values if len(v) >= len(stem)})
        for other in values:
            if other != value:
                start, end = match.span(5)
                yield sql[:start] + other.replace("'", "''") + sql[end:]
    for match in _NUMBER.finditer(sql):
        number = float(match.group(1))
        step = max(1, round(abs(number) * 0.2))
        for other in (number + step, number - step, number + 1, number - 1):
            text = f"{other:g}" if "." in match.group(1) else str(int(other))
            if other >= 0:
                yield sql[:match.start(1)] + text + sql[match.end(1):]


def wrong_aggregate(sql: str, conn: sqlite3.Connection) -> Iterator[str]:
    for match in re.finditer(r"\b(AVG|SUM|MAX|MIN)\(", sql):
        for other in AGGREGATES[match.group(1)]:
            yield sql[:match.start(1)] + other + sql[match.end(1):]
    for match in re.finditer(r"\b(ORDER BY [^ ]+(?: [^ ]+)??)( DESC| ASC)?(?= LIMIT|$)", sql):
        flipped = " ASC" if match.group(2) == " DESC" else " DESC"
        yield sql[:match.end(1)] + flipped + sql[match.end():]
    group = re.search(r" GROUP BY [\w.]+", sql)
    if group:  # aggregated over every row instead of per group
        yield sql[:group.start()] + sql[group.end():]


def wrong_operator(sql: str, conn: sqlite3.Connection) -> Iterator[str]:
    for match in re.finditer(r" (>=|<=|>|<) ", sql):
        for other in OPERATORS[match.group(1)]:
            yield sql[:match.start(1)] + other + sql[match.end(1):]


def dropped_filter(sql: str, conn: sqlite3.Connection) -> Iterator[str]:
    where = _WHERE.search(sql)
    if where is None:
        return
    conditions = where.group(1).split(" AND ")
    if len(conditions) > 1 and " BETWEEN " not in where.group(1):
        for index in range(len(conditions)):
            kept = " AND ".join(c for i, c in enumerate(conditions) if i != index)
            yield sql[:where.start(1)] + kept + sql[where.end(1):]
    yield sql[:where.start()] + sql[where.end():]


def added_filter(sql: str, conn: sqlite3.Connection) -> Iterator[str]:
    """A condition the question does not ask for (so that `more clauses` is never what the pairs teach)."""
    found = re.search(r"\bFROM (\w+)(?: AS (\w+))?", sql)
    table, alias = found.group(1), found.group(2)
    cut = re.search(r" GROUP BY| ORDER BY| LIMIT|$", sql).start()
    joiner = " AND " if _WHERE.search(sql) else " WHERE "
    for column in COLUMNS[table]:
        if column == "id" or column.endswith("_id"):
            continue
        for (value,) in conn.execute(f"SELECT DISTINCT {column} FROM {table} ORDER BY 1 LIMIT 3"):  # noqa: S608
            literal = f"'{value}'" if isinstance(value, str) else str(value)
            condition = f"{alias + '.' if alias else ''}{column} = {literal}"
            yield sql[:cut] + joiner + condition + sql[cut:]


KINDS: dict[str, Callable[[str, sqlite3.Connection], Iterator[str]]] = {
    "wrong_column": wrong_column, "wrong_value": wrong_value, "wrong_aggregate": wrong_aggregate,
    "wrong_operator": wrong_operator, "dropped_filter": dropped_filter, "added_filter": added_filter}


def runs(conn: sqlite3.Connection, sql: str) -> bool:
    try:
        conn.execute(sql).fetchall()
    except sqlite3.Error:
        return False
    return True


def wrong_queries(gold: str, conn: sqlite3.Connection, db_sql: str, rng: random.Random) -> dict[str, str]:
    """kind -> one wrong query per kind that applies: it runs, and returns other rows than the gold query."""
    found = {}
    for kind, corrupt in KINDS.items():
        candidates = sorted(set(corrupt(gold, conn)) - {gold})
        rng.shuffle(candidates)
        chosen = next((q for q in candidates if runs(conn, q) and not execution_match(q, gold, db_sql)), None)
        if chosen is not None:
            found[kind] = chosen
    return found


def make_pairs(train: list[dict], databases: dict[str, str], per_question: int = PER_QUESTION,
               seed: int = 0) -> list[dict]:
    """Up to per_question pairs per training row, each of another kind of corruption (the kinds drawn per row)."""
    connections = {name: sqldemo.connect(text) for name, text in databases.items()}
    pairs = []
    for row in train:
        rng = random.Random(f"{seed}\0{row['question']}")
        wrong = wrong_queries(row["answer"], connections[row["db"]], databases[row["db"]], rng)
        kinds = sorted(wrong)
        rng.shuffle(kinds)
        for kind in kinds[:per_question]:
            pairs.append({"question": row["question"], "context": row["context"], "chosen": row["answer"],
                          "rejected": wrong[kind], "db": row["db"], "shape": row["shape"], "kind": kind})
    return pairs


def policy_pairs(train: list[dict], answers: list[list[str]], databases: dict[str, str]) -> list[dict]:
    """A pair for each distinct model answer to a training row that is wrong by execution (chosen = gold, rejected =
    the answer as the model wrote it). Empty answers are left out: an empty side is not a preference."""
    pairs = []
    for row, row_answers in zip(train, answers, strict=True):
        for answer in dict.fromkeys(row_answers):
            if answer.strip() and not execution_match(answer, row["answer"], databases[row["db"]]):
                pairs.append({"question": row["question"], "context": row["context"], "chosen": row["answer"],
                              "rejected": answer, "db": row["db"], "shape": row["shape"], "kind": "policy"})
    return pairs


def mixed_pairs(policy: list[dict], corruptions: list[dict], seed: int = 0) -> list[dict]:
    """The policy pairs and as many corruption pairs, one per question that has no policy pair (a question the model
    answered right), drawn and then shuffled together by random.Random(seed)."""
    rng = random.Random(seed)
    wrong = {p["question"] for p in policy}
    candidates = [c for c in corruptions if c["question"] not in wrong]
    rng.shuffle(candidates)
    picked, seen = [], set()
    for pair in candidates:
        if len(picked) == len(policy):
            break
        if pair["question"] not in seen:
            seen.add(pair["question"])
            picked.append(pair)
    rows = policy + picked
    rng.shuffle(rows)
    return rows


def model_answers(train: list[dict], run_id: str | None = None, samples: int = 0, temperature: float = 1.0,
                  seed: int = 0, batch_size: int = 16) -> tuple[list[list[str]], str]:
    """The SQL demo's trained model's answers to the training questions: its greedy answer, or `samples` answers
    sampled at temperature; each prompt rendered as evaluation renders it (the recipe's template, system prompt and
    fields); and the run's folder. The model is the run's adapter merged into its base, cached where the DPO stage
    that starts from this run finds it."""
    from runner.core import paths
    from runner.core.console import third_party_to
    from runner.data.preference import prompt_row
    from runner.evaluate.generate import answer_all
    from runner.models import parent, resolve
    from runner.recipe import templates

    with third_party_to(paths.cache_dir() / "logs" / "sql-pairs.log"):
        sft = parent.resolve(f"run:{SFT_RECIPE}" + (f"@{run_id}" if run_id else ""), "--run")
        recipe = sft.run.recipe()
        template, spec = templates.load(recipe.data.template), recipe.data.datasets[0]
        tokens = resolve.tokenizer_tokens(sft.model_dir)
        prompts = [prompt_row(row, spec, template, tokens, recipe.data.system)["prompt"] for row in train]
        flat = answer_all(recipe, sft.model_dir, prompts, batch_size, "training questions", samples, temperature,
                          seed)
        per = max(samples, 1)
        return [flat[i:i + per] for i in range(0, len(flat), per)], str(sft.run.path)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def training_rows(data: Path) -> tuple[list[dict], dict[str, str]]:
    """data/train.jsonl's rows (test.jsonl is read only to prove no test question is among them) and the SQL dump
    of each database they use."""
    train, test = _rows(data / "train.jsonl"), _rows(data / "test.jsonl")
    leaked = {r["question"] for r in train} & {r["question"] for r in test}
    if leaked:
        raise ValueError(f"{len(leaked)} test questions are in train.jsonl, e.g. {sorted(leaked)[0]!r}")
    return train, {name: (data / f"{name}.sql").read_text(encoding="utf-8") for name in {r["db"] for r in train}}


def _text(pairs: list[dict]) -> str:
    return "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)


def render(data: Path = DEFAULT_DATA, per_question: int = PER_QUESTION, seed: int = 0) -> str:
    """pairs.jsonl's text from data/train.jsonl."""
    train, databases = training_rows(data)
    return _text(make_pairs(train, databases, per_question, seed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/sql_pairs.py", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the demo data folder (default: data/sql-demo)")
    parser.add_argument("--per-question", type=int, default=PER_QUESTION)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="exit 1 when pairs.jsonl differs from a fresh run")
    parser.add_argument("--policy", action="store_true", help=f"pairs of the {SFT_RECIPE} run's own wrong answers")
    parser.add_argument("--run", help=f"with --policy: the {SFT_RECIPE} run id (default: its latest run)")
    parser.add_argument("--limit", type=int, help="with --policy: the first N training questions only (a quick try)")
    parser.add_argument("--samples", type=int, default=0,
                        help="with --policy: N answers per question sampled at --temperature, not the greedy one")
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.policy:
        train, databases = training_rows(args.data)
        train = train[:args.limit] if args.limit else train
        try:
            answers, run = model_answers(train, args.run, args.samples, args.temperature, args.seed)
        except UserError as err:  # no trained SFT run (or no such --run): the message names the command that makes it
            print(f"error: --policy answers with a trained {SFT_RECIPE} run; `make demo` makes one. ({err})",
                  file=sys.stderr)
            return err.exit_code
        policy, path = policy_pairs(train, answers, databases), args.data / POLICY_OUT
        pairs = mixed_pairs(policy, make_pairs(train, databases, args.per_question, args.seed), args.seed)
        write_text_atomic(path, _text(pairs))
        wrong = len({p["question"] for p in policy})
        answered = f"{args.samples} sampled answers" if args.samples else "greedy answers"
        print(f"{path}: {len(pairs)} pairs: {len(policy)} distinct wrong {answered} of {run} to {wrong} of "
              f"{len(train)} training questions, and {len(pairs) - len(policy)} corruption pairs on questions it "
              "answered right")
        return 0
    text, path = render(args.data, args.per_question, args.seed), args.data / OUT
    if args.check:
        current = path.is_file() and path.read_text(encoding="utf-8") == text
        if not current:
            print(f"{path}: differs from a fresh generation; run python tools/sql_pairs.py", file=sys.stderr)
        return 0 if current else 1
    write_text_atomic(path, text)
    kinds = Counter(json.loads(line)["kind"] for line in text.splitlines())
    print(f"{path}: {sum(kinds.values())} pairs ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
