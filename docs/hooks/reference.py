"""MkDocs hook: the reference pages, generated from the code at build time and never committed.

`on_files` adds pages that exist only in the build (mkdocs File.generated):
  reference/recipe-schema.md   runner.recipe.schema.Recipe: every key, its type, default and description
  reference/eval-suite.md      runner.recipe.suites.Suite, the eval-suite language
  reference/sweep-file.md      runner.recipe.sweep_spec.SweepSpec, the sweep-file language, and the shipped sweeps
  reference/cli.md             runner.cli.build_parser(): every verb, option and example
  reference/run-directory.md   runner/runs/rundir.py's layout and every Contract / Record subclass in runner/
                               (found by reading the source, so a new contract shows up without editing this)
  reference/make.md            `make help`
  reference/templates.md       templates/*.jinja: header and source
  explanation/benchmarks.md    bench/results.json: figures, goals, dates, machine
`on_page_markdown` fills `<!-- generated: layers -->` in a hand-written page with the layering of
.importlinter. The hand-written pages live in docs/; see docs/contributing.md.
"""
from __future__ import annotations

import argparse
import ast
import configparser
import importlib
import json
import os
import subprocess
from pathlib import Path

import models_md as md
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
PAGES = {}  # src_uri -> function returning Markdown


def page(src_uri: str):
    def register(func):
        PAGES[src_uri] = func
        return func
    return register


GENERATED_NOTE = ("<!-- generated at build time by docs/hooks/reference.py from {source}; edit the code, "
                  "not this page -->\n\n")


# ---------------------------------------------------------------- recipes and suites


@page("reference/recipe-schema.md")
def recipe_schema() -> str:
    from runner.recipe import schema

    recipe = schema.Recipe
    top = []
    for name, field in recipe.model_fields.items():
        key = field.alias or name
        top.append(f"| [`{key}`](#{key.replace('_', '-')}) | {md.cell(field.description or '')} |"
                   if md.submodels(field.annotation) else f"| `{key}` | {md.cell(field.description or '')} |")
    sections = []
    for name, field in recipe.model_fields.items():
        for sub in md.submodels(field.annotation):
            key = field.alias or name
            sections.append(f"## {key}\n\n{md.cell(field.description or '')}. {md.cell(md.doc(sub))}\n\n"
                            f"{md.table(sub, key + '.')}\n")
    plain = {name: f for name, f in recipe.model_fields.items() if not md.submodels(f.annotation)}
    plain_table = ["| key | type | default | description |", "|---|---|---|---|"]
    plain_table += [f"| {md.code(f.alias or n)} | {md.cell(md.type_name(f.annotation))} | {md.default_text(f)} | "
                    f"{md.cell(f.description or '')} |" for n, f in plain.items()]
    return (GENERATED_NOTE.format(source="runner.recipe.schema.Recipe")
            + "# Recipe schema\n\n"
            f"Recipe language version {schema.SCHEMA_VERSION}. {md.cell(md.doc(recipe))} Every key is checked: an "
            "unknown key is an error that names the closest valid one, and every problem is reported at once "
            "(exit code 2). `recipe schema` prints the same schema as JSON Schema, and `recipe lock` keeps "
            "`recipes/recipe.schema.json` current for editors (`# yaml-language-server: "
            "$schema=recipe.schema.json`). Overrides on the command line use the same dotted keys: "
            "`recipe show tiny-cpu train.learning_rate=1e-3 data.datasets.0.weight=2`.\n\n"
            "## Top level\n\n| section | what it holds |\n|---|---|\n" + "\n".join(top) + "\n\n"
            + "\n".join(plain_table) + "\n\n" + "\n".join(sections))


@page("reference/eval-suite.md")
def suite_schema() -> str:
    from runner.metrics import registry
    from runner.recipe import suites

    metrics = "\n".join(f"| `{name}` | {m.kind} | {'higher' if m.higher_is_better else 'lower'} | "
                        f"{'yes (`sql:`)' if m.needs_database else ''} | "
                        f"{md.cell(md.doc(m.score)) if m.score else 'lm-eval loglikelihood'} |"
                        for name, m in registry.REGISTRY.items())
    shipped = "\n".join(f"- `{name}`" for name in sorted(p.stem for p in (ROOT / "eval_suites").glob("*.yaml")))
    return (GENERATED_NOTE.format(source="runner.recipe.suites.Suite and runner.metrics.registry")
            + "# Eval-suite schema\n\n"
            f"An eval suite (`eval_suites/<name>.yaml`, language version {suites.SUITE_VERSION}) says what `recipe "
            "eval` measures. A recipe names it with `eval.suite` (default "
            f"`{suites.DEFAULT_SUITE}`). Suites are validated like recipes: unknown keys, unknown metrics and "
            "gates on metrics the suite does not compute are errors.\n\n"
            f"Shipped suites:\n\n{shipped}\n\n## Keys\n\n{md.table(suites.Suite)}\n\n"
            "## Metrics a suite may list\n\nFrom the metric registry (`runner/metrics/registry.py`; adding one is "
            "one `register(Metric(...))`, see [Add a metric](../how-to/add-a-metric.md)).\n\n"
            "| metric | kind | better | needs a database | scored by |\n|---|---|---|---|---|\n" + metrics + "\n")


