"""`recipe publish`: upload a run's LoRA adapter (model/) or merged model (merged/) with its model card to the hub.

What goes up is decided here, listed by --dry-run and committed as exactly that list: HfApi.create_repo, then one
create_commit with a CommitOperationAdd per file (what upload_folder does with a folder's listing; here the listing
is ours, so the upload is the dry run's list and no staging copy is made). The list is the folder's files minus
checkpoints (checkpoint-*/), tensorboard's runs/, logs (*.log), the trainer's pickled arguments (training_args.bin)
and hidden files; README.md is the card as built now (and is written to the folder too).

What someone else downloads must load for them: an adapter's adapter_config.json names its base by hub id, never
this machine's path. An adapter trained on a base that is not itself a hub model (a local folder, a GGUF file's
dequantized weights) is published merged by default, since no hub model holds the weights it was trained on; an
adapter published anyway needs `publish.base_model`, the hub model it came from, and its card says what differs.

The token comes from HF_TOKEN (or huggingface_hub's stored login) and goes only to HfApi, never into a file, a log or
a message: failures are reworded with it blanked out.
"""
from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path

from runner.core import paths
from runner.core.atomic import write_text_atomic
from runner.core.errors import Problem, UserError
from runner.recipe.schema import Recipe
from runner.runs.rundir import RunDir
from runner.ship import card

SKIP_DIRS = ("checkpoint-*", "runs", ".*")
SKIP_FILES = ("*.log", "training_args.bin", ".*")
ADAPTER_CONFIG = "adapter_config.json"
BLANK = "[HF_TOKEN]"
INVALID_CARD = "Invalid metadata in README.md"  # huggingface_hub's ValueError when the hub refuses the card


@dataclass(frozen=True)
class Upload:
    path_in_repo: str
    size: int
    file: Path | None = None  # uploaded as it is
    data: bytes | None = None  # built here (the card, a rewritten adapter_config.json)


@dataclass(frozen=True)
class Plan:
    run: RunDir
    repo_id: str
    endpoint: str
    private: bool
    merged: bool
    what: str  # LoRA adapter | merged model | full model
    folder: Path
    card: str
    files: list[Upload]


def recipe_for_publish(run: RunDir, current: Recipe) -> Recipe:
    """The run's own recipe with the current file's `publish` section (set after training, like eval's)."""
    return run.recipe().model_copy(update={"publish": current.publish})


