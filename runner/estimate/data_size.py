"""How much a recipe trains on, without preparing anything and without the network.

1. Prepared data in the cache (runner/data/prepare.py, same cache key): the training split's exact rows and
   tokens.
2. Local files not prepared yet: their rows (split and weighted as prepare does) and tokens per row from a
   sample of rendered rows, tokenized with the model's tokenizer when it is on this machine (else 4 characters
   per token).
3. Hub datasets (hf:) are never downloaded here: rows and tokens are unknown unless the user gives --tokens.
"""
from __future__ import annotations

import random
from pathlib import Path

from runner.core import paths
from runner.core.contracts import Record
from runner.core.errors import UserError
from runner.data import fields, preference, sources
from runner.models import resolve
from runner.recipe import parents, templates
from runner.recipe.loading import Loaded
from runner.runs.data_info import DataInfo

SAMPLE = 200  # rows rendered and tokenized for the tokens-per-row estimate
CHARS_PER_TOKEN = 4  # when the tokenizer is not on this machine


class DataSize(Record):
    rows: int | None = None  # training rows per epoch
    tokens: int | None = None  # training tokens per epoch
    tokens_per_row: float | None = None  # mean
    tokens_per_row_p90: float | None = None
    source: str  # how these figures were found


def local_model_dir(loaded: Loaded) -> Path | None:
    """The model's directory when it is on this machine as a Hugging Face folder (no download, no conversion)."""
    spec, root = loaded.recipe.model, loaded.root_of("model.base")
    base = spec.base.strip()
    if parents.is_run(base):  # a staged recipe tokenizes with its parent's tokenizer
        return local_model_dir(parents.load_parent(base))
    try:
        path = resolve.package_file(base) if base.startswith(resolve.PKG) else paths.resolve_local(base, root)
        if path.is_file():
            target = resolve.gguf_target(path)
            return target if (target / "config.json").is_file() else None
        if path.is_dir():
            return path
        if resolve._is_tiny_model(path):
            return resolve.resolve_base(spec, root=root)  # built on demand, like every use of the tiny model
        return resolve.hub_snapshot(base, spec.revision)
    except UserError:
        return None


def _prepared(loaded: Loaded, read, model_dir: Path) -> DataInfo | None:
    from runner.data import prepare

    done = prepare.cache_folder(prepare.cache_key(loaded.recipe, read, model_dir)) / prepare.DONE
    return DataInfo.read(done) if done.is_file() else None


def _train_rows(loaded: Loaded, read) -> list[tuple]:
    """(spec, row) for the rows that reach the training split, weighted as prepare weights them."""
    from runner.data.prepare import _count

    recipe = loaded.recipe
    split_rows = sum(len(r.rows) for spec, r in zip(recipe.data.datasets, read, strict=True) if spec.use == "split")
    held_out = _count(recipe.data.split.test, split_rows)
    held_out += _count(recipe.data.split.val, split_rows - held_out)
    keep = 1 - held_out / split_rows if split_rows else 1.0
    chosen = []
    for spec, rows in zip(recipe.data.datasets, read, strict=True):
        if spec.use in ("split", "train"):
            share = spec.weight * (keep if spec.use == "split" else 1.0)
            chosen += [(spec, row) for row in rows.rows] * int(share) + [
                (spec, row) for row in rows.rows[:round((share % 1) * len(rows.rows))]]
    return chosen


def _text(spec, row: dict, template, tokens, system: str | None) -> str:
    """The text one row trains on; a preference pair is forwarded as prompt + chosen and prompt + rejected."""
    if spec.preference_shape == "pairs":
        pair = preference.pair(row, spec, template, tokens, system)
        return pair["prompt"] + pair["chosen"] + pair["prompt"] + pair["rejected"]
    if spec.preference_shape == "kto":
        kto = preference.kto_row(row, spec, template, tokens, system)
        return kto["prompt"] + kto["completion"]
    example = fields.to_example(row, spec, template)
    if system and not example.get("system"):
        example["system"] = system
    return "".join(s.text for s in templates.render(template, example, tokens))


def _sampled(loaded: Loaded, chosen: list[tuple], model_dir: Path | None) -> tuple[float, float, str]:
    """(mean, p90) tokens per rendered row over a sample, and how they were counted."""
    template = templates.load(loaded.recipe.data.template)
    tokenizer, tokens = None, templates.TokenizerTokens()
    if model_dir is not None:
        try:
            tokenizer = resolve.load_tokenizer(model_dir, loaded.recipe.model.trust_remote_code)
            tokens = resolve.tokenizer_tokens(model_dir, tokenizer)
        except Exception:  # noqa: BLE001 - a directory without a usable tokenizer: count characters instead
            tokenizer = None
    sample = random.Random(0).sample(chosen, min(SAMPLE, len(chosen)))
    texts = []
    for spec, row in sample:
        try:
            texts.append(_text(spec, row, template, tokens, loaded.recipe.data.system))
        except (fields.IncompleteRow, preference.IdenticalPair):
            continue
    if not texts:
        return 0.0, 0.0, "no complete row in the sample"
    if tokenizer is not None:
        counts = sorted(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
        how = f"the model's tokenizer on {len(texts)} sampled rows"
    else:
        counts = sorted(len(text) / CHARS_PER_TOKEN for text in texts)
        how = f"{CHARS_PER_TOKEN} characters per token on {len(texts)} sampled rows (tokenizer not on this machine)"
    limit = loaded.recipe.data.max_seq_len
    counts = [min(c, limit) for c in counts]
    return sum(counts) / len(counts), counts[int(0.9 * (len(counts) - 1))], how


def measure(loaded: Loaded) -> DataSize:
    """Rows and tokens of one training epoch (see the module docstring)."""
    recipe = loaded.recipe
    hub = [spec.source for spec in recipe.data.datasets if spec.source.startswith("hf:")]
    if hub:
        return DataSize(source=f"unknown: {', '.join(hub)} is a hub dataset and is not downloaded to estimate; "
                        "give --tokens N (tokens per epoch), or run `recipe prepare` on a machine that has it")
    missing = [spec.source for i, spec in enumerate(recipe.data.datasets) if spec.source.startswith("file:")
               and not sources.local_path(spec, loaded.root_of(f"data.datasets.{i}.source")).exists()]
    if missing:  # a file a tool makes later (e.g. the DPO demo's pairs, made from the SFT run)
        return DataSize(source=f"unknown: {', '.join(missing)} does not exist yet; give --tokens N (tokens per "
                        "epoch), or make the file first")
    read = [sources.read(spec, i, loaded.root_of(f"data.datasets.{i}.source"))
            for i, spec in enumerate(recipe.data.datasets)]
    model_dir = local_model_dir(loaded)
    info = _prepared(loaded, read, model_dir) if model_dir is not None else None
    stats = info.stats.get("train") if info else None
    if stats is not None and stats.tokens_per_row is not None:
        return DataSize(rows=stats.rows, tokens=stats.tokens, tokens_per_row=stats.tokens_per_row.mean,
                        tokens_per_row_p90=stats.tokens_per_row.p90, source="prepared data (recipe prepare)")
    chosen = _train_rows(loaded, read)
    mean, p90, how = _sampled(loaded, chosen, model_dir)
    return DataSize(rows=len(chosen), tokens=round(len(chosen) * mean), tokens_per_row=round(mean, 1),
                    tokens_per_row_p90=p90,
                    source=f"not prepared yet: {len(chosen)} training rows read; tokens per row from {how}")
