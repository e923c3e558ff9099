"""`recipe generate`: answer ad-hoc prompts with the base and the fine-tuned model, side by side.

Each prompt becomes a single user turn rendered by the recipe's own template (the format the model
was trained in), is tokenized exactly as rendered (no extra BOS), and is decoded greedily with
transformers (+ peft for an adapter), cut at the first stop string. `load_pair` loads the two models once
and answers one prompt at a time (optionally with another system prompt): `recipe chat` uses it too.
"""
from __future__ import annotations

import shutil
import textwrap
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.core import paths
from runner.core.console import say
from runner.core.errors import Problem, UserError
from runner.metrics.registry import clean_generation
from runner.models import numerics, resolve
from runner.recipe import loading, templates
from runner.recipe.schema import Recipe
from runner.runs import rundir


def render_prompt(recipe: Recipe, text: str, tokens: templates.TokenizerTokens, system: str | None = None) -> str:
    """The prompt text for one user turn, rendered by the recipe's template up to where the model answers.
    `system` replaces the recipe's data.system (None keeps it, "" drops it)."""
    template = templates.load(recipe.data.template)
    system = recipe.data.system if system is None else system
    for answer in ("", "answer"):  # "" unless the template then renders no labeled part at all
        if "messages" in template.requires:
            example = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}
        else:
            example = {"instruction": text, "output": answer} | ({"input": ""} if "input" in template.variables else {})
        if system:
            example["system"] = system
        segments = templates.render(template, example, tokens)
        if any(s.label for s in segments):
            return templates.prompt_and_reference(segments)[0]
    raise UserError(Problem(f"templates/{template.name}.jinja", "", "renders no labeled answer part"))


def _target(target: rundir.RunDir | loading.Loaded) -> tuple[Recipe, str, rundir.RunDir | None]:
    """(recipe, base model dir, trained run or None) for a run directory or a loaded recipe."""
    if isinstance(target, rundir.RunDir):
        return target.recipe(), target.manifest().base_model_dir, target
    recipe = target.recipe
    base = str(resolve.resolve_base(recipe.model, paths.display(target.path), target.root_of("model.base")))
    try:
        run = rundir.find(recipe.name)
    except UserError:
        say(f"generate: {recipe.name} has no trained run yet; showing the base model only")
        return recipe, base, None
    return recipe, run.manifest().base_model_dir, run


def _stopping(tokenizer, stop: list[str]) -> dict:
    """generate()'s stop settings: stop strings that are single tokens (<|im_end|>, </s>) as end-of-sequence ids,
    else transformers' stop-string matcher, which costs seconds per call (about 10 s on SmolLM2 here)."""
    ids = [tokenizer.convert_tokens_to_ids(s) for s in stop]
    if stop and all(isinstance(i, int) and i != tokenizer.unk_token_id and tokenizer.decode([i]) == s
                    for i, s in zip(ids, stop, strict=True)):
        return {"eos_token_id": sorted(set(ids))}
    return {"stop_strings": stop or None, "tokenizer": tokenizer}


def _generate_all(model, tokenizer, prompts: list[str], stop: list[str], max_new_tokens: int,
                  batch_size: int = 1, samples: int = 0, temperature: float = 1.0) -> list[str]:
    """Greedy answers, each cut at its first stop string; with samples=N, N sampled answers per prompt instead
    (at temperature, one prompt's answers next to each other). Batches pad on the left, so every prompt ends where
    its answer starts (a batch of one is not padded); a batch ends when all its answers have stopped. The batch size
    is the caller's numerics' (runner.models.numerics.decide), and so is the state the model's generate runs in."""
    import torch

    decoding = ({"do_sample": True, "num_return_sequences": samples, "temperature": temperature, "top_p": 1.0,
                 "top_k": 0} if samples else {"do_sample": False})

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side, pad_token, tokenizer.padding_side = tokenizer.padding_side, tokenizer.pad_token, numerics.PADDING_SIDE
    if pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding needs one; attention masks hide it
    answers, stopping = [], _stopping(tokenizer, stop)
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            ids = tokenizer(batch, add_special_tokens=False, return_tensors="pt", padding=len(batch) > 1)
            ids = ids.to(model.device)
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=max_new_tokens, pad_token_id=pad, **decoding, **stopping)
            for row in out[:, ids["input_ids"].shape[1]:]:
                answers.append(clean_generation(tokenizer.decode(row, skip_special_tokens=False), stop))
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad_token
    return answers


