"""The CPU demo's text-to-SQL data set: a small shop database and question/SQL pairs, all generated.

Nothing is copied from elsewhere: customers, products, orders and order items come from
random.Random(seed) over small word lists, and every question comes from a paraphrase template
filled with values from that database. Each gold query is run on the database and kept only when
it returns a non-empty, non-degenerate and order-deterministic result.

The test split measures generalisation, not recall: per query shape, some value combinations
(entities) and one or two paraphrase templates appear only in test, so no test question and no test
gold query is ever seen in training.

    python tools/sqldemo.py [--out data/sql-demo] [--seed 0] [--check]
"""
from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runner.core.atomic import write_text_atomic

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "sql-demo"
DB_NAME = "shop"
TRAIN_PER_SHAPE = 90  # at most; shapes with fewer (entity, phrasing) pairs yield fewer rows
TEST_PER_SHAPE = 5
TEST_ENTITY_SHARE = 0.25  # share of each shape's entities held out for test
MAX_TEST_ENTITIES = 12
FILES = ("train.jsonl", "test.jsonl", "shop.sql", "README.md")

# Context lines in the b-mc2/sql-create-context style, and the same statements build shop.sql.
SCHEMA = {
    "customers": "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT, signup_year INTEGER)",
    "products": "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL)",
    "orders": "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), "
              "order_date TEXT, status TEXT)",
    "order_items": "CREATE TABLE order_items (id INTEGER PRIMARY KEY, order_id INTEGER REFERENCES orders(id), "
                   "product_id INTEGER REFERENCES products(id), quantity INTEGER)",
}

# ----------------------------------------------------------------------------- the database

FIRST_NAMES = ["Ana", "Ben", "Carla", "Chris", "David", "Elena", "Emil", "Felix", "Grace", "Hugo", "Ines",
               "Ivan", "Jonas", "Julia", "Karin", "Leo", "Lena", "Maria", "Marco", "Nils", "Olga", "Pablo",
               "Paula", "Rosa", "Sven", "Sofia", "Tara", "Tomas", "Vera", "Victor", "Yara", "Zoe"]
LAST_NAMES = ["Silva", "Novak", "Berg", "Costa", "Meyer", "Rossi", "Dubois", "Kowalski", "Jensen", "Lopez",
              "Murphy", "Schmidt", "Weber", "Larsen", "Moreau", "Fischer", "Horvat", "Keller", "Nagy",
              "Olsen", "Petrov", "Romero", "Santos", "Vogel"]
# Uneven weights so that per-city counts differ (GROUP BY, HAVING and COUNT questions need that).
CITIES = {"Lisbon": 9, "Oslo": 4, "Madrid": 10, "Berlin": 12, "Dublin": 5, "Vienna": 6, "Prague": 4,
          "Warsaw": 7, "Athens": 3, "Helsinki": 3, "Zurich": 5, "Milan": 8, "Porto": 4, "Lyon": 5,
          "Munich": 6, "Krakow": 3}
SIGNUP_YEARS = range(2018, 2025)
CATEGORIES = {  # category: (lowest price, highest price, product nouns)
    "Kitchen": (8, 120, ["Kettle", "Toaster", "Blender", "Skillet", "Knife Set", "Cutting Board",
                         "Coffee Grinder", "Mixing Bowl"]),
    "Garden": (6, 150, ["Hose", "Rake", "Shovel", "Planter", "Pruner", "Sprinkler", "Wheelbarrow",
                        "Bird Feeder"]),
    "Sports": (5, 180, ["Yoga Mat", "Dumbbell", "Tennis Racket", "Football", "Jump Rope", "Bike Helmet",
                        "Water Bottle", "Running Shoes"]),
    "Electronics": (12, 350, ["Headphones", "Speaker", "Charger", "Keyboard", "Mouse", "Webcam", "Monitor",
                              "Power Bank"]),
    "Office": (3, 250, ["Stapler", "Notebook", "Desk Lamp", "Pen Set", "Binder", "Whiteboard",
                        "Paper Shredder", "Desk Chair"]),
    "Beauty": (3, 60, ["Shampoo", "Face Cream", "Hair Dryer", "Perfume", "Lip Balm", "Nail Kit",
                       "Body Lotion", "Hand Soap"]),
}
ADJECTIVES = ["Classic", "Compact", "Deluxe", "Eco", "Pro", "Smart", "Basic", "Premium", "Ultra", "Mini"]
STATUSES = {"delivered": 12, "shipped": 3, "pending": 2, "cancelled": 3}
N_CUSTOMERS = 90
N_ORDERS = 250
FIRST_DAY = datetime.date(2023, 1, 1)
N_DAYS = 731  # through 2024-12-31
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]


