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
from runner.evaluate.harness import device_and_dtype
from runner.evaluate.metrics import clean_generation
from runner.models import resolve
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


def _generate_all(model, tokenizer, prompts: list[str], stop: list[str], max_new_tokens: int) -> list[str]:
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                 stop_strings=stop or None, tokenizer=tokenizer)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=False)
        answers.append(clean_generation(text, stop))
    return answers


@dataclass
class Pair:
    """A base model and its fine-tuned model (None without a trained run), loaded once. For an adapter both are
    the same PeftModel: the base answers with the adapter disabled, which computes exactly the base weights."""

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


def load_pair(target: rundir.RunDir | loading.Loaded, max_new_tokens: int | None = None) -> Pair:
    """The base and fine-tuned models of a run (or of a recipe's latest run), with the tokenizer and stop strings."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe, base_dir, run = _target(target)
    manifest = run.trained() if run else None  # before any loading: a run must have its model
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=recipe.model.trust_remote_code)
    tokens = resolve.tokenizer_tokens(Path(base_dir))
    template_stop = (*templates.load(recipe.data.template).stop, tokens.eos_token)
    stop = (manifest.stop if manifest else None) or [s for s in template_stop if s]
    device, dtype = device_and_dtype(recipe)  # generation runs on the CPU: in bf16 where the recipe and CPU allow
    load = dict(dtype=getattr(torch, dtype) if device == "cpu" else torch.float32,
                trust_remote_code=recipe.model.trust_remote_code)
    base = AutoModelForCausalLM.from_pretrained(base_dir, **load).eval()
    finetuned = None
    if run is not None:
        model_dir = run.file(manifest.model_dir)
        if manifest.adapter:
            from peft import PeftModel

            base = finetuned = PeftModel.from_pretrained(base, model_dir).eval()  # wraps the base weights above
        else:
            finetuned = AutoModelForCausalLM.from_pretrained(model_dir, **load).eval()
    return Pair(recipe=recipe, run=run, base_dir=base_dir, tokenizer=tokenizer, tokens=tokens, stop=stop,
                max_new_tokens=max_new_tokens or recipe.eval.max_new_tokens, base=base, finetuned=finetuned,
                adapter=bool(run is not None and manifest.adapter))


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
