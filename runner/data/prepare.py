"""Data preparation: datasets -> template variables -> rendered segments -> train/val/test JSONL + stats.

The output lives in the cache under a hash of everything that shapes it (source bytes or hub revision,
field mapping, template text, system prompt, tokenizer, split and length settings), so identical
input is reused without work and any change re-prepares. It is published atomically: a folder is
either complete or absent.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from runner.core import atomic, jsonl, paths
from runner.core.errors import Problem, UserError
from runner.data import fields, preference, sources
from runner.models import resolve
from runner.recipe import templates
from runner.recipe.loading import Loaded
from runner.recipe.schema import Recipe
from runner.runs.data_info import DATA_FILE, SPLITS, DataInfo, SplitStats, TokenPercentiles

FORMAT_VERSION = 1  # bump when the prepared layout or rendering rules change
DONE = DATA_FILE  # written last: its presence means the folder is complete


@dataclass(frozen=True)
class Prepared:
    dir: Path
    key: str
    info: DataInfo  # the contents of data.json: counts, stats, fingerprints

    def split(self, name: str) -> Path:
        return self.dir / f"{name}.jsonl"


class Item(NamedTuple):
    """One usable row of a dataset: what it converted to, and where it came from."""

    source: str  # the dataset's label (its file or hub id)
    example: dict  # template variables (SFT) or a rendered pair, kto row or prompt
    row: dict  # the row as read
    use: str  # the dataset's `use`: split, train, val or test
    dataset: int  # its index in data.datasets
    number: int  # its row number in the dataset, from 1


def _count(spec: float, total: int) -> int:
    """A split size: a fraction (< 1) of the rows, or a row count (>= 1)."""
    return round(spec * total) if spec < 1 else min(int(spec), total)


def cache_key(recipe: Recipe, read: list[sources.SourceRows], model_dir: Path) -> str:
    """Hash of every input that shapes the prepared data: the one key that prepare publishes under and that
    `recipe fit` (estimate/data_size.py) looks the prepared data up by."""
    data, template = recipe.data, templates.load(recipe.data.template)
    # the labels too: they name each source in data.json and in the test rows, and are relative to the workspace,
    # so two workspaces sharing RECIPE_CACHE_DIR must not share one entry
    shaping = {"format": FORMAT_VERSION, "sources": [r.fingerprint for r in read], "labels": [r.label for r in read],
               "template": template.source or template.name,
               "datasets": [d.model_dump(mode="json", exclude={"source"}) for d in data.datasets],
               "system": data.system, "max_seq_len": data.max_seq_len, "overlength": data.overlength,
               "incomplete": data.incomplete, "dedupe": data.dedupe, "split": data.split.model_dump(mode="json"),
               "tokenizer": resolve.model_fingerprint(model_dir)}
    if recipe.method.rl:  # pairs, kto rows or prompts instead of segments (SFT keys stay as they were)
        shaping["rows"] = row_shape(recipe)
    database = reward_database(recipe)
    if database:  # grpo rewarded by executing SQL: the rows name their database
        shaping["sql_database"] = database[1]
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def cache_folder(key: str) -> Path:
    """Where the data prepared under `key` is published (complete once it holds DONE)."""
    return paths.cache_dir() / "data" / key[:16]


def reward_database(recipe: Recipe) -> tuple[str, str] | None:
    """(metric, the eval suite's sql.database pattern) when grpo is rewarded by a metric that executes SQL (recipe
    validation has checked that the suite has one)."""
    from runner.metrics import registry as metrics
    from runner.recipe import suites

    metric = metrics.executing_sql(recipe.method.rewards) if recipe.method.rl == "grpo" else None
    return (metric, suites.for_recipe(recipe).database()) if metric else None


def _database_columns(items: list[Item], database: tuple[str, str], recipe: Recipe) -> list[dict]:
    """grpo rows rewarded by executing SQL: each row's db (checked to name a database file) and the pattern."""
    from runner.recipe import suites

    metric, pattern = database
    dbs = [(item.number, str(item.row.get("db", "")) if isinstance(item.row, dict) else "") for item in items]
    suite = suites.for_recipe(recipe)
    for label in dict.fromkeys(item.source for item in items):
        suite.database_for([d for d, item in zip(dbs, items, strict=True) if item.source == label],
                           metric, label, "row")
    return [{"db": db, "sql_database": pattern} for _, db in dbs]