@dataclass
class Shop:
    """The rows of every table, in insertion order (tuples in SCHEMA column order)."""

    customers: list[tuple] = field(default_factory=list)
    products: list[tuple] = field(default_factory=list)
    orders: list[tuple] = field(default_factory=list)
    order_items: list[tuple] = field(default_factory=list)


def build_shop(seed: int = 0) -> Shop:
    """Generate the shop's rows deterministically from seed."""
    rng = random.Random(seed)
    shop = Shop()
    # Names and prices are unique, so ORDER BY name / price never has ties to break.
    pairs = rng.sample([(first, last) for first in FIRST_NAMES for last in LAST_NAMES], N_CUSTOMERS)
    cities, weights = list(CITIES), list(CITIES.values())
    for cid, (first, last) in enumerate(pairs, 1):
        shop.customers.append((cid, f"{first} {last}", rng.choices(cities, weights)[0],
                               rng.choice(SIGNUP_YEARS)))
    prices: set[float] = set()
    for category, (low, high, nouns) in CATEGORIES.items():
        for noun in nouns:
            price = round(rng.uniform(low, high), 2)
            while price in prices:
                price = round(rng.uniform(low, high), 2)
            prices.add(price)
            shop.products.append((len(shop.products) + 1, f"{rng.choice(ADJECTIVES)} {noun}", category, price))
    activity = [rng.choice([1, 1, 2, 3, 5]) for _ in shop.customers]  # some customers order a lot more
    days = sorted(rng.randrange(N_DAYS) for _ in range(N_ORDERS))
    for oid, day in enumerate(days, 1):
        customer = rng.choices(shop.customers, activity)[0][0]
        status = rng.choices(list(STATUSES), list(STATUSES.values()))[0]
        shop.orders.append((oid, customer, (FIRST_DAY + datetime.timedelta(days=day)).isoformat(), status))
    for oid, *_ in shop.orders:
        for product in rng.sample(shop.products, rng.choice([1, 1, 2, 2, 3, 4])):
            quantity = rng.choice([1, 1, 1, 2, 2, 3, 4, 5])
            shop.order_items.append((len(shop.order_items) + 1, oid, product[0], quantity))
    return shop


def dump_sql(shop: Shop) -> str:
    """The shop as SQL text: CREATE TABLE statements, then one INSERT per row."""
    lines = [f"-- The '{DB_NAME}' database of the text-to-SQL demo. Generated by tools/sqldemo.py; "
             "do not edit.", *(f"{create};" for create in SCHEMA.values())]
    for table in SCHEMA:
        for row in getattr(shop, table):
            lines.append(f"INSERT INTO {table} VALUES ({', '.join(_literal(v) for v in row)});")
    return "\n".join(lines) + "\n"


