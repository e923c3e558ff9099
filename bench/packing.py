"""Figure 3: packing_efficiency. Real (non-pad) share of the tokens in training batches formed by axolotl's own
MultipackBatchSampler + collators for the shipped packing recipes (lowest of them), with packing on and off;
plus the CPU (sdpa) layout on tiny-cpu. The measurement runs in a worker subprocess (`--worker packing`)."""
from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, Context, Failed, marker, say, timed, worker_command

# The shipped recipes name hub datasets and models, which these machines cannot reach: each recipe's dataset
# is replaced by the public sample of that same dataset in data/samples (resampled to `rows`), and its tokenizer
# by a local stand-in; template, max_seq_len, micro_batch_size and hardware (so the batch layout) are the
# recipe's own.
PACKING_SAMPLES = {  # hub dataset in a shipped recipe -> (its sample in data/samples, the sample's field mapping)
    "hf:b-mc2/sql-create-context": ("sql-create-context-sample.jsonl",
                                    {"instruction": "question", "input": "context", "output": "answer"}),
    "hf:databricks/databricks-dolly-15k": ("dolly15k-sample.jsonl",
                                           {"instruction": "instruction", "input": "context", "output": "response"}),
    "hf:ruslanmv/ai-medical-chatbot": ("medical-chat-sample.jsonl",
                                       {"instruction": "instruction", "input": "input", "output": "output"}),
}
PACKING_RECIPE = """\
schema: 1
version: 1.0.0
name: bench-packing-{name}
extends: {parent}
model: {{base: {standin}}}
data:
  datasets:
    - source: file:{rows}
      fields: {fields}
  packing: true
  dedupe: false
  split: {{val: 0, test: 0, seed: 42}}
"""


@dataclass
class Tokenized:
    """One recipe's training rows as axolotl tokenizes them, and what batching them needs."""

    recipe: object  # runner.recipe.schema.Recipe
    tokenizer: object
    features: list[dict]
    lengths: object  # numpy array of token counts
    seeds: int


def packing_recipes() -> list[str]:
    from runner.recipe import loading

    names = []
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        recipe = loading.load(path.stem).recipe
        if recipe.data.packing and all(d.source in PACKING_SAMPLES for d in recipe.data.datasets):
            names.append(path.stem)
    return names


def resampled(sample: str, n: int, out: Path) -> Path:
    rows = [x for x in (ROOT / "data" / "samples" / sample).read_text(encoding="utf-8").splitlines() if x.strip()]
    rng = random.Random(0)
    out.write_text("".join(rng.choice(rows) + "\n" for _ in range(n)), encoding="utf-8")
    return out


def tokenize(loaded, seeds: int) -> Tokenized:
    """`recipe prepare`, then axolotl's input_output strategy over the rows (what training sees), with
    position_ids as packing adds them."""
    import numpy as np
    from axolotl.prompt_strategies.input_output import load as input_output_strategy
    from axolotl.utils.dict import DictDefault

    from runner.data import prepare
    from runner.models import resolve

    recipe = loaded.recipe
    prepared = prepare.prepare(loaded, quiet=True)
    rows = [json.loads(x) for x in prepared.split("train").read_text().splitlines() if x.strip()]
    tokenizer = resolve.load_tokenizer(resolve.resolve_base(recipe.model))
    if tokenizer.pad_token is None:  # only the pad id differs; padding is counted by attention_mask
        tokenizer.pad_token = tokenizer.eos_token
    strategy = input_output_strategy(tokenizer, DictDefault({"train_on_inputs": False,
                                                             "sequence_len": recipe.data.max_seq_len}))
    features = []
    for row in rows:
        tokenized = strategy.tokenize_prompt(row)
        tokenized["position_ids"] = list(range(len(tokenized["input_ids"])))
        features.append(tokenized)
    return Tokenized(recipe, tokenizer, features, np.array([len(f["input_ids"]) for f in features]), seeds)


def packed(data: Tokenized, batch_size: int, batch_max_len: int) -> dict:
    """Batches from axolotl's MultipackBatchSampler, concatenated by its V2 collator."""
    import torch
    from axolotl.utils.collators import V2BatchSamplerDataCollatorForSeq2Seq
    from axolotl.utils.samplers import MultipackBatchSampler
    from torch.utils.data import RandomSampler

    # causal builder: pad_to_sequence_len true (the runner sets it = packing) -> multiple of 64*ceil(seq/64)
    multiple = 64 * math.ceil(data.recipe.data.max_seq_len / 64)
    collator = V2BatchSamplerDataCollatorForSeq2Seq(data.tokenizer, padding=True, pad_to_multiple_of=multiple,
                                                    return_tensors="pt")
    effs, sampler_effs, dropped = [], [], []
    for seed in range(data.seeds):
        generator = torch.Generator().manual_seed(data.recipe.train.seed + seed)
        sampler = MultipackBatchSampler(RandomSampler(data.features, generator=generator), batch_size=batch_size,
                                        batch_max_len=batch_max_len, lengths=data.lengths, bin_size=200,
                                        group_size=100_000, drop_last=True, num_processes=1)
        real = slots = n_rows = 0
        for batch in sampler:
            out = collator([[data.features[i] for i in b] for b in batch])
            real += int((out["attention_mask"] > 0).sum())
            slots += int(out["input_ids"].numel())
            n_rows += sum(len(b) for b in batch)
        effs.append(real / slots)
        sampler_effs.append(sampler.efficiency())
        dropped.append(len(data.features) - n_rows)
    return {"batch_size": batch_size, "batch_max_len": batch_max_len, "pad_to_multiple_of": multiple,
            "efficiency": round(statistics.fmean(effs), 4), "efficiency_min": round(min(effs), 4),
            "sampler_efficiency": round(statistics.fmean(sampler_effs), 4), "rows_dropped_by_drop_last": dropped}