@page("reference/sweep-file.md")
def sweep_file() -> str:
    from runner.recipe import sweep_spec

    shipped = "\n".join(f"- `sweeps/{p.name}`: {md.cell(sweep_spec.load(p).description)}"
                         for p in sorted((ROOT / "sweeps").glob("*.yaml")))
    return (GENERATED_NOTE.format(source="runner.recipe.sweep_spec.SweepSpec")
            + "# Sweep-file schema\n\n"
            f"A sweep file (`sweeps/<name>.yaml`, language version {sweep_spec.SWEEP_VERSION}) writes a sweep down "
            "to be reviewed like a recipe and run again the same way: `recipe sweep <name>` (or `recipe sweep "
            "sweeps/<name>.yaml`). Options given on the command line win over the file's; `--grid` adds axes. The "
            "same sweep typed out on the command line uses the same sweep folder, so its runs are shared. Unknown "
            "keys are errors naming the file and line (exit 2).\n\n"
            "```yaml\n" + (ROOT / "sweeps" / "sql-lr.yaml").read_text(encoding="utf-8") + "```\n\n"
            f"Shipped sweeps:\n\n{shipped}\n\n## Keys\n\n{md.table(sweep_spec.SweepSpec)}\n\n"
            "What `recipe sweep` does with a sweep is in "
            "[Evaluate and decide](../tutorials/evaluate-and-decide.md#sweeps-several-settings-decided-with-the-"
            "noise-in-view).\n")


# ---------------------------------------------------------------- the CLI


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _option_row(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(action.option_strings)
        if action.nargs != 0:
            names += f" {action.metavar or action.dest.upper()}"
    else:
        names = action.metavar or action.dest
        names = names if isinstance(names, str) else " ".join(names)
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS, [], ()) else md.code(default)
    return f"| {md.code(names)} | {shown} | {md.cell((action.help or '').replace('%%', '%'))} |"


@page("reference/cli.md")
def cli() -> str:
    from runner.cli import app

    os.environ["COLUMNS"] = "100"  # argparse wraps help at the terminal's width: make it fixed
    parser = app.build_parser()
    verbs = _subparsers(parser).choices
    listed = [name for _, names in app.GROUPS for name in names]
    order = listed + sorted(set(verbs) - set(listed))
    out = [GENERATED_NOTE.format(source="runner.cli.build_parser()"), "# The `recipe` command\n",
           "`recipe` is the console script installed into `.venv/bin/`; `python -m runner` is the same. "
           "Every verb has `--help` with examples. User errors (a bad recipe, an unknown run) exit 2, a failed "
           "stage exits 1. A run is named `RECIPE` (its latest run), `RECIPE@RUN`, a run id, or a run folder; "
           "`--run RUN` is kept as an alias.\n", "```text", parser.format_help().rstrip(), "```\n"]
    for title, names in app.GROUPS:
        out.append(f"## {title.capitalize()}\n")
        for name in names:
            out.append(_verb(name, verbs[name]))
    extra = [name for name in order if name not in listed]
    if extra:
        out.append("## Other verbs\n")
        out += [_verb(name, verbs[name]) for name in extra]
    return "\n".join(out)


def _verb(name: str, sub: argparse.ArgumentParser) -> str:
    usage = sub.format_usage().replace("usage: ", "").strip()
    options = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
    rows = "\n".join(_option_row(a) for a in options)
    text = [f"### recipe {name}\n", md.cell(sub.description or ""), "", "```text", usage, "```", "",
            "| argument | default | what it does |", "|---|---|---|", rows, ""]
    if sub.epilog:
        text += ["Examples:", "", "```text", sub.epilog.strip(), "```", ""]
    return "\n".join(text)


# ---------------------------------------------------------------- the run directory and its contracts


