"""Recipe YAML -> validated, frozen Recipe.

load(name or path, overrides) reads the file safely, follows `extends` (mappings deep-merge, lists
replace, cycles rejected), applies `key=value` overrides, migrates old schema versions, validates with
the pydantic schema, runs the cross-field checks, and raises one UserError listing every problem with
its file, line and key path. Nothing here reads the environment or the clock.
"""
from __future__ import annotations

import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from runner.core import paths
from runner.recipe import templates
from runner.core.errors import Problem, UserError, did_you_mean, unknown_name
from runner.recipe.schema import SCHEMA_VERSION, Recipe
from runner.core.yamlio import dump_yaml, read_yaml

OVERRIDE = "<override>"
# Old recipe-language versions upgrade here, one step at a time: {from_version: function(dict) -> dict}.
MIGRATIONS: dict[int, typing.Callable[[dict], dict]] = {}


@dataclass(frozen=True)
class Loaded:
    """A validated recipe and where it came from."""

    recipe: Recipe
    path: Path
    chain: tuple[Path, ...]  # the recipe file and every file it extends, leaf first

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.recipe)


def fingerprint(recipe: Recipe) -> str:
    """sha256 of the canonical resolved recipe: equal recipes, equal fingerprints."""
    canonical = json.dumps(recipe.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def resolved_yaml(recipe: Recipe) -> str:
    """The resolved recipe as canonical YAML (schema order, every default written out)."""
    return dump_yaml(recipe.model_dump(mode="json", by_alias=True))


# ---------------------------------------------------------------- finding recipes


def recipe_files() -> dict[str, Path]:
    """Every runnable recipe: recipes/**/*.yaml except _base/ and resolved/, by name (file stem)."""
    found: dict[str, Path] = {}
    root = paths.recipes_dir()
    for path in sorted(root.rglob("*.yaml")):
        parts = path.relative_to(root).parts
        if parts[0] in ("_base", "resolved"):
            continue
        found.setdefault(path.stem, path)
    return found


def base_files() -> list[Path]:
    return sorted((paths.recipes_dir() / "_base").rglob("*.yaml"))


def find(name_or_path: str) -> Path:
    """A recipe by name (recipes/**/<name>.yaml) or by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        resolved = candidate if candidate.is_absolute() else Path.cwd() / candidate
        if not resolved.is_file():
            raise UserError(Problem(name_or_path, "", "file not found"))
        return resolved
    files = recipe_files()
    if name_or_path not in files:
        raise UserError(Problem("recipes/", "", unknown_name("recipe", name_or_path, files)))
    return files[name_or_path]


# ---------------------------------------------------------------- extends and merging


def _deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parents(data: dict, path: Path, where: str) -> list[Path]:
    extends = data.pop("extends", None)
    if extends is None:
        return []
    names = [extends] if isinstance(extends, str) else extends
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(Problem(where, "extends", "must be a recipe name, a relative path, or a list of them"))
    parents = []
    for name in names:
        if name.endswith((".yaml", ".yml")) or "/" in name:
            parent = (path.parent / name).resolve()
            if parent.suffix not in (".yaml", ".yml"):
                parent = parent.with_suffix(".yaml")
            if not parent.is_file():
                raise UserError(Problem(where, "extends", f"parent {name!r} not found (looked for "
                                        f"{paths.display(parent)})"))
        else:
            files = recipe_files()
            if name not in files:
                raise UserError(Problem(where, "extends", unknown_name("parent recipe", name, files)))
            parent = files[name]
        parents.append(parent)
    return parents


def _layers(path: Path, stack: tuple[Path, ...] = ()) -> list[tuple[Path, dict, dict[str, int]]]:
    """The files to merge, root ancestors first, each with its data and key lines; cycles rejected."""
    path = path.resolve()
    if path in stack:
        cycle = " -> ".join(paths.display(p) for p in (*stack, path))
        raise UserError(Problem(paths.display(stack[0]), "extends", f"cycle: {cycle}"))
    where = paths.display(path)
    data, lines = read_yaml(path, where)
    data = _check_schema_version(data, where)
    layers: list = []
    for parent in _parents(data, path, where):
        layers += _layers(parent, (*stack, path))
    return [*layers, (path, data, lines)]


# ---------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], object]:
    """'train.learning_rate=1e-4' -> (['train', 'learning_rate'], 0.0001); values parse as YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(Problem(OVERRIDE, text, "an override is key.path=value, e.g. train.learning_rate=1e-4"))
    try:  # "1e-4" stays a string here (YAML 1.1); the schema's float fields convert it
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _apply_override(data: dict, keys: list[str], value) -> dict:
    data = dict(data) if isinstance(data, dict) else {}  # a key below a scalar: the schema names the type error
    head, rest = keys[0], keys[1:]
    if isinstance(data.get(head), list) and rest and rest[0].isdigit():
        items = list(data[head])
        index = int(rest[0])
        if index >= len(items):
            raise UserError(Problem(OVERRIDE, ".".join(keys), f"index {index} is past the end ({len(items)} items)"))
        items[index] = _apply_override(items[index], rest[1:], value) if rest[1:] else value
        data[head] = items
    elif rest:
        child = data.get(head)
        data[head] = _apply_override(child if isinstance(child, dict) else {}, rest, value)
    else:
        data[head] = value
    return data


# ---------------------------------------------------------------- validation messages


def _annotation_at(loc: tuple) -> typing.Any:
    """The schema type at a pydantic error location (for listing valid keys and choices)."""
    current: typing.Any = Recipe
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) or next(
                (f for f in current.model_fields.values() if f.alias == part), None)
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) in (list, dict):
            current = typing.get_args(current)[-1]
        else:
            return None
    return _unwrap(current)