def unpacked(data: Tokenized) -> dict:
    """Packing off: micro_batch_size rows in random order, padded to the longest by DataCollatorForSeq2Seq."""
    import torch
    from axolotl.utils.collators import DataCollatorForSeq2Seq
    from torch.utils.data import BatchSampler, RandomSampler

    micro = data.recipe.train.micro_batch_size
    collator = DataCollatorForSeq2Seq(data.tokenizer, padding=True, return_tensors="pt")
    plain = [{k: v for k, v in f.items() if k != "position_ids"} for f in data.features]
    effs = []
    for seed in range(data.seeds):
        generator = torch.Generator().manual_seed(data.recipe.train.seed + seed)
        real = slots = 0
        for batch in BatchSampler(RandomSampler(plain, generator=generator), micro, drop_last=False):
            out = collator([plain[i] for i in batch])
            real += int((out["attention_mask"] > 0).sum())
            slots += int(out["input_ids"].numel())
        effs.append(real / slots)
    return {"batch_size": micro, "efficiency": round(statistics.fmean(effs), 4), "efficiency_min": round(min(effs), 4)}


def measure(loaded, seeds: int) -> dict:
    from axolotl.utils.schemas.enums import ATTN_IMPLS_SUPPORTING_PACKING

    from runner.train import engine

    data = tokenize(loaded, seeds)
    seq_len, micro = data.recipe.data.max_seq_len, data.recipe.train.micro_batch_size
    attention = engine.ATTENTION[data.recipe.hardware.attention]
    varlen = attention in ATTN_IMPLS_SUPPORTING_PACKING
    # as axolotl builds batches: attention with varlen support -> one row of micro_batch_size * sequence_len
    # per step; without it (sdpa, eager) -> multipack_real_batches: micro_batch_size rows of sequence_len
    layout = "varlen: 1 row of micro_batch_size x sequence_len" if varlen else \
        "multipack_real_batches: micro_batch_size rows of sequence_len"
    return {"rows": len(data.features), "sequence_len": seq_len, "micro_batch_size": micro,
            "attn_implementation": attention, "layout": layout,
            "tokens_per_row": {"mean": round(float(data.lengths.mean()), 1), "max": int(data.lengths.max())},
            "packed": packed(data, 1, micro * seq_len) if varlen else packed(data, micro, seq_len),
            "unpacked_pad_longest": unpacked(data)}


def worker(seeds: int, rows_per_recipe: int, standin: str, work: str) -> dict:
    """Runs in the subprocess: every shipped packing recipe (on its dataset's sample) and tiny-cpu."""
    from runner.models import resolve
    from runner.recipe import loading

    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    standin_dir = Path(standin) if Path(standin).exists() else resolve.resolve_base(loading.load(standin).recipe.model)
    results = {"standin_tokenizer": str(standin), "seeds": seeds, "rows_per_recipe": rows_per_recipe,
               "recipes": {}}
    # the CPU layout, on the recipe the tests train (tiny-cpu, sdpa): its own alpaca sample
    tiny = loading.load("tiny-cpu", ["data.packing=true", "data.split.val=0", "data.split.test=0"])
    results["cpu"] = {"recipe": "tiny-cpu", **measure(tiny, seeds)}
    for name in packing_recipes():
        recipe = loading.load(name).recipe
        sample, fields = PACKING_SAMPLES[recipe.data.datasets[0].source]
        rows = resampled(sample, rows_per_recipe, work_dir / f"{name}.jsonl")
        child = work_dir / f"bench-packing-{name}.yaml"
        child.write_text(PACKING_RECIPE.format(name=name, parent=ROOT / "recipes" / f"{name}.yaml", rows=rows,
                                               standin=standin_dir, fields=json.dumps(fields)), encoding="utf-8")
        results["recipes"][name] = {"sample": sample, **measure(loading.load(str(child)), seeds)}
    return results


def bench(ctx: Context) -> tuple[dict, dict]:
    say("packing: axolotl MultipackBatchSampler + collators over the shipped packing recipes and tiny-cpu")
    size = ctx.size
    result = timed("packing", worker_command("packing", "--seeds", str(size["packing_seeds"]),
                                             "--rows", str(size["packing_rows"]), "--standin", size["packing_standin"],
                                             "--work", str(ctx.tmp / "packing")),
                   cwd=ROOT, env=ctx.env(), logs=ctx.logs)
    details = marker(result["text"], "BENCH_PACKING")
    if not details["recipes"]:
        raise Failed("no shipped recipe turns packing on with a dataset that has a sample in data/samples")
    worst = min(details["recipes"], key=lambda name: details["recipes"][name]["packed"]["efficiency"])
    figures = {"packing_efficiency": details["recipes"][worst]["packed"]["efficiency"],
               "packing_efficiency_off": details["recipes"][worst]["unpacked_pad_longest"]["efficiency"],
               "packing_efficiency_cpu_sdpa": details["cpu"]["packed"]["efficiency"]}
    details["headline_recipe"] = worst
    return figures, details