def row_shape(recipe: Recipe) -> str:
    """What a prepared train/val row holds: segments (SFT), pairs (dpo, ipo, orpo, simpo), kto rows or prompts
    with their reference (grpo)."""
    kind = recipe.method.rl
    return "segments" if kind is None else {"kto": "kto", "grpo": "prompts"}.get(kind, "pairs")


def _converter(recipe: Recipe, template: templates.Template, tokens: templates.TokenizerTokens | None):
    """row, spec -> example: template variables (SFT, or no tokens given), or a rendered pair / kto row."""
    system, shape = recipe.data.system, row_shape(recipe)
    if shape != "segments" and tokens is not None:
        build = {"pairs": preference.pair, "kto": preference.kto_row, "prompts": preference.prompt_row}[shape]
        return lambda row, spec: (build if spec.preference_shape or shape == "prompts" else preference.reference_row)(
            row, spec, template, tokens, system)

    def convert(row, spec):
        example = fields.to_example(row, spec, template)
        return example | {"system": system} if system and not example.get("system") else example

    return convert


def _examples(recipe: Recipe, template: templates.Template, read, convert=None) -> tuple[list[Item], dict]:
    """An Item for every usable row, and per-source counts of what was dropped. `convert` (row, spec) -> example;
    default: the template variables of a supervised row."""
    convert = convert or _converter(recipe, template, None)
    kept, report = [], {}
    for index, (spec, rows) in enumerate(zip(recipe.data.datasets, read, strict=True)):
        incomplete, identical, reasons = 0, 0, Counter()
        for number, row in enumerate(rows.rows, start=1):
            try:
                example = convert(row, spec)
            except preference.IdenticalPair:
                identical += 1
                continue
            except fields.IncompleteRow as err:
                if recipe.data.incomplete == "error":
                    raise UserError(Problem(rows.label, f"data.datasets.{index}.fields", f"row {number}: {err} "
                                            "(set data.incomplete: drop to skip such rows)")) from None
                incomplete += 1
                reasons[str(err)] += 1
                continue
            kept.append(Item(rows.label, example, row, spec.use, index, number))
        if incomplete and incomplete + identical == len(rows.rows):
            top = reasons.most_common(1)[0][0]
            raise UserError(Problem(rows.label, f"data.datasets.{index}.fields", f"no usable rows: all "
                                    f"{incomplete} are incomplete (e.g. {top}); check the field mapping against "
                                    f"the columns {sorted(rows.rows[0])}"))
        if identical == len(rows.rows):
            raise UserError(Problem(rows.label, f"data.datasets.{index}.fields", f"no usable rows: in all {identical} "
                                    "chosen equals rejected; check that the two fields name different columns"))
        report[rows.label] = {"rows": len(rows.rows), "incomplete": incomplete, "identical_pairs": identical,
                              "incomplete_reasons": dict(reasons.most_common(3))}
    return kept, report