@dataclass
class Pair:
    """A base model and its fine-tuned model (None without a trained run), loaded once. For an adapter both are
    the same PeftModel: the base answers with the adapter disabled, which computes exactly the base weights.
    Both load and answer as `numerics` decides, as `recipe serve` and evaluation do."""

    recipe: Recipe
    run: rundir.RunDir | None
    base_dir: str
    tokenizer: Any
    tokens: templates.TokenizerTokens
    stop: list[str]
    max_new_tokens: int  # the recipe's eval.max_new_tokens unless given
    base: Any
    finetuned: Any | None
    adapter: bool
    numerics: numerics.Numerics | None = None  # how both compute (runner.models.numerics.decide)

    def render(self, prompt: str, system: str | None = None) -> str:
        return render_prompt(self.recipe, prompt, self.tokens, system)

    def base_answer(self, rendered: str, max_new_tokens: int | None = None) -> str:
        with self.finetuned.disable_adapter() if self.adapter else nullcontext():
            return _generate_all(self.base, self.tokenizer, [rendered], self.stop,
                                 max_new_tokens or self.max_new_tokens)[0]

    def finetuned_answer(self, rendered: str, max_new_tokens: int | None = None) -> str | None:
        if self.finetuned is None:
            return None
        return _generate_all(self.finetuned, self.tokenizer, [rendered], self.stop,
                             max_new_tokens or self.max_new_tokens)[0]

    def answer(self, prompt: str, system: str | None = None, max_new_tokens: int | None = None) -> dict:
        """{prompt, rendered, base, finetuned} for one prompt, exactly as `recipe generate` answers it."""
        rendered = self.render(prompt, system)
        return {"prompt": prompt, "rendered": rendered, "base": self.base_answer(rendered, max_new_tokens),
                "finetuned": self.finetuned_answer(rendered, max_new_tokens)}


def _stop_strings(recipe: Recipe, tokens: templates.TokenizerTokens) -> list[str]:
    return [s for s in dict.fromkeys((*templates.load(recipe.data.template).stop, tokens.eos_token)) if s]


def answer_all(recipe: Recipe, model_dir: Path, prompts: list[str], batch_size: int = 16,
               progress: str | None = None, samples: int = 0, temperature: float = 1.0,
               seed: int = 0) -> list[str]:
    """Greedy answers of the complete model in model_dir to rendered prompts, stopped where the recipe's template
    ends an answer and at most eval.max_new_tokens long; with samples=N, N answers per prompt sampled at temperature
    (torch seeded with seed), one prompt's next to each other. progress: a noun for a line every 128 prompts."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(seed)

    how = numerics.decide(recipe, batch_size)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=recipe.model.trust_remote_code)
    model = how.load(model_dir, trust_remote_code=recipe.model.trust_remote_code)
    stop = _stop_strings(recipe, resolve.tokenizer_tokens(model_dir))
    answers: list[str] = []
    for start in range(0, len(prompts), 128):
        answers += _generate_all(model, tokenizer, prompts[start:start + 128], stop, recipe.eval.max_new_tokens,
                                 how.batch_size, samples, temperature)
        if progress:
            say(f"answered {min(start + 128, len(prompts))}/{len(prompts)} {progress}")
    return answers


def load_pair(target: rundir.RunDir | loading.Loaded, max_new_tokens: int | None = None) -> Pair:
    """The base and fine-tuned models of a run (or of a recipe's latest run), with the tokenizer and stop strings,
    loaded as runner.models.numerics decides (as `recipe serve` loads them): one prompt at a time."""
    from transformers import AutoTokenizer

    recipe, base_dir, run = _target(target)
    manifest = run.trained() if run else None  # before any loading: a run must have its model
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=recipe.model.trust_remote_code)
    tokens = resolve.tokenizer_tokens(Path(base_dir))
    stop = (manifest.stop if manifest else None) or _stop_strings(recipe, tokens)
    how, trust = numerics.decide(recipe), recipe.model.trust_remote_code
    adapter = bool(run is not None and manifest.adapter)
    finetuned = None
    if adapter:  # one PeftModel on the base weights: the base answers with the adapter disabled
        base = finetuned = how.load(base_dir, run.file(manifest.model_dir), trust_remote_code=trust)
    else:
        base = how.load(base_dir, trust_remote_code=trust)
        if run is not None:
            finetuned = how.load(run.file(manifest.model_dir), trust_remote_code=trust)
    return Pair(recipe=recipe, run=run, base_dir=base_dir, tokenizer=tokenizer, tokens=tokens, stop=stop,
                max_new_tokens=max_new_tokens or recipe.eval.max_new_tokens, base=base, finetuned=finetuned,
                adapter=adapter, numerics=how)


def generate(target: rundir.RunDir | loading.Loaded, prompts: list[str],
             max_new_tokens: int | None = None) -> list[dict]:
    """[{prompt, rendered, base, finetuned}] for each prompt (finetuned is None when the recipe has no trained run)."""
    pair = load_pair(target, max_new_tokens)
    return [pair.answer(prompt) for prompt in prompts]


def format_side_by_side(results: list[dict], width: int | None = None) -> str:
    """The answers in two columns (base | fine-tuned) under each prompt, for the terminal."""
    width = width or shutil.get_terminal_size((100, 20)).columns
    column = max(20, (width - 3) // 2)
    blocks = []
    for result in results:
        left = _wrap(result["base"], column)
        right = _wrap(result["finetuned"] if result["finetuned"] is not None else "(no trained run)", column)
        lines = [f"{'base'.ljust(column)} | fine-tuned", f"{'-' * column}-+-{'-' * column}"]
        height = max(len(left), len(right))
        left, right = left + [""] * (height - len(left)), right + [""] * (height - len(right))
        lines += [f"{a.ljust(column)} | {b}".rstrip() for a, b in zip(left, right, strict=True)]
        blocks.append("\n".join([f"> {line}" for line in result["prompt"].splitlines() or [""]] + lines))
    return "\n\n".join(blocks) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    lines = []
    for paragraph in (text or "(empty)").splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width, replace_whitespace=False, drop_whitespace=True) or [""]
    return lines
