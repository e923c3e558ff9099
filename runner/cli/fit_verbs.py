"""The `fit` verb: will the recipe fit in its hardware profile's memory, how long will it take, what will it cost."""
from __future__ import annotations

import argparse
import json

from runner.core import console, paths
from runner.recipe import loading

EXAMPLES = """examples:
  recipe fit gemma7b-dolly-chatml
  recipe fit codellama7b-text-to-sql hardware.gpu_model=a10g-24g     # does it fit a 24 GB card? what would?
  recipe fit mistral7b-text-to-sql --json | jq .memory.peak_gib
  recipe fit gemma7b-dolly-chatml --tokens 3000000 --mfu 0.35        # hub data: say how many tokens per epoch
"""


def cmd_fit(args) -> int:
    from runner.core.errors import UserError
    from runner.estimate import fit, text

    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise UserError(f"--mfu {args.mfu}: a model FLOPs utilisation is a fraction of the peak, above 0 and at most 1")
    if args.tokens is not None and args.tokens <= 0:
        raise UserError(f"--tokens {args.tokens}: give the training tokens per epoch, a positive count")
    loaded = loading.load(args.recipe, args.overrides)
    log = paths.cache_dir() / "logs" / "fit.log"
    with console.third_party_to(log, args.verbose):  # transformers' and peft's messages go to the log
        report = fit.fit(loaded, args.overrides, suggest=not args.no_suggestions, mfu=args.mfu, tokens=args.tokens)
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=2, sort_keys=True))
    else:
        print(text.render(report), end="")
    return 0


def plan_section(loaded, overrides: list[str], verbose: bool = False) -> str:
    """`recipe plan`'s memory section: the estimate, the verdict and, when it does not fit, the changes that would
    (no time and cost); a plan is still written when the estimate cannot be made (say, no config.json offline)."""
    from runner.core.errors import UserError
    from runner.estimate import fit, text

    try:
        with console.third_party_to(paths.cache_dir() / "logs" / "fit.log", verbose):
            report = fit.fit(loaded, overrides, timing=False)
    except UserError as err:
        return f"memory fit: not estimated: {err}\n"
    except Exception as err:  # noqa: BLE001 - the estimate is advice: the plan is written whatever happens to it
        return f"memory fit: not estimated ({type(err).__name__}: {err}); `recipe fit -v` shows more\n"
    return text.render(report, head=False)


def register(verb, with_recipe) -> None:
    fit = with_recipe(verb("fit", cmd_fit, "estimate peak memory per GPU, whether it fits, what would make it fit, "
                           "and time and cost, for the recipe on its hardware profile (runs nothing)"))
    fit.epilog, fit.formatter_class = EXAMPLES, argparse.RawDescriptionHelpFormatter
    fit.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")
    fit.add_argument("--tokens", type=int, default=None, help="training tokens per epoch, when the data is a hub "
                     "dataset that is not prepared here")
    fit.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation to assume (default: per GPU "
                     "model, see runner/recipe/gpus.py)")
    fit.add_argument("--no-suggestions", action="store_true", help="skip re-estimating changes that would make it fit")