def _literal(value) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def connect(db_sql: str) -> sqlite3.Connection:
    """An in-memory SQLite database built from a dump."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(db_sql)
    return conn


# ----------------------------------------------------------------------------- query shapes

@dataclass(frozen=True)
class Shape:
    """One kind of query: gold SQL and question templates over the same slots.

    combos(conn) lists every slot filling worth asking about. A slot holding a tuple is a
    lexical choice for the question only (e.g. "over" / "more than"); the others fill the SQL.
    key names the slots that identify the entity held out per shape (default: all SQL slots).
    """

    name: str
    sql: str
    templates: tuple[str, ...]  # phrasings used in train (and test)
    held_out: tuple[str, ...]  # phrasings used only in test
    combos: Callable[[sqlite3.Connection], list[dict]]
    key: tuple[str, ...] = ()
    unambiguous: Callable[[sqlite3.Connection, dict], bool] | None = None  # no ties at a LIMIT cut


def tables_of(sql: str) -> list[str]:
    """The tables a gold query reads, in SCHEMA order."""
    used = set(re.findall(r"\b(?:FROM|JOIN) (\w+)", sql))
    return [table for table in SCHEMA if table in used]


def _column(conn, sql: str) -> list:
    return [row[0] for row in conn.execute(sql)]


def _cities(conn) -> list[str]:
    return _column(conn, "SELECT DISTINCT city FROM customers ORDER BY city")


def _categories(conn) -> list[str]:
    return _column(conn, "SELECT DISTINCT category FROM products ORDER BY category")


GREATER = (">", ("more than", "over", "above"))
LESS = ("<", ("less than", "under", "below"))
MOST = ("DESC", ("most expensive",))
LEAST = ("ASC", ("cheapest",))
AGGREGATES = {"AVG": ("average",), "MAX": ("highest", "maximum"), "MIN": ("lowest", "minimum")}
GROUPINGS = [  # table, column, plural noun, grouping noun
    ("customers", "city", "customers", "city"),
    ("customers", "signup_year", "customers", "signup year"),
    ("products", "category", "products", "category"),
    ("orders", "status", "orders", "status"),
    ("orders", "customer_id", "orders", "customer id"),
    ("order_items", "order_id", "order items", "order id"),
    ("order_items", "product_id", "order items", "product id"),
]
JOIN_CUSTOMER_ORDERS = "FROM customers AS T1 JOIN orders AS T2 ON T1.id = T2.customer_id"


def _top_customer_unique(conn, slots: dict) -> bool:
    counts = [row[0] for row in conn.execute(
        f"SELECT COUNT(*) {JOIN_CUSTOMER_ORDERS} WHERE T1.city = ? GROUP BY T1.id ORDER BY COUNT(*) DESC LIMIT 2",
        (slots["city"],))]
    return len(counts) == 1 or counts[0] > counts[1]


SHAPES: list[Shape] = [
    Shape(
        "filter_eq",
        "SELECT name FROM customers WHERE city = '{city}'",
        ("List the names of customers from {city}.",
         "Which customers live in {city}?",
         "Show the names of all customers whose city is {city}.",
         "Who are the customers based in {city}?"),
        ("Give me the name of every customer located in {city}.",),
        lambda conn: [{"city": c} for c in _cities(conn)],
    ),
    Shape(
        "filter_compare",
        "SELECT name FROM products WHERE price {op} {price}",
        ("Which products cost {cmp} {price}?",
         "List the names of products priced {cmp} {price}.",
         "Show all products with a price {cmp} {price}.",
         "What products have a price {cmp} {price}?"),
        ("Find every product whose price is {cmp} {price}.",),
        lambda conn: [{"op": op, "cmp": words, "price": p}
                      for p in range(10, 301, 5) for op, words in (GREATER, LESS)],
        key=("price",),
    ),
    Shape(
        "filter_between",
        "SELECT name, price FROM products WHERE price BETWEEN {lo} AND {hi}",
        ("List the name and price of products priced between {lo} and {hi}.",
         "What are the names and prices of products that cost between {lo} and {hi}?",
         "Show name and price for every product with a price from {lo} to {hi}.",
         "Give the names and prices of the products whose price is between {lo} and {hi}."),
        ("For products costing between {lo} and {hi}, show their names and prices.",),
        lambda conn: [{"lo": lo, "hi": lo + width} for lo in range(10, 301, 10) for width in (10, 20, 30, 50)],
    ),
    Shape(
        "filter_and",
        "SELECT name FROM products WHERE category = '{category}' AND price < {price}",
        ("Which {category} products cost less than {price}?",
         "List the names of products in the {category} category priced under {price}.",
         "Show {category} products with a price below {price}.",
         "What products in category {category} are cheaper than {price}?"),
        ("Name the products from the {category} category that cost under {price}.",),
        lambda conn: [{"category": c, "price": p} for c in _categories(conn) for p in range(10, 301, 10)],
    ),
    Shape(
        "filter_like",
        "SELECT name FROM customers WHERE name LIKE '{letter}%'",
        ("Which customers have a name starting with {letter}?",
         "List customers whose name begins with the letter {letter}.",
         "Show the names of customers whose names start with '{letter}'.",
         "Find all customers with names that begin with {letter}."),
        ("What are the names of customers beginning with {letter}?",),
        lambda conn: [{"letter": chr(c)} for c in range(ord("A"), ord("Z") + 1)],
    ),
    Shape(
        "count_filter",
        "SELECT COUNT(*) FROM customers WHERE city = '{city}'",
        ("How many customers are from {city}?",
         "Count the customers who live in {city}.",
         "What is the number of customers in {city}?",
         "How many customers does the shop have in {city}?"),
        ("Give the total number of customers located in {city}.",),
        lambda conn: [{"city": c} for c in _cities(conn)],
    ),
    Shape(
        "count_month",
        "SELECT COUNT(*) FROM orders WHERE order_date LIKE '{year}-{mm}%'",
        ("How many orders were placed in {month} {year}?",
         "Count the orders made in {month} {year}.",
         "What is the number of orders from {month} {year}?",
         "How many orders have an order date in {month} {year}?"),
        ("Tell me how many orders were made during {month} {year}.",),
        lambda conn: [{"year": y, "mm": f"{m:02d}", "month": (MONTHS[m - 1],)}
                      for y in (2023, 2024) for m in range(1, 13)],
    ),
    Shape(
        "aggregate",
        "SELECT {agg}(price) FROM products WHERE category = '{category}'",
        ("What is the {word} price of {category} products?",
         "Find the {word} price among products in the {category} category.",
         "Show the {word} product price in {category}.",
         "What's the {word} price for items in category {category}?"),
        ("For the {category} category, what is the {word} price?",),
        lambda conn: [{"agg": agg, "word": words, "category": c}
                      for agg, words in AGGREGATES.items() for c in _categories(conn)],
    ),
    Shape(
        "join_sum",
        "SELECT SUM(T2.quantity) FROM products AS T1 JOIN order_items AS T2 ON T1.id = T2.product_id "
        "WHERE T1.name = '{product}'",
        ("How many units of {product} have been ordered in total?",
         "What is the total quantity ordered of the product {product}?",
         "Find the total number of {product} units sold.",
         "Sum the quantity of all order items for {product}."),
        ("What total quantity of {product} did customers order?",),
        lambda conn: [{"product": p} for p in _column(conn, "SELECT name FROM products ORDER BY id")],
    ),
    Shape(
        "join_filter",
        f"SELECT T2.id {JOIN_CUSTOMER_ORDERS} WHERE T1.name = '{{customer}}'",
        ("List the ids of orders placed by {customer}.",
         "What are the order ids for customer {customer}?",
         "Show the ids of all orders made by {customer}.",
         "Which orders did {customer} place? Give their ids."),
        ("Give me the id of every order belonging to {customer}.",),
        lambda conn: [{"customer": c} for c in _column(conn, "SELECT name FROM customers ORDER BY id")],
    ),
    Shape(
        "join_count",
        f"SELECT COUNT(*) {JOIN_CUSTOMER_ORDERS} WHERE T1.city = '{{city}}' AND T2.status = '{{status}}'",
        ("How many {status} orders were placed by customers from {city}?",
         "Count the orders with status {status} from customers in {city}.",
         "What is the number of {status} orders by customers living in {city}?",
         "How many orders from {city} customers have the status {status}?"),
        ("For customers in {city}, how many of their orders are {status}?",),
        lambda conn: [{"city": c, "status": s} for c in _cities(conn) for s in STATUSES],
    ),
    Shape(
        "join_list",
        "SELECT T2.name FROM order_items AS T1 JOIN products AS T2 ON T1.product_id = T2.id "
        "WHERE T1.order_id = {order_id}",
        ("Which products are in order {order_id}?",
         "List the names of the products included in order number {order_id}.",
         "What products were bought in order {order_id}?",
         "Show the product names for order {order_id}."),
        ("Name every product that appears in order {order_id}.",),
        lambda conn: [{"order_id": o} for o in _column(conn, "SELECT id FROM orders ORDER BY id")],
    ),
    Shape(
        "group_count",
        "SELECT {column}, COUNT(*) FROM {table} GROUP BY {column}",
        ("How many {things} are there for each {group}?",
         "Count the {things} in each {group}.",
         "Show each {group} and the number of {things}.",
         "For every {group}, how many {things} are there?"),
        ("Give the number of {things} per {group}.",
         "Break down the number of {things} by {group}."),
        lambda conn: [{"table": t, "column": c, "things": (things,), "group": (group,)}
                      for t, c, things, group in GROUPINGS],
    ),
    Shape(
        "group_having",
        "SELECT city FROM customers GROUP BY city HAVING COUNT(*) >= {n}",
        ("Which cities have at least {n} customers?",
         "List the cities with {n} or more customers.",
         "Show every city that has no fewer than {n} customers.",
         "What cities are home to at least {n} customers?"),
        ("Find the cities where the number of customers is at least {n}.",),
        lambda conn: [{"n": n} for n in range(2, 16)],
    ),
    Shape(
        "order_limit",
        "SELECT name FROM products ORDER BY price {direction} LIMIT {n}",
        ("What are the {n} {sup} products?",
         "List the {n} {sup} products.",
         "Show the names of the top {n} {sup} products.",
         "Which {n} products are the {sup}?"),
        ("Give me the {n} {sup} items in the catalog.",),
        lambda conn: [{"direction": d, "sup": words, "n": n} for n in range(2, 11) for d, words in (MOST, LEAST)],
    ),
    Shape(
        "filter_order_limit",
        "SELECT name FROM products WHERE category = '{category}' ORDER BY price {direction} LIMIT 1",
        ("What is the {sup} product in the {category} category?",
         "Which {category} product is the {sup}?",
         "Find the {sup} item in {category}.",
         "Name the {sup} product of category {category}."),
        ("In {category}, which product is the {sup} one?",),
        lambda conn: [{"category": c, "direction": d, "sup": words}
                      for c in _categories(conn) for d, words in (MOST, LEAST)],
    ),
    Shape(
        "filter_order",
        "SELECT name FROM customers WHERE city = '{city}' ORDER BY name",
        ("List the customers from {city} in alphabetical order.",
         "Show the names of customers living in {city}, sorted by name.",
         "Which customers are based in {city}? Order them by name.",
         "Give the names of {city} customers ordered alphabetically."),
        ("Sorted by name, who are the customers in {city}?",),
        lambda conn: [{"city": c} for c in _cities(conn)],
    ),
    Shape(
        "join_group_order_limit",
        f"SELECT T1.name {JOIN_CUSTOMER_ORDERS} WHERE T1.city = '{{city}}' GROUP BY T1.id "
        "ORDER BY COUNT(*) DESC LIMIT 1",
        ("Which customer from {city} has placed the most orders?",
         "Who is the customer in {city} with the largest number of orders?",
         "Find the {city} customer who made the most orders.",
         "Name the customer living in {city} with the most orders."),
        ("Among customers in {city}, who ordered most often?",),
        lambda conn: [{"city": c} for c in _cities(conn)],
        unambiguous=_top_customer_unique,
    ),
]


# ----------------------------------------------------------------------------- rows and splits

def phrasing_pattern(template: str) -> re.Pattern:
    """A regex matching exactly the questions a template can produce (any slot filling)."""
    pieces = re.split(r"\{\w+\}", template)
    return re.compile(".+?".join(re.escape(piece) for piece in pieces) + r"\Z")


def _sql_slots(slots: dict) -> dict:
    return {k: v for k, v in slots.items() if not isinstance(v, tuple)}


def _usable(conn, shape: Shape, slots: dict) -> bool:
    """The gold query runs, returns something other than nothing / 0 / NULL, and has no ties at its cut."""
    rows = conn.execute(shape.sql.format(**_sql_slots(slots))).fetchall()
    if not rows or rows in ([(0,)], [(None,)]):
        return False
    return shape.unambiguous is None or shape.unambiguous(conn, slots)


def _row(shape: Shape, template: str, slots: dict, rng: random.Random) -> dict:
    words = {k: rng.choice(v) if isinstance(v, tuple) else v for k, v in slots.items()}
    answer = shape.sql.format(**_sql_slots(slots))
    return {"question": template.format(**words),
            "context": "\n".join(SCHEMA[t] for t in tables_of(answer)),
            "answer": answer,
            "db": DB_NAME,
            "shape": shape.name}


def build_rows(conn: sqlite3.Connection, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, test) rows for every shape, with entities and phrasings held out for test."""
    train: list[dict] = []
    test: list[dict] = []
    for shape in SHAPES:
        rng = random.Random(f"{seed}:{shape.name}")
        combos = [slots for slots in shape.combos(conn) if _usable(conn, shape, slots)]
        by_key: dict[tuple, list[dict]] = {}
        for slots in combos:
            key = tuple(slots[k] for k in shape.key) if shape.key else tuple(_sql_slots(slots).items())
            by_key.setdefault(key, []).append(slots)
        keys = list(by_key)
        rng.shuffle(keys)
        n_test = max(1, min(MAX_TEST_ENTITIES, round(len(keys) * TEST_ENTITY_SHARE)))
        test_keys, train_keys = keys[:n_test], keys[n_test:]

        pairs = [(template, slots) for key in train_keys for slots in by_key[key] for template in shape.templates]
        rng.shuffle(pairs)
        shape_train = _unique_rows(shape, pairs, rng, TRAIN_PER_SHAPE, set())

        new_phrasing = [(t, s) for key in test_keys for s in by_key[key] for t in shape.held_out]
        known_phrasing = [(t, s) for key in test_keys for s in by_key[key] for t in shape.templates]
        rng.shuffle(new_phrasing)
        rng.shuffle(known_phrasing)
        # All test rows use held-out entities; at least half also use a held-out phrasing.
        asked = {row["question"] for row in shape_train}
        shape_test = _unique_rows(shape, new_phrasing, rng, TEST_PER_SHAPE - TEST_PER_SHAPE // 2, asked)
        shape_test += _unique_rows(shape, known_phrasing, rng,
                                   min(TEST_PER_SHAPE - len(shape_test), len(shape_test)), asked)
        train += shape_train
        test += shape_test
    _drop_overlap(train, test)
    return train, test


def _unique_rows(shape: Shape, pairs, rng: random.Random, limit: int, asked: set[str]) -> list[dict]:
    """Rows for the first (template, slots) pairs whose question is not in asked (updated)."""
    rows = []
    for template, slots in pairs:
        if len(rows) >= limit:
            break
        row = _row(shape, template, slots, rng)
        if row["question"] not in asked:
            asked.add(row["question"])
            rows.append(row)
    return rows


def _drop_overlap(train: list[dict], test: list[dict]) -> None:
    # Entities are held out per shape, so a test question could in principle repeat a train one
    # from another shape; the split promises none, so such test rows go.
    questions = {row["question"] for row in train}
    answers = {row["answer"] for row in train}
    test[:] = [row for row in test if row["question"] not in questions and row["answer"] not in answers]


# ----------------------------------------------------------------------------- files

def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def render(seed: int = 0) -> dict[str, str]:
    """Every output file's text, by file name."""
    db_sql = dump_sql(build_shop(seed))
    conn = connect(db_sql)
    train, test = build_rows(conn, seed)
    return {"train.jsonl": _jsonl(train), "test.jsonl": _jsonl(test), "shop.sql": db_sql,
            "README.md": _readme(conn, train, test, seed)}


def generate(out_dir: Path = DEFAULT_OUT, seed: int = 0) -> list[Path]:
    """Write train.jsonl, test.jsonl, shop.sql and README.md into out_dir; same seed, same bytes."""
    return [write_text_atomic(Path(out_dir) / name, text) for name, text in render(seed).items()]


def check(out_dir: Path = DEFAULT_OUT, seed: int = 0) -> list[str]:
    """The files in out_dir that are missing or differ from a fresh generation."""
    differing = []
    for name, text in render(seed).items():
        path = Path(out_dir) / name
        if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
            differing.append(name)
    return differing


def _readme(conn, train: list[dict], test: list[dict], seed: int) -> str:
    train_counts = Counter(row["shape"] for row in train)
    test_counts = Counter(row["shape"] for row in test)
    tables = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in SCHEMA}
    held_out_rows = sum(any(phrasing_pattern(t).match(row["question"]) for s in SHAPES for t in s.held_out)
                        for row in test)
    lines = [
        "# sql-demo: a generated text-to-SQL data set for the CPU demo",
        "",
        "Generated by `python tools/sqldemo.py` (`tools/sqldemo.py`) with "
        f"`random.Random` seeded from {seed}. No row is copied from any other data set: the database rows "
        "come from small word lists and random numbers, and every question is a paraphrase template "
        "filled with values from that database. Same seed, byte-identical files; "
        "`python tools/sqldemo.py --check` says whether these files are up to date.",
        "",
        "| file | what |",
        "| --- | --- |",
        f"| train.jsonl | {len(train)} rows |",
        f"| test.jsonl | {len(test)} rows |",
        "| shop.sql | the database as SQL text: CREATE TABLE statements, then one INSERT per row "
        f"({', '.join(f'{t} {n}' for t, n in tables.items())}) |",
        "| README.md | this file |",
        "",
        "Each JSONL row: `question` (English), `context` (the CREATE TABLE statement of each table the "
        "query uses, one per line, as in b-mc2/sql-create-context), `answer` (gold SQLite query), "
        f"`db` (`{DB_NAME}`, i.e. shop.sql) and `shape` (the query shape below). Score predictions by "
        "execution: `runner.metrics.sql.execution_match(predicted, answer, shop_sql_text)`.",
        "",
        "## Database",
        "",
        "```sql",
        *SCHEMA.values(),
        "```",
        "",
        "Customer names, product names and product prices are unique, so ORDER BY on them is deterministic.",
        "",
        "## Gold SQL style",
        "",
        "One canonical style, so that a small model can learn it: upper-case keywords, lower-case "
        "identifiers, single spaces, string values in single quotes exactly as stored, `COUNT(*)`, "
        "no trailing semicolon, and two-table joins written `FROM a AS T1 JOIN b AS T2 ON T1.x = T2.y`. "
        "Every gold query returns at least one row and no bare 0 or NULL. Queries with ORDER BY ... LIMIT "
        "are kept only where no tie crosses the cut, so the question's own ordering fixes the result "
        "and no tie-breaker column, which the question never asks for, is needed.",
        "",
        "## Splits: what the test set holds out",
        "",
        "Per shape, the value combinations (the entity: a city, a product, a price threshold, a "
        f"category and aggregate, ...) are shuffled and {TEST_ENTITY_SHARE:.0%} of them (1 to "
        f"{MAX_TEST_ENTITIES}) are used only in test, so no test gold query appears in train. Each shape "
        "also has paraphrase templates used only in test (one; two for group_count, which has few "
        "entities) and at least half of each shape's test rows use one of them "
        f"({held_out_rows} of {len(test)} test rows in all). No test question appears in train. "
        f"Train takes up to {TRAIN_PER_SHAPE} distinct (entity, phrasing) pairs per shape, test "
        f"{TEST_PER_SHAPE}.",
        "",
        "| shape | train | test | example gold SQL | held-out phrasings |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for shape in SHAPES:
        example = next(row["answer"] for row in train + test if row["shape"] == shape.name)
        lines.append(f"| {shape.name} | {train_counts[shape.name]} | {test_counts[shape.name]} | "
                     f"`{example}` | {' / '.join(shape.held_out)} |")
    lines += [f"| **all** | {len(train)} | {len(test)} | | |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: write the data set, or with --check exit 1 listing the files that are out of date."""
    parser = argparse.ArgumentParser(prog="python tools/sqldemo.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: data/sql-demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="compare with a fresh generation, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        differing = check(args.out, args.seed)
        for name in differing:
            print(f"{args.out / name}: differs from a fresh generation; run python tools/sqldemo.py",
                  file=sys.stderr)
        return 1 if differing else 0
    for path in generate(args.out, args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