def _unwrap(annotation):
    """Strip Optional[...] and pick the model out of a union."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if models else (args[0] if len(args) == 1 else annotation)
    return annotation


def _keys_of(model) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _describe(error: dict) -> tuple[str, str]:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _annotation_at(loc[:-1])
        valid = _keys_of(parent) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        hint = did_you_mean(str(loc[-1]), valid)
        return key, f"unknown key{hint}; valid keys here: {', '.join(valid)}"
    if kind == "missing":
        return key, "required key is missing"
    if kind == "literal_error":
        allowed = [str(a) for a in typing.get_args(_annotation_at(loc)) or ()]
        value = str(error.get("input"))
        if allowed:
            return key, f"{value!r} is not allowed (allowed: {', '.join(allowed)}){did_you_mean(value, allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    if kind not in ("value_error",) and "input" in error and not isinstance(error["input"], (dict, list)):
        message += f" (got {error['input']!r})"
    return key, message


def _line_of(key: str, origins: dict[str, tuple[str, int]], default: str) -> tuple[str, int | None]:
    parts = key.split(".")
    while parts:
        found = origins.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return default, None


# ---------------------------------------------------------------- the loader


def merged_document(path: Path, overrides: list[str] = ()) -> tuple[dict, dict[str, tuple[str, int]], tuple]:
    """The merged (not yet validated) document, the origin of every key, and the file chain."""
    layers = _layers(path)
    data: dict = {}
    origins: dict[str, tuple[str, int]] = {}
    for layer_path, layer_data, lines in layers:
        data = _deep_merge(data, layer_data)
        origins.update({k: (paths.display(layer_path), line) for k, line in lines.items() if k != "extends"})
    for text in overrides:
        keys, value = parse_override(text)
        data = _apply_override(data, keys, value)
        origins[".".join(keys)] = (f"override {text!r}", None)
    chain = tuple(p for p, _, _ in reversed(layers))
    return data, origins, chain


def _check_schema_version(data: dict, where: str) -> dict:
    version = data.get("schema")
    if version is None:
        raise UserError(Problem(where, "schema", f"missing; a recipe starts with `schema: {SCHEMA_VERSION}` "
                                "(the recipe-language version)"))
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(Problem(where, "schema", f"must be an integer, got {version!r}"))
    while version < SCHEMA_VERSION and version in MIGRATIONS:
        data, version = MIGRATIONS[version](data), version + 1
    if version != SCHEMA_VERSION:
        raise UserError(Problem(where, "schema", f"recipe-language version {version} is not supported by this "
                                f"runner (it reads version {SCHEMA_VERSION}); upgrade recipe-runner or rewrite the "
                                "recipe for this version"))
    return data


def template_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """Every variable the template requires must come from each dataset's field mapping."""
    try:
        template = templates.load(recipe.data.template)
    except UserError as err:
        return [("data.template", err.problems[0].message)]
    problems = []
    for index, dataset in enumerate(recipe.data.datasets):
        provided = dataset.variables
        if "messages" in template.requires and {"instruction", "output"} <= provided:
            provided = provided | {"messages"}  # single-turn rows become a one-exchange conversation
        missing = template.requires - provided
        if missing:
            problems.append((f"data.datasets.{index}.fields",
                             f"template {template.name!r} needs {sorted(missing)} but this dataset maps only "
                             f"{sorted(provided) or 'nothing'}; add e.g. `{sorted(missing)[0]}: <column>` to fields"))
        unused = provided - template.variables - {"messages", "instruction", "input", "output"}
        if unused and "messages" not in template.requires:
            problems.append((f"data.datasets.{index}.fields", f"maps {sorted(unused)} which template "
                             f"{template.name!r} does not use (it takes {sorted(template.variables)})"))
    return problems


