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
    engine: str = "transformers"  # what computes its answers: transformers | llama.cpp
    size_bytes: int | None = None  # its weights on disk (an adapter: with its base's)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def weights_size(*places: str | Path) -> int | None:
    """Bytes of the weight files in these folders (or of these files); None when there are none."""
    total = 0
    for place in map(Path, places):
        files = [place] if place.is_file() else place.glob("*") if place.is_dir() else []
        total += sum(f.stat().st_size for f in files if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)
                     and f.name != "training_args.bin")
    return total or None


def resolve(candidate: Candidate, run, manifest, recipe, dtype: str) -> Resolved:
    """Model arguments and prompt format of one candidate; a UserError (exit 2) when its model cannot be had."""
    from runner.evaluate import harness

    where = f"eval.candidates: {candidate.label}"
    template, system = recipe.data.template, recipe.data.system
    if candidate.kind in DEFAULT:
        args = harness.model_args(run, manifest, candidate.kind, recipe, dtype)
        source = manifest.base_model_dir if candidate.kind == BASE else str(run.file(manifest.model_dir))
        size = weights_size(*{args["pretrained"], args.get("peft", args["pretrained"])})
        return Resolved(candidate, args, manifest.base_model_dir, template, system, source, True, size_bytes=size)
    if candidate.kind == MERGED:
        return _merged(candidate, run, manifest, recipe, dtype, where)
    if candidate.kind == "export":
        return _export(candidate, run, manifest, recipe, where)
    if candidate.kind == "endpoint":
        return _endpoint(candidate, manifest, where)
    if candidate.kind == "fewshot":
        args = harness.model_args(run, manifest, BASE, recipe, dtype)
        return Resolved(candidate, args, manifest.base_model_dir, template, system, manifest.base_model_dir, False,
                        size_bytes=weights_size(manifest.base_model_dir))
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
    return Resolved(candidate, args, str(folder), recipe.data.template, recipe.data.system, str(folder), True,
                    size_bytes=weights_size(folder))


def _export(candidate: Candidate, run, manifest, recipe, where: str) -> Resolved:
    """An exported artifact (export/export.json), on this run's own prompts; never exported here."""
    from runner.runs.export_info import exported_gguf

    file, _ = exported_gguf(run, candidate.artifact, where)
    args = {"gguf": str(file), "engine": "llama.cpp", "context_length": recipe.model.context_length}
    return Resolved(candidate, args, manifest.base_model_dir, recipe.data.template, recipe.data.system, str(file),
                    True, engine="llama.cpp", size_bytes=file.stat().st_size)


SERVER_SIDE = "server-side template"


def _endpoint(candidate: Candidate, manifest, where: str) -> Resolved:
    """A model behind an OpenAI-compatible API: reachable, serving that model, its key (if named) set."""
    import os

    import httpx

    headers = {}
    if candidate.api_key_env:
        key = os.environ.get(candidate.api_key_env)
        if not key:
            raise UserError(Problem(where, "api_key_env", f"the environment variable {candidate.api_key_env} is not "
                                    "set; export it with the API's key (the recipe names the variable, never the key)"))
        headers["Authorization"] = f"Bearer {key}"
    try:
        listed = httpx.get(f"{candidate.url}/models", headers=headers, timeout=10)
        listed.raise_for_status()
        models = [m.get("id") for m in listed.json().get("data", [])]
    except (httpx.HTTPError, ValueError, AttributeError) as err:
        raise UserError(Problem(where, "", f"no OpenAI-compatible API answers at {candidate.url} ({type(err).__name__}"
                                f": {str(err)[:200]}); start the server (e.g. `recipe serve NAME --port 8000`) or "
                                "fix the URL")) from None
    if models and candidate.model not in models:
        raise UserError(Problem(where, "model", f"{candidate.url} serves {', '.join(map(str, models))}, not "
                                f"{candidate.model!r}; name one of those"))
    args = {"model": candidate.model, "base_url": f"{candidate.url}/chat/completions", "tokenizer_backend": None,
            "tokenized_requests": False, "max_retries": 1, "timeout": 300}
    return Resolved(candidate, args, manifest.base_model_dir, SERVER_SIDE, None, candidate.url, False,
                    engine="endpoint")


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
    size = weights_size(*{args["pretrained"], args.get("peft", args["pretrained"])})
    data = other_recipe.data
    # its own task folder: its template, stop strings and tokenizer (perplexity token counts) may differ
    return Resolved(candidate, args, manifest.base_model_dir, data.template, data.system, str(other.path), False,
                    size_bytes=size)


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
    return Resolved(candidate, args, str(model_dir), template, recipe.data.system, str(model_dir), False,
                    size_bytes=weights_size(model_dir))
