"""The `recipe` command's parser and entry point. Verbs live in small modules beside this one, one per stage
(recipe_verbs, train_verbs, eval_verbs, decide_verbs, ...), each registering its own subcommands; user errors exit
2, failed stages 1."""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import textwrap

from runner.cli import (
    chat_verbs,
    decide_verbs,
    eval_verbs,
    fit_verbs,
    recipe_verbs,
    serve_verbs,
    ship_verbs,
    sweep_verbs,
    targets,
    train_verbs,
)
from runner.core.errors import STORAGE_ERRNOS, RunFailed, UserError, storage_error

VERB_MODULES = (recipe_verbs, train_verbs, eval_verbs, chat_verbs, ship_verbs, serve_verbs, fit_verbs, decide_verbs,
                sweep_verbs)

EPILOG = """examples:
  recipe init my-repo                   # a starter workspace: recipes/my-model.yaml, data, README, .gitignore
  recipe list
  recipe validate                       # every recipe and base under recipes/
  recipe show tiny-cpu train.learning_rate=1e-3 hardware.gpus=2
  recipe render tiny-cpu --n 2          # trained text shown between [[ and ]]
  recipe lock --check                   # CI: resolved snapshots are current
  recipe diff codellama7b-text-to-sql mistral7b-text-to-sql
  recipe fit gemma7b-dolly-chatml        # peak memory per GPU, does it fit, what would; time and cost
  recipe plan gemma7b-dolly-chatml --target slurm
  recipe train tiny-cpu train.max_steps=10
  recipe train tiny-cpu --resume        # continue the latest run from its newest checkpoint
  recipe eval tiny-cpu                  # base vs fine-tuned on the recipe's eval suite, then report.md
  recipe generate smollm2-135m-sql-chatml --prompt "How many customers live in Paris?"
  recipe publish tiny-cpu --repo-id me/tiny-cpu-lora --dry-run   # files, sizes and the model card
  recipe chat tiny-cpu                  # a web page: base and fine-tuned answers side by side
  recipe train tiny-cpu --seeds 1,2,3   # one run per seed, one seed group
  recipe compare tiny-cpu@RUN_ID tiny-cpu   # side by side: recipe diff, losses, paired intervals -> compare.md
  recipe gate tiny-cpu --baseline RUN_ID    # the suite's gates on 95% intervals: exit 0 pass, 1 fail
"""


# The verbs in the order of the data flow, as `recipe --help` lists them.
GROUPS = (
    ("recipes", ("init", "list", "validate", "show", "schema", "lock", "diff", "render")),
    ("data", ("prepare",)),
    ("plan and train", ("tiny-model", "fit", "plan", "train", "merge")),
    ("evaluate", ("eval", "generate", "report")),
    ("decide", ("compare", "gate", "sweep")),
    ("ship and serve", ("export", "publish", "serve", "chat")),
)


class _Parser(argparse.ArgumentParser):
    """The top-level parser: its help lists the verbs grouped by stage."""

    def format_help(self) -> str:
        subparsers = next(a for a in self._actions if isinstance(a, argparse._SubParsersAction))
        helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
        listed = [name for _, names in GROUPS for name in names]
        missing = sorted(set(subparsers.choices) - set(listed))
        width = max(map(len, subparsers.choices)) + 2
        columns = max(shutil.get_terminal_size().columns, 80) - 2
        lines = [self.format_usage().rstrip(), "", self.description, ""]
        for title, names in (*GROUPS, *((("other", tuple(missing)),) if missing else ())):
            lines.append(f"{title}:")
            for name in names:
                lines += textwrap.wrap(helps[name].replace("%%", "%"), columns, initial_indent=f"  {name:{width}}",
                                       subsequent_indent=" " * (width + 2))
            lines.append("")
        lines += ["options:", "  -h, --help  show this message; `recipe VERB --help` shows one verb's", "",
                  self.epilog]
        return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recipe", description="Declarative fine-tuning recipes.", epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=argparse.ArgumentParser)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="show the libraries' own messages on the terminal too (they always go to the log)")

    def verb(name, func, help_text):
        # argparse %-formats help strings ("95%" would end `--help` in a TypeError); descriptions it prints as is
        sub = verbs.add_parser(name, help=help_text.replace("%", "%%"), description=help_text, parents=[common])
        sub.set_defaults(func=func)
        return sub

    for module in VERB_MODULES:
        module.register(verb, targets.with_recipe)
    return parser


def _report(err: UserError) -> int:
    print(f"error: {err}", file=sys.stderr) if len(err.problems) == 1 else print(
        "error: " + f"{len(err.problems)} problems:\n  " + "\n  ".join(str(p) for p in err.problems),
        file=sys.stderr)
    return err.exit_code


OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


def _overrides_after_recipe(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Move `key=value` overrides written after an option (`plan X --target slurm hardware.nodes=2`) to just after
    the recipe, where argparse takes them; an option's own value (`--prompt a=b`) stays where it is."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if not argv or argv[0] not in subparsers.choices:
        return argv
    sub = subparsers.choices[argv[0]]
    if not any(a.dest == "overrides" for a in sub._actions):
        return argv
    takes_value = {s for a in sub._actions if a.option_strings and a.nargs != 0 and a.nargs != "?"
                   for s in a.option_strings}
    rest, overrides, recipe_at, skip = [], [], None, False
    for token in argv[1:]:
        if skip:
            rest.append(token)
            skip = False
        elif token in takes_value:
            rest.append(token)
            skip = True
        elif recipe_at is not None and OVERRIDE.match(token):
            overrides.append(token)
        else:
            if recipe_at is None and not token.startswith("-"):
                recipe_at = len(rest)
            rest.append(token)
    if recipe_at is None:
        return argv
    return [argv[0], *rest[:recipe_at + 1], *overrides, *rest[recipe_at + 1:]]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_overrides_after_recipe(parser, argv))
    try:
        return args.func(args)
    except UserError as err:
        return _report(err)
    except OSError as err:  # a write deep in a stage (a copy, a log) on a full or read-only disk
        if err.errno not in STORAGE_ERRNOS:
            raise
        return _report(storage_error(err))
    except RunFailed as err:
        print(f"failed: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
