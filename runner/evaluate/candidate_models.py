"""What each eval candidate runs (runner.recipe.candidates is the language): lm-eval model arguments, the tokenizer
its prompts are measured with, and the template its prompts are rendered in."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.core.errors import Problem, UserError
from runner.recipe.candidates import BASE, DEFAULT, FINETUNED, MERGED, Candidate


@dataclass(frozen=True)
class Resolved:
    """A candidate made concrete: lm-eval model arguments, the tokenizer its prompts are measured with, and the
    template (name, system) its prompts are rendered in; run_dir for a run: candidate."""

    candidate: Candidate
    args: dict
    tokenizer_dir: str
    template: str
    system: str | None
    source: str  # what it is, for the summary (a model path, a run directory)
    same_prompts: bool  # answers this run's own rendered prompts (no separate task folder)


def resolve(candidate: Candidate, run, manifest, recipe, dtype: str) -> Resolved:
    """Model arguments and prompt format of one candidate; a UserError (exit 2) when its model cannot be had."""
    from runner.evaluate import harness

    where = f"eval.candidates: {candidate.label}"
    template, system = recipe.data.template, recipe.data.system
    if candidate.kind in DEFAULT:
        args = harness.model_args(run, manifest, candidate.kind, recipe, dtype)
        source = manifest.base_model_dir if candidate.kind == BASE else str(run.file(manifest.model_dir))
        return Resolved(candidate, args, manifest.base_model_dir, template, system, source, True)
    if candidate.kind == MERGED:
        return _merged(candidate, run, manifest, recipe, dtype, where)
    if candidate.kind == "fewshot":
        args = harness.model_args(run, manifest, BASE, recipe, dtype)
        return Resolved(candidate, args, manifest.base_model_dir, template, system, manifest.base_model_dir, False)
    if candidate.kind == "run":
        return _other_run(candidate, recipe, dtype, where)
    return _model(candidate, recipe, dtype, where)


def _merged(candidate: Candidate, run, manifest, recipe, dtype: str, where: str) -> Resolved:
    """run/merged/: the same prompts as the fine-tuned model (its tokenizer is the adapter's); never merged here."""
    from runner.core import paths

    if not manifest.adapter:
        raise UserError(Problem(where, "", "this run is a full fine-tune: there is no adapter to merge, its model/ is "
                                "already what `finetuned` scores; drop merged from eval.candidates"))
    folder = run.merged_path
    if not (folder / "config.json").is_file():
        raise UserError(Problem(where, "", f"no merged model in {paths.display(folder)}; eval scores artifacts, it "
                                f"never builds one: run `recipe merge {manifest.recipe}@{manifest.run_id}` first"))
    args = {"pretrained": str(folder), "dtype": dtype, "trust_remote_code": recipe.model.trust_remote_code}
    return Resolved(candidate, args, str(folder), recipe.data.template, recipe.data.system, str(folder), True)


def _other_run(candidate: Candidate, recipe, dtype: str, where: str) -> Resolved:
    from runner.evaluate import harness
    from runner.runs import rundir

    try:
        other = rundir.find(candidate.recipe, candidate.run_id)
        manifest = other.trained()
        other_recipe = other.recipe()
    except UserError as err:
        raise UserError(Problem(where, "", f"{err.problems[0].message} ({err.problems[0].file}); train it or "
                                "name a finished run as run:RECIPE@RUN_ID")) from None
    args = harness.model_args(other, manifest, FINETUNED, other_recipe, dtype)
    data = other_recipe.data
    # its own task folder: its template, stop strings and tokenizer (perplexity token counts) may differ
    return Resolved(candidate, args, manifest.base_model_dir, data.template, data.system, str(other.path), False)


def _model(candidate: Candidate, recipe, dtype: str, where: str) -> Resolved:
    from runner.models import resolve as models
    from runner.recipe.schema import ModelSpec

    try:
        model_dir = models.resolve_base(ModelSpec(base=candidate.model), source=where)
    except UserError as err:
        raise UserError([Problem(where, "", p.message) for p in err.problems]) from None
    if not any(Path(model_dir).glob("*.safetensors")) and not any(Path(model_dir).glob("*.bin")):
        raise UserError(Problem(where, "", f"{model_dir} holds no weights (*.safetensors or *.bin); give a model "
                                "directory written by save_pretrained"))
    try:
        models.load_tokenizer(Path(model_dir))
    except Exception as err:  # noqa: BLE001 - transformers raises many types for a folder without a tokenizer
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise UserError(Problem(where, "", f"{model_dir} has no usable tokenizer ({type(err).__name__}: {detail}); "
                                "give a model directory with its tokenizer files")) from None
    args = {"pretrained": str(model_dir), "dtype": dtype, "trust_remote_code": False}
    template = "tokenizer" if candidate.template == "tokenizer" else recipe.data.template
    return Resolved(candidate, args, str(model_dir), template, recipe.data.system, str(model_dir), False)