def _contract_classes() -> list[type]:
    """Every Contract and Record subclass defined in runner/, found by reading the source (no list to keep)."""
    from runner.core.contracts import Contract, Record

    found, names = [], {"Contract", "Record"}
    modules = []
    for path in sorted((ROOT / "runner").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
        if any(isinstance(b, ast.Name) and b.id in names | {c.name for c in classes} for c in classes
               for b in c.bases):
            modules.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    for module_name in modules:
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, Record) and value not in (Contract, Record)
                    and value.__module__ == module_name and value not in found):
                found.append(value)
    return found


@page("reference/run-directory.md")
def run_directory() -> str:
    from runner.core.contracts import Contract
    from runner.runs import rundir

    classes = _contract_classes()
    contracts = [c for c in classes if issubclass(c, Contract)]
    constants = {name: value for name, value in vars(rundir).items()
                 if name.isupper() and isinstance(value, str) and not name.startswith("_")}
    files = "\n".join(f"| `{value}` | `rundir.{name}` |" for name, value in constants.items())
    out = [GENERATED_NOTE.format(source="runner/runs/rundir.py and the Contract / Record classes in runner/"),
           "# The run directory\n",
           "Every run is a folder `runs/<recipe>/<run-id>/` (the workspace's `runs/`, or `RECIPE_RUNS_DIR`); "
           "`runs/<recipe>/latest` points at the newest. Each stage writes its own files atomically and later "
           "stages read them, never the raw recipe YAML. The files that one stage writes and another reads are "
           "*contracts*: versioned pydantic models shared by the writer and every reader (`runner/core/"
           "contracts.py`). A file of an older version is migrated when read; a newer one is an error that says "
           "to upgrade.\n",
           "## Layout\n", "From `runner/runs/rundir.py`:\n", "```text", (rundir.__doc__ or "").strip(), "```\n",
           "| name | constant |", "|---|---|", files, "",
           "## Contracts (whole files)\n"]
    for cls in contracts:
        out.append(_model_section(cls, level="###"))
    out.append("## Records (sections and rows)\n")
    out += [_model_section(cls, level="###") for cls in classes if cls not in contracts]
    return "\n".join(out)


def _model_section(cls, level: str) -> str:
    version = getattr(cls, "VERSION", None)
    head = f"{level} {cls.__name__}\n\n`{cls.__module__}.{cls.__name__}`" + (
        f", version {version}" if version is not None else "") + ". " + md.cell(md.doc(cls))
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        lines.append(f"| {md.code(field.alias or name)} | {md.cell(md.type_name(field.annotation))} | "
                     f"{md.default_text(field)} | {md.cell(field.description or '')} |")
    return head + "\n\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------- make, templates, benchmarks


