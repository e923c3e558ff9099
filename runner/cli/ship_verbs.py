"""Verbs that ship a run's model: export (merged, GGUF with llama.cpp), publish (the adapter or merged model with its
model card, to the hub)."""
from __future__ import annotations

from runner.cli import followups, targets
from runner.core import console, paths


def cmd_publish(args) -> int:
    from runner.ship import publish

    current = targets.recipe_file_now(args)  # a bad repo id or a missing token first, before the run is looked at
    if current is not None:
        publish.repo_id_for(current, args.repo_id)
    token = None if args.dry_run else publish.hub_token()
    run = targets.run_of(args)
    current = current or targets.current_recipe(args, run)
    repo_id = publish.repo_id_for(current, args.repo_id)  # the current publish section is the one used
    recipe = publish.recipe_for_publish(run, current)
    log = run.log_path("publish")
    merged = publish.publishes_merged(run, recipe, args.merged)
    if publish.needs_merge(run, merged):
        why = "" if args.merged or recipe.publish.merge_adapter else (
            f" (its base, {run.manifest().base_model}, is not a hub model, so the adapter alone would load nowhere "
            "else; --no-merged with publish.base_model=ORG/NAME publishes the adapter)")
        console.say(f"merging the adapter into its base first{why}")
        with console.third_party_to(run.log_path("merge"), args.verbose):
            followups.merge_with_card(run)
    with console.third_party_to(log, args.verbose):  # huggingface_hub's and transformers' messages go to the log
        plan = publish.plan(run, recipe, repo_id, merged, args.private)
    if args.dry_run:
        print(publish.describe(plan, token_set=publish.has_token()), end="")
        return 0
    console.say(f"publishing the {plan.what} in {paths.display(plan.folder)} to {plan.endpoint}/{repo_id} "
                f"({len(plan.files)} files)")
    with console.third_party_to(log, args.verbose):
        url = publish.publish(plan, token)
    print(f"published {paths.display(plan.folder)} to {plan.endpoint}/{repo_id}\n  commit: {url}")
    return 0


def cmd_export(args) -> int:
    from runner.runs.export_info import artifact_name
    from runner.ship import export

    run, _ = targets.finished_run(args, "export")
    log = run.log_path("export")
    if export.needs_merge(run):
        console.say("export: merging the adapter into its base first (GGUF and merged are made from merged/)")
        with console.third_party_to(run.log_path("merge"), args.verbose):
            followups.merge_with_card(run)
    if args.format == "merged":
        info, names = export.export_merged(run), ["merged"]
    else:
        quants = list(dict.fromkeys(args.quant or ["q8_0"]))
        with console.third_party_to(log, args.verbose):
            info = export.export_gguf(run, quants, log)
        names = [artifact_name("gguf", q) for q in quants]
    with console.third_party_to(log, args.verbose):
        followups.after_export(run)
    print(f"exported {len(names)} artifact{'s' * (len(names) > 1)} of {paths.display(run.path)}:\n"
          f"{export.describe(info, names)}\n  record: {paths.display(run.export_info_path)}")
    return 0


def register(verb, with_recipe) -> None:
    from runner.runs.export_info import FORMATS, GGUF_QUANTS

    sub = targets.with_run(verb("export", cmd_export, "export a run's model as it will be deployed: merged, or GGUF "
                                "files through llama.cpp's converter and quantizer (-> run/export/, export.json)"))
    sub.add_argument("--format", choices=FORMATS, default="gguf", help="merged (run/merged/) or gguf (default)")
    sub.add_argument("--quant", nargs="+", choices=GGUF_QUANTS, default=None, metavar="QUANT",
                     help=f"GGUF weight types, one file each: {', '.join(GGUF_QUANTS)} (default q8_0)")
    sub = targets.with_run(verb("publish", cmd_publish, "upload a run's LoRA adapter (or merged model) with its model "
                                "card to the Hugging Face hub; the token comes from HF_TOKEN"))
    sub.add_argument("--repo-id", default=None, metavar="NAMESPACE/NAME",
                     help="the hub repo (default: publish.hub_model_id)")
    sub.add_argument("--merged", action="store_true", default=None,
                     help="the merged model in merged/, merged first when missing (the default when "
                     "publish.merge_adapter is set or the adapter's base is not a hub model)")
    sub.add_argument("--no-merged", dest="merged", action="store_false",
                     help="the adapter in model/ (its base must be a hub model, or named by publish.base_model)")
    sub.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                     "visibility)")
    sub.add_argument("--dry-run", action="store_true", help="list every file and its size and print the model card; "
                     "upload nothing (needs no token)")
