"""What the verbs do once a stage has returned, for a later stage: a stage never calls a later one (runner.train and
runner.evaluate never import runner.ship), so `recipe train` and `recipe eval` call these after theirs.

  after_train(run)   the model card (model/README.md); then, with publish.merge_adapter, the merged model (merged/
                     and its card)
  warm_up()          imports what after_train uses, for `recipe train` to do while the trainer starts up
  after_eval(run)    the model cards (model/, merged/) again, with eval/summary.json's results as their model-index
  merge_with_card    run/merged/ with its card (`recipe merge`, and after_train)
  after_export(run)  the model cards again, listing export/export.json's artifacts (`recipe export`)

A caller of runner.train.launch.train or runner.evaluate.run_suite.evaluate that wants what the verbs give (the
tests' shared trained run does) calls these after it.
"""
from __future__ import annotations

from runner.runs.manifest import Status
from runner.runs.rundir import RunDir


def after_train(run: RunDir) -> RunDir:
    """A trained run's model card (a note, never a failure, if it cannot be written), then its merged model when the
    recipe sets publish.merge_adapter. A job submitted with --detach is not trained yet: nothing. Returns run."""
    from runner.ship import card

    manifest = run.manifest()
    if manifest.status is not Status.TRAINED:
        return run
    card.refresh(run)
    if manifest.adapter and run.recipe().publish.merge_adapter:
        merge_with_card(run)
    return run


def warm_up() -> None:
    """Import what writes the model card (matplotlib for its plots, huggingface_hub's ModelCard, the prompt
    templates: most of a second) and warm matplotlib's fonts while the trainer starts, rather than after it ends.
    Never fails: an import that fails here fails again in after_train, which says so."""
    try:
        from huggingface_hub import EvalResult, ModelCard, ModelCardData  # noqa: F401 - card.py imports them lazily

        from runner.evaluate import generate  # noqa: F401 - the card's example prompt
        from runner.report import plots
        from runner.ship import card  # noqa: F401

        plots.warm()
    except Exception:  # noqa: BLE001 - only a head start
        pass


def merge_with_card(run: RunDir):
    """run/merged/ with its model card (merged/README.md, published with it); the merged folder."""
    from runner.models.merge import merge
    from runner.ship import card

    return merge(run, also=lambda folder: card.try_write(run, merged=True, folder=folder))


def after_export(run: RunDir) -> None:
    """The model cards list the exported artifacts (export/export.json)."""
    from runner.ship import card

    card.refresh(run)


def after_eval(run: RunDir) -> None:
    """The model cards take the run's eval results (eval/summary.json) as their model-index."""
    from runner.ship import card

    card.refresh(run)