def load(name_or_path: str | Path, overrides: list[str] = ()) -> Loaded:
    """Load, merge, override, validate and check one recipe; raise UserError with every problem."""
    path = find(str(name_or_path))
    where = paths.display(path)
    data, origins, chain = merged_document(path, list(overrides))
    if data.get("name") is None:
        data["name"] = path.stem
    problems: list[Problem] = []
    if data["name"] != path.stem:
        file, line = _line_of("name", origins, where)
        problems.append(Problem(file, "name", f"{data['name']!r} differs from the file name {path.stem!r}; "
                                "rename one", line))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        for error in err.errors():
            key, message = _describe(error)
            file, line = _line_of(key, origins, where)
            problems.append(Problem(file, key, message, line))
        raise UserError(problems) from None
    from runner.recipe import suites  # late: suites needs the recipe schema, loading must not need suites to import

    for key, message in [*recipe.problems(), *template_problems(recipe), *suites.recipe_problems(recipe)]:
        file, line = _line_of(key, origins, where)
        problems.append(Problem(file, key, message, line))
    if problems:
        raise UserError(problems)
    return Loaded(recipe=recipe, path=path, chain=chain)


def check_fragment(path: Path) -> None:
    """Validate a base file under recipes/_base/: every key known, every value the right type.

    A base need not be a whole recipe, so only missing-key errors are forgiven."""
    where = paths.display(path)
    data, origins, _ = merged_document(path)
    data = {"name": "fragment", "version": "0.0.0"} | data
    try:
        Recipe.model_validate(data)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            if error["type"] == "missing":
                continue
            key, message = _describe(error)
            file, line = _line_of(key, origins, where)
            problems.append(Problem(file, key, message, line))
        if problems:
            raise UserError(problems) from None


def validate_all() -> list[Problem]:
    """Problems across every recipe and base file (empty when all are valid)."""
    problems: list[Problem] = []
    for path in base_files():
        try:
            check_fragment(path)
        except UserError as err:
            problems += err.problems
    for path in recipe_files().values():
        try:
            load(path)
        except UserError as err:
            problems += err.problems
    return problems

