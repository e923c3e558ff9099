"""Eval suites: eval_suites/<name>.yaml -> validated, frozen Suite.

A suite says what to measure on a run: generation metrics on the recipe's held-out test split,
perplexity of the reference answers, SQL metrics, standard lm-eval tasks by name, and an optional
pairwise judge. Files are read with the same safe YAML loader as recipes; every problem names the
file, the key and its line, with a did-you-mean for unknown keys, metrics and lm-eval task names.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runner.core import paths
from runner.core.atomic import write_json_atomic
from runner.core.errors import Problem, UserError, did_you_mean, unknown_name
from runner.core.validation import describe, line_of
from runner.core.yamlio import read_yaml
from runner.metrics import registry as metrics
from runner.recipe import candidates
from runner.recipe.schema import SemVer

_DB_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a file name, no path: rows cannot point outside the folder

SUITE_VERSION = 1
DEFAULT_SUITE = "heldout-qa"  # used when a recipe names no eval.suite
METRICS: tuple[str, ...] = tuple(metrics.REGISTRY)
Metric = Literal[METRICS]  # the registry's names: a suite may list any registered metric


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JudgeSpec(Section):
    """A pairwise judge: a local causal LM (a model dir, .gguf, pkg:// file or cached hub id) or an
    OpenAI-compatible chat endpoint."""

    kind: Literal["local", "openai"]
    model: str = Field(min_length=1, description="local: model dir/.gguf/pkg:// ; openai: the model name")
    url: str | None = Field(None, description="openai: base URL, e.g. https://api.openai.com/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    max_items: int | None = Field(None, gt=0, description="judge at most this many items")
    max_new_tokens: int = Field(256, gt=0, description="local judge: tokens to generate per verdict")
    timeout_s: float = Field(60, gt=0, description="openai: seconds to wait for each reply")
    methods: list[Literal["pairwise", "single"]] = Field(
        default_factory=lambda: ["pairwise"], min_length=1,
        description="pairwise: A vs B in both orders; single: a 1-10 [[rating]] per answer")
    pairs: Literal["all", "reference"] = Field("all", description="pairwise: every pair of candidates, or each "
                                               "candidate against the reference")
    prompts: str = Field("judges", description="folder of the judge prompt files (pairwise.yaml, single.yaml), "
                         "relative to eval_suites/")

    @model_validator(mode="after")
    def _openai_needs_url(self):
        if self.kind == "openai" and not self.url:
            raise ValueError("judge.kind openai needs judge.url (the endpoint's base URL, e.g. "
                             "http://127.0.0.1:8000/v1)")
        return self


class SqlSpec(Section):
    database: str = Field(description="SQL dump per test row, {db} filled from the row's db column, e.g. "
                          "data/sql-demo/{db}.sql (relative to the workspace, else to the suite's own "
                          "library)")


class GateSpec(Section):
    """A review gate on one metric, judged on its 95% interval, not the point estimate (runner.decide.gate): the
    conservative reading, so a regression cannot pass on noise. min/max: the interval of the run's own value must
    lie above min (below max). max_drop: the paired interval of (run - baseline) must not reach a worsening larger
    than max_drop (for a lower-is-better metric such as perplexity a worsening is a rise)."""

    min: float | None = Field(None, description="floor: fails unless the interval's lower bound is >= min")
    max: float | None = Field(None, description="ceiling: fails unless the interval's upper bound is <= max")
    max_drop: float | None = Field(None, ge=0, description="allowed worsening against a baseline run (`recipe gate "
                                   "--baseline RUN`), or with `candidate` against the run's own fine-tuned model: "
                                   "fails when the paired interval reaches past it")
    candidate: str | None = Field(None, description="the eval candidate the gate checks instead of the fine-tuned "
                                  "model, e.g. export:gguf-q4_k_m with max_drop 0.02: what we ship is within 2 "
                                  "points of what we trained (it must be among the run's eval candidates)")

    @model_validator(mode="after")
    def _some_bound(self):
        if self.min is None and self.max is None and self.max_drop is None:
            raise ValueError("a gate needs min, max or max_drop, e.g. {min: 0.75} or {max_drop: 0.02}")
        if self.candidate is not None:
            candidates.parse(self.candidate)  # ValueError with the fix
        return self


class Suite(Section):
    suite: Literal[1] = Field(description="eval-suite language version")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: SemVer
    description: str = ""
    metrics: list[Metric] = Field(default_factory=list, description="metrics on the recipe's held-out test split")
    lm_eval_tasks: list[str] = Field(default_factory=list, description="standard lm-eval task or group names")
    lm_eval_include: list[str] = Field(default_factory=list, description="extra folders of lm-eval task YAMLs")
    judge: JudgeSpec | None = None
    sql: SqlSpec | None = None
    candidates: list[str | dict[str, str]] | None = Field(
        None, description="what answers the items (see the recipe's eval.candidates); a recipe's own list wins")
    reference: str | None = Field(None, description="the candidate the others are compared with (default finetuned)")
    gates: dict[str, GateSpec] = Field(default_factory=dict, description="review gates per metric the suite "
                                       "computes (`recipe gate`), e.g. sql_execution: {min: 0.75}")

    @field_validator("metrics", "lm_eval_tasks")
    @classmethod
    def _unique(cls, items: list) -> list:
        repeated = sorted({x for x in items if items.count(x) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return items

    @model_validator(mode="after")
    def _consistent(self):
        if any(metrics.REGISTRY[m].needs_database for m in self.metrics) and self.sql is None:
            raise ValueError(f"{', '.join(m for m in self.metrics if metrics.REGISTRY[m].needs_database)} need an "
                             "`sql:` section naming the database, e.g. "
                             "sql: {database: data/sql-demo/{db}.sql}")
        if self.candidates is not None:

            candidates.check(self.candidates, self.reference)
        elif self.reference is not None:
            raise ValueError("reference needs candidates (the list it is one of)")
        if not (self.metrics or self.lm_eval_tasks or self.judge):
            raise ValueError("the suite measures nothing: list metrics, lm_eval_tasks or a judge")
        return self

    @property
    def generation_metrics(self) -> list[str]:
        """The metrics scored on generated answers (all but perplexity)."""
        return [m for m in self.metrics if metrics.REGISTRY[m].kind == "generation"]

    @property
    def needs_generation(self) -> bool:
        """Held-out generation runs for generation metrics and for the judge (it compares answers)."""
        return bool(self.generation_metrics or self.judge)

    def include_dirs(self, root: Path | None = None) -> list[Path]:
        """The lm_eval_include folders as absolute paths: a relative one is under the workspace, else under
        `root`, the root of the layer the suite file came from (by default the file its name finds)."""
        root = root_of(self) if root is None else root
        return [paths.resolve_local(d, root) for d in self.lm_eval_include]

    def database(self, root: Path | None = None) -> str | None:
        """sql.database as an absolute pattern ({db} kept), resolved like include_dirs."""
        if self.sql is None:
            return None
        return paths.resolve_pattern(self.sql.database, root_of(self) if root is None else root)

    def database_for(self, dbs: list[tuple[int, str]], metric: str, where: str, what: str = "test row") -> str:
        """sql.database's pattern, after checking that each row's db value names a database file; dbs: (row number
        in `where`, db value)."""
        pattern = self.database()
        if pattern is None:
            raise UserError(Problem(f"eval_suites/{self.name}.yaml", "sql.database", f"{metric} executes SQL on a "
                                    "database; add sql: {database: data/my-sql/{db}.sql} to the suite"))
        for number, db in dbs:
            if "{db}" in pattern and not _DB_NAME.match(db):
                raise UserError(Problem(where, "", f"{what} {number} has db {db!r}; {metric} needs a db column "
                                        "naming a database file, e.g. shop", number))
            file = Path(pattern.replace("{db}", db))
            if not file.is_file():
                raise UserError(Problem(f"eval_suites/{self.name}.yaml", "sql.database", f"{file} does not exist "
                                        f"({what} {number} of {where}, db {db!r})"))
        return pattern


# ---------------------------------------------------------------- lm-eval's task index


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


@lru_cache(maxsize=1)
def builtin_task_names() -> frozenset[str]:
    """Names of lm-eval's own tasks, groups and tags; indexing takes ~10 s, so it is cached on disk."""
    import lm_eval

    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    key = hashlib.sha256(f"{_lm_eval_version()}\0{tasks_dir}".encode()).hexdigest()[:16]
    cache = paths.cache_dir() / "lm-eval" / f"task-names-{key}.json"
    try:
        return frozenset(json.loads(cache.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    print("indexing lm-eval's tasks (once; about 10 s)", file=sys.stderr, flush=True)
    from lm_eval.tasks import TaskManager

    names = sorted(TaskManager().all_tasks)
    try:
        write_json_atomic(cache, names)
    except UserError:  # an unwritable cache only costs time
        pass
    return frozenset(names)


@lru_cache(maxsize=16)
def include_task_names(dirs: tuple[str, ...]) -> frozenset[str]:
    """Task names defined by YAMLs in extra include folders (indexed without lm-eval's own tasks: fast)."""
    if not dirs:
        return frozenset()
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager(include_path=list(dirs), include_defaults=False).all_tasks)


def task_names(include: list[Path] = ()) -> frozenset[str]:
    """Every lm-eval task name a suite may use: lm-eval's own plus those in its include folders."""
    return builtin_task_names() | include_task_names(tuple(str(d) for d in include))


# ---------------------------------------------------------------- loading


def available() -> list[str]:
    """Suite names in the workspace's eval_suites/ and the library's."""
    return sorted(paths.glob_layers("eval_suites", "*.yaml"))


def path_of(name: str) -> Path | None:
    """eval_suites/<name>.yaml: the workspace's own, else the shipped library's; None when neither has it."""
    return paths.find_in_layers("eval_suites", f"{name}.yaml")


def root_of(suite: Suite) -> Path | None:
    """The layer root (workspace or library) of the file the suite's name finds: relative paths written in
    the suite also resolve against it."""
    path = path_of(suite.name)
    return paths.layer_of(path) if path is not None else None


def _describe(error: dict) -> tuple[str, str]:
    return describe(error, Suite, choices_name="metric" if tuple(error["loc"])[:1] == ("metrics",) else "")


def _line(key: str, lines: dict[str, int]) -> int | None:
    return line_of(key, lines)


def _task_problems(suite: Suite, where: str, lines: dict[str, int], root: Path | None = None) -> list[Problem]:
    if not suite.lm_eval_tasks:
        return []
    problems = []
    missing = [d for d in suite.lm_eval_include if not paths.resolve_local(d, root).is_dir()]
    for index, folder in enumerate(suite.lm_eval_include):
        if folder in missing:
            problems.append(Problem(where, f"lm_eval_include.{index}", f"folder {folder!r} does not exist",
                                    _line("lm_eval_include", lines)))
    if problems:
        return problems
    known = task_names(suite.include_dirs(root))
    for index, name in enumerate(suite.lm_eval_tasks):
        if name not in known:
            problems.append(Problem(where, f"lm_eval_tasks.{index}", f"unknown lm-eval task {name!r}"
                                    f"{did_you_mean(name, known)}; `lm-eval ls tasks` lists the "
                                    f"{len(known):,} known names", _line("lm_eval_tasks", lines)))
    return problems


def _gate_problems(suite: Suite, where: str, lines: dict[str, int]) -> list[Problem]:
    """A gate must name a metric the suite computes: one of its metrics, or <lm-eval task>/<metric>."""
    problems = []
    for name in suite.gates:
        task = name.split("/", 1)[0]
        if name in suite.metrics or ("/" in name and task in suite.lm_eval_tasks):
            continue
        computed = list(suite.metrics) + [f"{t}/<metric>" for t in suite.lm_eval_tasks]
        problems.append(Problem(where, f"gates.{name}", f"the suite does not compute {name!r}"
                                f"{did_you_mean(name, suite.metrics)}; it computes: {', '.join(computed) or 'nothing'}",
                                _line(f"gates.{name}", lines) or _line("gates", lines)))
    return problems


def load_file(path: Path) -> Suite:
    """Read and validate one suite file; a UserError lists every problem with its key and line."""
    where = paths.display(path)
    data, lines = read_yaml(path, where)
    data.setdefault("name", path.stem)
    if "suite" not in data:
        raise UserError(Problem(where, "suite", f"missing; a suite starts with `suite: {SUITE_VERSION}` "
                                "(the eval-suite language version)"))
    if type(data["suite"]) is not int or data["suite"] != SUITE_VERSION:
        raise UserError(Problem(where, "suite", f"eval-suite language version {data['suite']!r} is not supported "
                                f"(this runner reads version {SUITE_VERSION})", _line("suite", lines)))
    problems = []
    if data["name"] != path.stem:
        problems.append(Problem(where, "name", f"{data['name']!r} differs from the file name {path.stem!r}; "
                                "rename one", _line("name", lines)))
    try:
        suite = Suite.model_validate(data)
    except ValidationError as err:
        for error in err.errors():
            key, message = _describe(error)
            problems.append(Problem(where, key, message, _line(key, lines)))
        raise UserError(problems) from None
    problems += _task_problems(suite, where, lines, paths.layer_of(path))
    problems += _gate_problems(suite, where, lines)
    if problems:
        raise UserError(problems)
    return suite


def load(name: str, key: str = "", where: str | None = None) -> Suite:
    """The suite eval_suites/<name>.yaml; an unknown name is reported at where/key (e.g. a recipe's eval.suite)."""
    path = path_of(name)
    if path is None or not path.is_file():
        raise UserError(Problem(where or paths.display(paths.eval_suites_dir()), key,
                                unknown_name("eval suite", name, available())))
    return load_file(path)


def for_recipe(recipe, where: str = "recipe") -> Suite:
    """The suite a recipe names in eval.suite (heldout-qa when it names none)."""
    return load(recipe.eval.suite or DEFAULT_SUITE, key="eval.suite", where=where)


def recipe_problems(recipe) -> list[tuple[str, str]]:
    """Cross-check for recipe validation: eval.suite must name an existing suite, and one with sql.database when
    grpo is rewarded by a metric that executes SQL; (key, message) pairs."""
    name = recipe.eval.suite
    if name is not None and path_of(name) is None:
        return [("eval.suite", unknown_name("eval suite", name, available()))]
    executes = metrics.executing_sql(recipe.method.rewards)
    if recipe.method.rl == "grpo" and executes:
        suite = for_recipe(recipe)
        if suite.sql is None:
            return [("method.rewards", f"{executes} runs each answer on the eval suite's database, and "
                     f"eval_suites/{suite.name}.yaml has no sql.database; set eval.suite to a suite that has one "
                     "(e.g. sql) or reward with another metric")]
    return []


def validate_all() -> list[Problem]:
    """Problems across every suite in the workspace's eval_suites/ (empty when all are valid)."""
    problems: list[Problem] = []
    for path in sorted(paths.eval_suites_dir().glob("*.yaml")):
        try:
            load_file(path)
        except UserError as err:
            problems += err.problems
    return problems