def repo_id_for(recipe: Recipe, given: str | None) -> str:
    """--repo-id, else publish.hub_model_id; checked with huggingface_hub's own validator."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = given or recipe.publish.hub_model_id
    if not repo_id:
        raise UserError(Problem(f"recipe {recipe.name}", "publish.hub_model_id", "no repo to publish to; give "
                                "--repo-id NAMESPACE/NAME or set publish.hub_model_id in the recipe"))
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(Problem("--repo-id" if given else f"recipe {recipe.name}", "" if given else
                                "publish.hub_model_id", f"{repo_id!r} is not a valid hub repo id: {err} Write "
                                "NAMESPACE/NAME, e.g. my-org/tiny-cpu-lora")) from None
    return repo_id


def endpoint() -> str:
    """The hub huggingface_hub talks to: HF_ENDPOINT, else its default (https://huggingface.co)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def has_token() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())


def hub_token() -> str:
    from huggingface_hub import get_token

    token = get_token()  # HF_TOKEN, else the login stored by `hf auth login`
    if not token:
        raise UserError(Problem("HF_TOKEN", "", f"not set: publishing needs a hub token with write access; create "
                                f"one at {endpoint()}/settings/tokens and `export HF_TOKEN=...` (or run "
                                "`hf auth login`); --dry-run shows what would be uploaded without one"))
    return token


def publishes_merged(run: RunDir, recipe: Recipe, asked: bool | None = None) -> bool:
    """Whether the merged model goes up rather than the adapter: --merged / --no-merged when given; else when
    publish.merge_adapter says so, or when the adapter's base is not a hub model (nobody else could load it)."""
    manifest = run.trained()
    if asked is not None:
        if asked and not manifest.adapter:
            raise UserError(Problem(paths.display(run.path), "--merged", "this run is a full fine-tune: model/ is "
                                    "already the whole model and there is no adapter to merge; publish without "
                                    "--merged"))
        return asked
    return manifest.adapter and (recipe.publish.merge_adapter or not card.base_is_hub(manifest))


def needs_merge(run: RunDir, merged: bool) -> bool:
    """Whether the merged model is to be published and merged/ does not hold it yet (the verb merges first)."""
    return merged and not (run.merged_path / "config.json").is_file()


def plan(run: RunDir, recipe: Recipe, repo_id: str, merged: bool, private: bool = False) -> Plan:
    """What publishing would upload: the folder, the card, every file with its size. Writes nothing."""
    manifest = run.trained()
    where = paths.display(run.path)
    folder = run.merged_path if merged else run.file(manifest.model_dir)
    if merged and not (folder / "config.json").is_file():
        raise UserError(Problem(where, "merged", f"no merged model in {paths.display(folder)}; run `recipe merge "
                                f"{manifest.recipe} --run {manifest.run_id}` first, or publish the adapter with "
                                "--no-merged"))
    subject = card.subject(run, recipe, merged, repo_id, folder)
    base = card.base_model_id(manifest, recipe)
    if subject.adapter and base is None:
        raise UserError(Problem(where, "publish.base_model", f"the adapter's base, {manifest.base_model}, is not a "
                                "hub model, so the adapter alone would load nowhere else; publish the merged model "
                                "(without --no-merged), or name the hub model the base came from: "
                                "publish.base_model=ORG/NAME"))
    text = str(card.build(subject))
    what = "LoRA adapter" if subject.adapter else "merged model" if merged else "full model"
    return Plan(run, repo_id, endpoint(), private, merged, what, folder, text,
                _files(folder, text, base if subject.adapter else None))


def _skipped(relative: Path) -> bool:
    return (any(fnmatch.fnmatch(part, p) for part in relative.parts[:-1] for p in SKIP_DIRS)
            or any(fnmatch.fnmatch(relative.name, p) for p in SKIP_FILES))


def _files(folder: Path, card_text: str, adapter_base: str | None) -> list[Upload]:
    uploads = [Upload(card.CARD, len(card_text.encode()), data=card_text.encode())]
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        name = relative.as_posix()
        if not path.is_file() or _skipped(relative) or name == card.CARD:
            continue
        if name == ADAPTER_CONFIG and adapter_base:
            config = json.loads(path.read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = adapter_base  # not this machine's path to the base model
            data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
            uploads.append(Upload(name, len(data), data=data))
        else:
            uploads.append(Upload(name, path.stat().st_size, file=path))
    return sorted(uploads, key=lambda u: u.path_in_repo)


def describe(p: Plan, token_set: bool) -> str:
    """--dry-run: where it would go, every file and its size, then the card."""
    lines = [f"dry run: would publish the {p.what} in {paths.display(p.folder)} to {p.endpoint}/{p.repo_id} "
             f"({'private' if p.private else 'public'} if created), {len(p.files)} files, "
             f"{sum(u.size for u in p.files):,} bytes:"]
    width = max(len(f"{u.size:,}") for u in p.files)
    lines += [f"  {u.size:>{width},}  {u.path_in_repo}" + ("  (built for the upload)" if u.data is not None else "")
              for u in p.files]
    lines.append("token: HF_TOKEN is set" if token_set else "token: not set; publishing will need HF_TOKEN")
    lines += ["", f"--- {card.CARD} ---", p.card.rstrip("\n"), f"--- end of {card.CARD} ---"]
    return "\n".join(lines) + "\n"


def publish(p: Plan, token: str) -> str:
    """Write the card into the folder, create the repo (if new) and commit the plan's files; returns the commit URL."""
    import httpx
    from huggingface_hub import CommitOperationAdd, HfApi

    write_text_atomic(p.folder / card.CARD, p.card)
    api = HfApi(endpoint=p.endpoint, token=token, library_name="recipe-runner")
    step = "create_repo"
    try:
        api.create_repo(p.repo_id, private=p.private, exist_ok=True)
        step = "create_commit"
        operations = [CommitOperationAdd(u.path_in_repo, u.data if u.data is not None else str(u.file))
                      for u in p.files]
        m = p.run.manifest()
        message = f"recipe-runner: {m.recipe} {m.recipe_version}, run {m.run_id}, {p.what}"
        info = api.create_commit(p.repo_id, operations, commit_message=message)
    except (OSError, httpx.HTTPError) as err:  # HfHubHTTPError and OfflineModeIsEnabled are OSErrors
        raise _failure(p, step, err, token) from None
    except ValueError as err:  # the hub checks README.md's metadata before the commit (/api/validate-yaml)
        if not str(err).startswith(INVALID_CARD):
            raise
        raise _failure(p, step, err, token) from None
    return info.commit_url


def _failure(p: Plan, step: str, err: Exception, token: str) -> UserError:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, OfflineModeIsEnabled):
        reason = ("HF_HUB_OFFLINE is set, so huggingface_hub sends no request; publish with it unset "
                  "(`HF_HUB_OFFLINE= recipe publish ...`)")
    elif status == 401:
        reason = "the hub refused the token (401); HF_TOKEN must be a valid token with write access"
    elif status == 403:
        reason = (f"the token may not create or write {p.repo_id!r} (403); use a token with write access to that "
                  "namespace")
    elif isinstance(err, ValueError):
        problems = "; ".join(line.lstrip("- ") for line in str(err).splitlines()[1:] if line.strip())
        reason = (f"the hub refused the model card's metadata ({problems or 'no reason given'}); check "
                  "publish.license and publish.base_model in the recipe")
    elif isinstance(err, HfHubHTTPError):
        reason = f"the hub answered {status}: {err.server_message or str(err).splitlines()[0]}"
    else:
        reason = (f"cannot reach {p.endpoint} ({type(err).__name__}: {err}); check the network, a proxy, or "
                  "HF_ENDPOINT")
    done = "nothing was uploaded" if step == "create_repo" else "no file was committed"
    message = (f"publishing {paths.display(p.folder)} to {p.endpoint}/{p.repo_id} failed at {step}: {reason}; "
               f"{done}")
    return UserError(Problem(paths.display(p.run.path), "publish", message.replace(token, BLANK)))
