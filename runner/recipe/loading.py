"""Recipe YAML -> validated, frozen Recipe.

load(name or path, overrides) reads the file safely, follows `extends` (mappings deep-merge, lists
replace, cycles rejected), applies `key=value` overrides, migrates old schema versions, validates with
the pydantic schema, runs the cross-field checks, and raises one UserError listing every problem with
its file, line and key path. Nothing here reads the environment or the clock.
"""
from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from runner.core import paths
from runner.core.errors import Problem, UserError, unknown_name
from runner.core.validation import describe, line_of
from runner.core.yamlio import dump_yaml, read_yaml
from runner.recipe import templates
from runner.recipe.schema import SCHEMA_VERSION, Recipe

OVERRIDE = "<override>"
# Old recipe-language versions upgrade here, one step at a time: {from_version: function(dict) -> dict}.
MIGRATIONS: dict[int, typing.Callable[[dict], dict]] = {}


@dataclass(frozen=True)
class Loaded:
    """A validated recipe and where it came from."""

    recipe: Recipe
    path: Path
    chain: tuple[Path, ...]  # the recipe file and every file it extends, leaf first
    # key path -> root of the layer (workspace or library) whose file set it; None for an override
    roots: dict[str, Path | None] = field(default_factory=dict, compare=False, repr=False)
    # the fingerprint of the recipe as written, kept when a run decides machine-dependent values (precision: auto)
    written_fingerprint: str | None = field(default=None, compare=False, repr=False)

    @property
    def fingerprint(self) -> str:
        return self.written_fingerprint or fingerprint(self.recipe)

    def root_of(self, key: str) -> Path | None:
        """The layer root a relative path at `key` (e.g. data.datasets.0.source) also resolves against, after
        the workspace: the root of the layer whose file wrote it; None for an override or a file elsewhere."""
        parts = key.split(".")
        while parts:
            if ".".join(parts) in self.roots:
                return self.roots[".".join(parts)]
            parts.pop()
        return None


def fingerprint(recipe: Recipe) -> str:
    """sha256 of the canonical resolved recipe: equal recipes, equal fingerprints."""
    canonical = json.dumps(recipe.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def resolved_yaml(recipe: Recipe) -> str:
    """The resolved recipe as canonical YAML (schema order, every default written out)."""
    return dump_yaml(recipe.model_dump(mode="json", by_alias=True))


# ---------------------------------------------------------------- finding recipes


def _layer_recipes(root: Path) -> dict[str, Path]:
    """The runnable recipes of one layer: <root>/recipes/**/*.yaml except _base/ and resolved/, by name (file
    stem). Two files with one name are an error naming both: a name must say which file runs."""
    found: dict[str, Path] = {}
    folder = root / "recipes"
    for path in sorted(folder.rglob("*.yaml")):
        parts = path.relative_to(folder).parts
        if parts[0] in ("_base", "resolved"):
            continue
        if path.stem in found:
            raise UserError(Problem(paths.display(path), "name", f"two recipes are named {path.stem!r}: "
                                    f"{paths.display(found[path.stem])} and {paths.display(path)}; a recipe's name is "
                                    "its file name and must be unique: rename one"))
        found[path.stem] = path
    return found


def recipe_layers() -> list[tuple[Path, dict[str, Path]]]:
    """(layer root, {name: path}) for the workspace, then the shipped library (when it is another folder)."""
    return [(root, _layer_recipes(root)) for root in paths.layers()]


def recipe_files(library: bool = True) -> dict[str, Path]:
    """Every runnable recipe by name: the workspace's, then the library's (a workspace recipe wins a name).
    library=False: the workspace's own only (what `validate` and `lock` cover)."""
    found: dict[str, Path] = {}
    for index, (_, files) in enumerate(recipe_layers()):
        if index and not library:
            break
        for name, path in files.items():
            found.setdefault(name, path)
    return found


def base_files() -> list[Path]:
    """The workspace's own bases, recipes/_base/**/*.yaml."""
    return sorted((paths.recipes_dir() / "_base").rglob("*.yaml"))


def recipe_name(name_or_path: str) -> str:
    """The recipe name a verb's argument means: a path's file stem (the schema makes the two equal), or the name."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        return candidate.stem
    return name_or_path


def find(name_or_path: str) -> Path:
    """A recipe by name (recipes/**/<name>.yaml in the workspace, then the library) or by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():  # a folder of that name is no recipe
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


def _parent_file(name: str, path: Path, where: str) -> Path:
    """`extends: <relative path>`: relative to the extending file's folder; a path that does not start with
    ./ or ../ (such as _base/method/lora.yaml) is then looked for under the workspace's recipes/ and the
    library's recipes/, so a recipe kept anywhere can extend the shipped bases."""
    relative = Path(name)
    if relative.suffix not in (".yaml", ".yml"):
        relative = relative.with_suffix(".yaml")
    candidates = [(path.parent / relative).resolve()]
    if not relative.is_absolute() and relative.parts[0] not in (".", ".."):
        candidates += [(root / "recipes" / relative).resolve() for root in paths.layers()]
    candidates = list(dict.fromkeys(candidates))
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise UserError(Problem(where, "extends", f"parent {name!r} not found (looked for "
                                f"{', '.join(paths.display(c) for c in candidates)})"))
    return found


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
            parent = _parent_file(name, path, where)
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


def _describe(error: dict) -> tuple[str, str]:
    return describe(error, Recipe)


def _line_of(key: str, origins: dict[str, tuple[str, int]], default: str) -> tuple[str, int | None]:
    return line_of(key, origins) or (default, None)


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
    except UserError as err:  # a broken template file: name that file, not only the recipe's key
        return [("data.template", p.message if p.file == "data.template" else f"in {p}") for p in err.problems]
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
    from runner.recipe import parents, suites  # late: both need the recipe schema, loading must not need them to import

    for key, message in [*recipe.problems(), *template_problems(recipe), *suites.recipe_problems(recipe),
                         *parents.problems(recipe.name, recipe.model.base)]:
        file, line = _line_of(key, origins, where)
        problems.append(Problem(file, key, message, line))
    if problems:
        raise UserError(problems)
    files = {paths.display(p): paths.layer_of(p) for p in chain}
    roots = {key: files.get(file) for key, (file, _) in origins.items()}  # None: an override
    return Loaded(recipe=recipe, path=path, chain=chain, roots=roots)


def with_overrides(recipe: Recipe, overrides: list[str], where: str) -> Recipe:
    """`recipe` with key=value overrides applied and validated again (a finished run's recipe, as a verb that acts
    on the run sees it); `where` names the recipe in messages."""
    if not overrides:
        return recipe
    data = recipe.model_dump(mode="json", by_alias=True)
    for text in overrides:
        keys, value = parse_override(text)
        data = _apply_override(data, keys, value)
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise UserError([Problem(where, *_describe(e)) for e in err.errors()]) from None


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
    """Problems across every recipe and base file of the workspace (empty when all are valid)."""
    problems: list[Problem] = []
    for path in base_files():
        try:
            check_fragment(path)
        except UserError as err:
            problems += err.problems
    for path in recipe_files(library=False).values():
        try:
            load(path)
        except UserError as err:
            problems += err.problems
    return problems