def _dedupe(items: list[Item]) -> tuple[list[Item], int]:
    seen, unique = set(), []
    for item in items:
        key = json.dumps(item.example, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique, len(items) - len(unique)


def _split(items: list[Item], recipe: Recipe) -> dict[str, list[Item]]:
    """Rows of `use: split` datasets are shuffled and divided by data.split; the others go whole to their split."""
    order = [item for item in items if item.use == "split"]
    random.Random(recipe.data.split.seed).shuffle(order)
    n_test = _count(recipe.data.split.test, len(order))
    n_val = _count(recipe.data.split.val, len(order) - n_test)
    splits = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    for name in SPLITS:
        splits[name] += [item for item in items if item.use == name]
    return splits


def _weighted(train: list[Item], recipe: Recipe) -> list[Item]:
    """Mixing: each dataset contributes round(weight x its training rows), repeating rows when weight > 1.
    Rows are told apart by dataset index, not source: one file may be listed twice (say, train and val)."""
    rng = random.Random(recipe.data.split.seed + 1)
    mixed = []
    for index, spec in enumerate(recipe.data.datasets):
        rows = [item for item in train if item.dataset == index]
        want = round(spec.weight * len(rows))
        mixed += (rows * (want // len(rows) + 1))[:want] if rows and want > len(rows) else rng.sample(rows, want)
    rng.shuffle(mixed)
    return mixed


def _token_lengths(rendered: list[list[templates.Segment]], tokenizer) -> list[list[int]]:
    """Token count of every segment, each tokenized on its own as axolotl's input_output strategy does;
    one batched call (the fast tokenizers encode a batch in parallel)."""
    texts = [segment.text for segments in rendered for segment in segments]
    sizes = []
    for start in range(0, len(texts), 2048):  # in chunks: the ids of a whole split at once cost hundreds of MB
        chunk = tokenizer(texts[start:start + 2048], add_special_tokens=False, return_attention_mask=False,
                          return_token_type_ids=False)["input_ids"]
        sizes += [len(ids) for ids in chunk]
    flat = iter(sizes)
    return [[next(flat) for _ in segments] for segments in rendered]


def _fit(segments, lengths, limit: int, tokenizer):
    """Truncate segments to `limit` tokens (the tail is cut); None when nothing labeled survives."""
    kept, used = [], 0
    for segment, length in zip(segments, lengths, strict=True):
        if used + length <= limit:
            kept.append(segment)
            used += length
            continue
        room = limit - used
        if room > 0:
            ids = tokenizer(segment.text, add_special_tokens=False)["input_ids"][:room]
            kept.append(templates.Segment(tokenizer.decode(ids), segment.label))
        break
    return kept if any(s.label for s in kept) else None


def _percentiles(values: list[int]) -> TokenPercentiles | None:
    if not values:
        return None
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return TokenPercentiles(min=ordered[0], p50=pick(0.5), p90=pick(0.9), p99=pick(0.99), max=ordered[-1],
                            mean=round(sum(ordered) / len(ordered), 1))


def _stats(lengths: list[int], over: int, dropped: int, by_source: Counter, recipe: Recipe) -> SplitStats:
    """A rendered split's stats: its rows' token counts, how many were over length and dropped, rows per source."""
    return SplitStats(rows=len(lengths), tokens=sum(lengths), tokens_per_row=_percentiles(lengths),
                      over_max_seq_len=over, overlength_action=recipe.data.overlength, dropped_overlength=dropped,
                      rows_by_source=dict(by_source))


def _render_split(name, items, template, tokens, tokenizer, recipe, stop) -> tuple[list[dict], SplitStats]:
    rows, lengths, over, dropped, by_source = [], [], 0, 0, Counter()
    limit = recipe.data.max_seq_len
    progress = dict(desc=f"render {name}", unit="row", file=sys.stderr, leave=False, disable=len(items) < 200)
    rendered = [templates.render(template, item.example, tokens) for item in tqdm(items, **progress)]
    token_counts = _token_lengths(rendered, tokenizer)
    for item, segments, sizes in zip(items, rendered, token_counts, strict=True):
        label = item.source
        if not any(s.label for s in segments):  # would train on nothing (and has no reference to evaluate)
            raise UserError(Problem(templates.file_of(template), "data.template", f"a row of {label} renders with no "
                                    f"labeled part, so it would train on nothing: {templates.show(segments)[:200]!r}; "
                                    f"{templates.LABEL_FIX}"))
        total = sum(sizes)
        if total > limit:
            over += 1
            segments = _fit(segments, sizes, limit, tokenizer) if recipe.data.overlength == "truncate" else None
            if segments is None:
                dropped += 1
                continue
            total = min(total, limit)
        lengths.append(total)
        by_source[label] += 1
        row = {"segments": [s.as_dict() for s in segments]}
        if name == "test":
            prompt, reference = templates.prompt_and_reference(segments, stop)
            row |= {"prompt": prompt, "reference": reference, "source": label, "row": item.row}
        rows.append(row)
    return rows, _stats(lengths, over, dropped, by_source, recipe)


def _cut(text: str, room: int, tokenizer) -> str:
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:room])


def _render_preference(name, items, template, tokens, tokenizer, recipe, stop,
                       extra: list[dict] | None = None) -> tuple[list[dict], SplitStats]:
    """Pairs (or kto rows), rendered when they were read: a row is prompt + each answer, and is over length when
    prompt + its longer answer is (as trl forwards prompt + chosen and prompt + rejected). Truncation cuts answers."""
    answers = {"kto": ("completion",), "prompts": ("reference",)}.get(row_shape(recipe), ("chosen", "rejected"))
    rows, lengths, over, dropped, by_source = [], [], 0, 0, Counter()
    limit = recipe.data.max_seq_len
    texts = [[templates.Segment(item.example[key], False) for key in ("prompt", *answers)] for item in items]
    for item, sizes, columns in zip(items, _token_lengths(texts, tokenizer), extra or [{}] * len(items), strict=True):
        label, example = item.source, item.example
        row = {key: example[key] for key in ("prompt", *answers, "label") if key in example} | columns
        if "reference" in answers:
            row["stop"] = list(stop)  # grpo's reward functions cut answers where evaluation does
        prompt, longest = sizes[0], max(sizes[1:])
        if prompt + longest > limit:
            over += 1
            if recipe.data.overlength == "drop" or prompt >= limit:
                dropped += 1
                continue
            row |= {key: _cut(row[key], limit - prompt, tokenizer) for key in answers}
            sizes = [prompt, *(min(size, limit - prompt) for size in sizes[1:])]
        if name == "test":
            if example.get("label") is False:
                continue  # an undesirable completion is no reference to score against
            segments = [templates.Segment(**s) for s in example["segments"]]
            prompt_text, reference = templates.prompt_and_reference(segments, stop)
            row |= {"segments": example["segments"], "prompt": prompt_text, "reference": reference,
                    "source": label, "row": item.row}
        lengths.append(sum(sizes))
        by_source[label] += 1
        rows.append(row)
    return rows, _stats(lengths, over, dropped, by_source, recipe)


def _check_special_tokens(template: templates.Template, tokenizer, model: str) -> None:
    for token in template.special_tokens:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise UserError(Problem("recipe", "data.template", f"template {template.name!r} uses {token!r}, which "
                                    f"the tokenizer of {model} splits into {len(ids)} tokens; use template "
                                    "'tokenizer' (the model's own chat format) or a model that has these tokens"))


def prepare(loaded: Loaded, quiet: bool = False) -> Prepared:
    """Prepare (or reuse from the cache) the recipe's data; returns where it is and its stats."""
    recipe = loaded.recipe
    template = templates.load(recipe.data.template)
    model_dir = resolve.resolve_base(recipe.model, root=loaded.root_of("model.base"))
    read = [sources.read(spec, index, loaded.root_of(f"data.datasets.{index}.source"))
            for index, spec in enumerate(recipe.data.datasets)]
    database = reward_database(recipe)
    key = cache_key(recipe, read, model_dir)
    target = cache_folder(key)
    if (target / DONE).is_file():
        info = DataInfo.read(target / DONE)
        if not quiet:
            print(f"prepare: cache hit {paths.display(target)} ({info.counts})", file=sys.stderr)
        return Prepared(target, key, info)

    # after the cache check: a hit needs neither transformers nor a tokenizer
    tokenizer = resolve.load_tokenizer(model_dir, trust_remote_code=recipe.model.trust_remote_code)
    tokens = resolve.tokenizer_tokens(model_dir, tokenizer)
    tokenizer.model_max_length = 1 << 30  # lengths are checked here against data.max_seq_len, not the model's
    _check_special_tokens(template, tokenizer, recipe.model.base)
    items, source_report = _examples(recipe, template, read, _converter(recipe, template, tokens))
    unique, duplicates = _dedupe(items) if recipe.data.dedupe else (items, 0)
    splits = _split(unique, recipe)
    splits["train"] = _weighted(splits["train"], recipe)
    stop = tuple(t for t in (*template.stop, tokens.eos_token) if t)

    _ensure(target.parent)
    with atomic.staging_dir(target, keep_existing=True) as staging:  # an identical copy published first wins
        stats, counts, by_source = {}, {}, {}
        for name in SPLITS:
            args = (name, splits[name], template, tokens, tokenizer, recipe, stop)
            if row_shape(recipe) == "segments":
                rows, stats[name] = _render_split(*args)
            else:  # grpo rewarded by executing SQL: train and val rows also name their database
                extra = _database_columns(splits[name], database, recipe) if database and name != "test" else None
                rows, stats[name] = _render_preference(*args, extra)
            counts[name] = len(rows)
            by_source[name] = stats[name].rows_by_source
            jsonl.write(staging / f"{name}.jsonl", rows)
        if counts["train"] == 0:
            raise UserError(Problem("recipe", "data", "no training rows left after splitting and length "
                                    f"filtering ({stats['train'].dropped_overlength} dropped as longer than "
                                    f"data.max_seq_len={recipe.data.max_seq_len}); raise max_seq_len, set "
                                    "data.overlength: truncate, or lower data.split.val/test"))
        info = DataInfo(key=key, rows=row_shape(recipe), counts=counts, rows_by_source=by_source, sources=source_report,
                        fingerprints={r.label: r.fingerprint for r in read}, duplicates_removed=duplicates,
                        template=template.name, stop=list(stop), stats=stats, format=FORMAT_VERSION)
        info.write(staging / DONE)
    if not quiet:
        print(f"prepare: wrote {paths.display(target)} {counts}", file=sys.stderr)
    return Prepared(target, key, info)


def _ensure(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(Problem(str(folder), "", f"cannot create the cache folder: {err.strerror}")) from None
    return folder