@page("reference/make.md")
def make_targets() -> str:
    result = subprocess.run(["make", "--no-print-directory", "-s", "help"], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    rows = []
    for line in result.stdout.splitlines():
        parts = line.strip().split(None, 2)
        if len(parts) >= 2 and parts[0] == "make":
            rows.append(f"| `make {parts[1]}` | {md.cell(parts[2] if len(parts) > 2 else '')} |")
    return (GENERATED_NOTE.format(source="`make help`") + "# Make targets\n\n"
            "The Makefile is the user interface: `make` alone lists the targets. Recipe targets take "
            "`recipe=NAME`, `run=RUN` (a run of it; default its latest), `args=\"key=value ... --option ...\"` and, "
            "where it applies, `target=local|accelerate|torchrun|slurm`; for example "
            "`make recipe=tiny-cpu args=\"train.max_steps=10\" train`. Every target that needs the virtualenv "
            "creates it first (`make setup`).\n\n| target | what it does |\n|---|---|\n" + "\n".join(rows) + "\n")


@page("reference/templates.md")
def templates_page() -> str:
    from runner.recipe import templates

    out = [GENERATED_NOTE.format(source="templates/*.jinja"), "# Prompt templates\n",
           "One Jinja file per format in `templates/` (a workspace's own `templates/` first). A template opens with "
           "a header naming its variables; the trained part is written inside `{% filter labeled %}...{% "
           "endfilter %}` and carries the EOS token. Besides these files, `template: tokenizer` uses the base "
           "model's own chat template. See [Add a template](../how-to/add-a-template.md).\n",
           "| template | description | requires | optional | stops at |", "|---|---|---|---|---|"]
    sources = []
    for path in sorted((ROOT / "templates").glob("*.jinja")):
        t = templates.load(path.stem)
        out.append(f"| `{t.name}` | {md.cell(t.description)} | {', '.join(f'`{v}`' for v in sorted(t.requires))} | "
                   f"{', '.join(f'`{v}`' for v in sorted(t.optional))} | "
                   f"{', '.join(md.code(repr(s)) for s in t.stop)} |")
        sources += [f"## {t.name}\n", f"`templates/{path.name}`\n", "```jinja", path.read_text().rstrip(), "```\n"]
    return "\n".join(out) + "\n\n" + "\n".join(sources)


@page("explanation/benchmarks.md")
def benchmarks() -> str:
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    goals = "\n".join(f"| `{name}` | {md.code(g['value'])} | {md.code(g['goal'])} | "
                      f"{'met' if g['met'] else 'not met'} |" for name, g in sorted(results["goals"].items()))
    phases = []
    for name in results.get("figures_run", []):
        detail = results["details"].get(name, {})
        date = detail.get("date", results["date"]) if isinstance(detail, dict) else results["date"]
        load = detail.get("load_avg_1min_at_start", "") if isinstance(detail, dict) else ""
        other = detail.get("other_processes_cores", "") if isinstance(detail, dict) else ""
        phases.append(f"| `{name}` | {date[:10]} | {md.code(load) if load != '' else ''} | "
                      f"{md.code(other) if other != '' else ''} |")
    machine = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in sorted(machine.get("packages", {}).items()))
    figures = "\n".join(f"| `{k}` | {md.cell(_short(v))} |" for k, v in sorted(results["figures"].items()))
    return (GENERATED_NOTE.format(source="bench/results.json") + "# What is measured where\n\n"
            "`make bench` (after `make demo`, about 7 minutes) runs `bench/run.py`, prints a table and writes "
            "`bench/results.json`. Each figure is measured side by side in one run on this project's 2-core CPU "
            "machine; nothing in the test suite asserts on time. `bench/README.md` explains how each figure is "
            "measured and what moved it. Wall-clock figures on a shared machine move with whatever else runs, so "
            "every phase also records the load around it (`other_processes_cores`: cores the rest of the machine "
            "used meanwhile).\n\n"
            f"Results file dated **{results['date'][:10]}** ({'quick' if results.get('quick') else 'full'} run, "
            f"{results.get('duration_s', '?')} s); phases re-measured later carry their own date below.\n\n"
            "## Goals\n\n| figure | value | goal | |\n|---|---|---|---|\n" + goals + "\n\n"
            "## Phases: when each was measured\n\n| phase | date | 1-min load at start | other processes (cores) |\n"
            "|---|---|---|---|\n" + "\n".join(phases) + "\n\n"
            f"## Machine\n\n{machine.get('cpu_count')} CPUs, {machine.get('memory_gb')} GB, "
            f"{md.cell(machine.get('platform', ''))}, Python {machine.get('python')}, git commit "
            f"`{str(machine.get('git_commit', ''))[:12]}`. Packages: {md.cell(packages)}.\n\n"
            "## Every figure\n\n| figure | value |\n|---|---|\n" + figures + "\n\n"
            "Where else numbers live: the demo's stage times and accuracy ([the demo](demo.md)), "
            "`recipe fit` against measured memory ([estimates and intervals](estimates.md)), and the "
            "training noise between seeds ([evaluate and decide](../tutorials/evaluate-and-decide.md)).\n")


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return f"`{text}`" if len(text) <= 160 else f"`{text[:157]}...`"


# ---------------------------------------------------------------- the layering, from .importlinter


def layers_block() -> str:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    layers = [line.strip() for line in parser["importlinter:contract:layers"]["layers"].splitlines() if line.strip()]
    width = max(len(line) for line in layers)
    lines = ["```text", "imports only downward".center(width + 8).rstrip()]
    for index, line in enumerate(layers):
        packages = [p.strip().removeprefix("runner.") for p in line.split(":")]
        lines.append(("  " + "  :  ".join(packages).center(width + 4)).rstrip())
        if index < len(layers) - 1:
            lines.append(("  " + "|".center(width + 4)).rstrip())
            lines.append(("  " + "v".center(width + 4)).rstrip())
    lines.append("```")
    return ("\n".join(lines) + "\n\nRead top to bottom: each package imports only the packages below it; packages "
            "on one line are siblings (they may import each other, never in a cycle). This drawing is generated "
            "from `.importlinter`, the contract file `lint-imports` checks in `make test`.\n")


MARKERS = {"<!-- generated: layers -->": layers_block}


# ---------------------------------------------------------------- mkdocs events


def on_files(files, config):
    for src_uri, build in PAGES.items():
        files.append(File.generated(config, src_uri, content=build()))
    return files


def on_page_markdown(markdown, page, config, files):
    for marker, build in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, build())
    return markdown
