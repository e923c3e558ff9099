"""run/serve/: the run's model as one Hugging Face model folder that any server loads as it is.

  config.json, weights    links to the merged model (after `recipe merge`), else to the base model's files
  adapter_*               links to the run's LoRA adapter (transformers loads it on top of the weights above)
  tokenizer files         the base model's tokenizer (as `recipe generate` uses it) with the recipe's template as
                          its chat template and the stop strings as its response template (runner.recipe.chat_template)
  generation_config.json  the model's own, with the stop strings as `stop_strings`

Written at each `recipe serve` (staged, then renamed into place), so it always follows the run as it is now.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runner.core import paths
from runner.core.atomic import staging_dir
from runner.core.errors import Problem, UserError
from runner.evaluate.generate import render_prompt
from runner.models import resolve
from runner.recipe import chat_template, templates
from runner.recipe.schema import Recipe
from runner.runs import rundir

SERVE = rundir.SERVE
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
MODEL_SUFFIXES = (".safetensors", ".bin", ".index.json", ".py")  # weights, their index, a remote-code model's code
PROBE = "What is the capital of France?"


@dataclass(frozen=True)
class Served:
    """What `recipe serve` serves: the folder, the name clients ask for, and the limits it checks requests against."""

    folder: Path
    name: str
    run: rundir.RunDir
    source: str  # "merged", "adapter" or "full": which model the folder holds
    stop: tuple[str, ...]
    context_length: int | None


def stop_strings(recipe: Recipe, manifest, tokens: templates.TokenizerTokens) -> list[str]:
    """Where an answer ends: the strings the data was prepared with, as `recipe generate` stops."""
    template_stop = (*templates.load(recipe.data.template).stop, tokens.eos_token)
    return list(manifest.stop or [s for s in template_stop if s])


def _sources(run: rundir.RunDir, manifest) -> tuple[str, Path, Path | None]:
    """(kind, folder with config.json and the weights, adapter folder or None)."""
    if manifest.merged_dir and (run.file(manifest.merged_dir) / "config.json").is_file():
        return "merged", run.file(manifest.merged_dir), None
    if manifest.adapter:
        return "adapter", Path(manifest.base_model_dir), run.file(manifest.model_dir)
    return "full", run.file(manifest.model_dir), None


def _config(recipe: Recipe, weights: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(weights, trust_remote_code=recipe.model.trust_remote_code)


def _context_length(recipe: Recipe, config) -> int | None:
    """The smaller of the recipe's model.context_length and the model's max_position_embeddings, where known."""
    known = [n for n in (recipe.model.context_length, getattr(config, "max_position_embeddings", None)) if n]
    return min(known) if known else None


def _check_prompt(recipe: Recipe, tokenizer, tokens: templates.TokenizerTokens) -> None:
    """The chat template must render a user turn exactly as the recipe's template does."""
    want = render_prompt(recipe, PROBE, tokens)
    got = tokenizer.apply_chat_template([{"role": "user", "content": PROBE}], add_generation_prompt=True,
                                        tokenize=False)
    if got != want:
        template = templates.load(recipe.data.template)
        raise UserError(Problem(templates.file_of(template), "", "renders differently as a chat template than in "
                                f"training ({got!r} instead of {want!r}), so it cannot be served; use plain Jinja "
                                "(variables, if, for, filter labeled) in it"))


def _link_files(source: Path, target: Path, names: tuple[str, ...] | None = None) -> None:
    """Symlink source's model files (config.json, weights; or the named files) into target."""
    for file in sorted(source.iterdir()):
        model_file = file.name == "config.json" or (file.name.endswith(MODEL_SUFFIXES)
                                                    and file.name != "training_args.bin")
        wanted = file.name in names if names is not None else model_file
        if wanted and file.is_file() and not (target / file.name).exists():
            os.symlink(file.resolve(), target / file.name)


def prepare(run: rundir.RunDir) -> Served:
    """Write run/serve/ (see the module's docstring); a UserError when the run has no model to serve."""
    from transformers import AutoTokenizer, GenerationConfig

    manifest = run.trained()
    recipe = run.recipe()
    kind, weights, adapter = _sources(run, manifest)
    base = Path(manifest.base_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=recipe.model.trust_remote_code)
    tokens = resolve.tokenizer_tokens(base, tokenizer)
    stop = stop_strings(recipe, manifest, tokens)
    tokenizer.chat_template = chat_template.chat_template(recipe, tokens.chat_template)
    tokenizer.response_template = chat_template.response_template(stop)
    _check_prompt(recipe, tokenizer, tokens)
    config = _config(recipe, weights)
    try:
        generation = GenerationConfig.from_pretrained(weights)
    except OSError:  # the model ships none
        generation = GenerationConfig.from_model_config(config)
    generation.stop_strings = stop or None
    target = run.serve_dir
    with staging_dir(target) as staging:
        tokenizer.save_pretrained(staging)
        generation.save_pretrained(staging)
        _link_files(weights, staging)
        if adapter is not None:
            _link_files(adapter, staging, ADAPTER_FILES)
    return Served(folder=target, name=recipe.name, run=run, source=kind, stop=tuple(stop),
                  context_length=_context_length(recipe, config))


def describe(served: Served) -> str:
    """One line for the terminal: which model is served from where."""
    what = {"merged": "the merged model", "adapter": "the LoRA adapter on its base model",
            "full": "the fine-tuned model"}[served.source]
    return f"{served.name} (run {served.run.run_id}): {what}, from {paths.display(served.folder)}"
