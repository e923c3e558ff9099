"""Typed, versioned files that one stage writes and later stages (and people) read.

A contract is a pydantic model with a `version` field. Writer and reader share the model, so a key
that no writer writes cannot be read. Reading migrates older versions one step at a time
(`MIGRATIONS`), and a newer version, a malformed file or a wrong type is a UserError naming the
file and the key, never a traceback.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from runner.core import paths
from runner.core.atomic import write_json_atomic
from runner.core.errors import Problem, UserError
from runner.core.validation import describe


class Record(BaseModel):
    """A section of a contract: unknown keys are errors, so a reader can trust every key it finds."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Contract(Record):
    """A whole file. Subclasses set VERSION (and their `version` field's Literal) and MIGRATIONS."""

    VERSION: ClassVar[int]
    # {from_version: function(dict) -> dict of from_version + 1}; version 0 means "written before versions".
    MIGRATIONS: ClassVar[dict[int, Callable[[dict], dict]]] = {}

    @classmethod
    def from_data(cls, data, where: str) -> Self:
        """Validate a parsed JSON document, migrating an older version first."""
        if not isinstance(data, dict):
            raise UserError(Problem(where, "", f"not a JSON object (a {type(data).__name__})"))
        version = data.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise UserError(Problem(where, "version", f"must be an integer, got {version!r}"))
        while version < cls.VERSION and version in cls.MIGRATIONS:
            data, version = cls.MIGRATIONS[version](dict(data)), version + 1
            data["version"] = version
        if version != cls.VERSION:
            newer = version > cls.VERSION
            raise UserError(Problem(where, "version", f"{cls.__name__} version {version} "
                                    f"{'is newer than' if newer else 'cannot be read by'} this recipe-runner (it reads "
                                    f"version {cls.VERSION}); "
                                    f"{'upgrade recipe-runner' if newer else 'redo the stage that wrote it'}"))
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise UserError([Problem(where, key, message) for key, message in
                             (describe(e, cls) for e in err.errors())]) from None

    @classmethod
    def read(cls, path: Path) -> Self:
        where = paths.display(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(Problem(where, "", "file not found")) from None
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(Problem(where, "", f"cannot read it: {getattr(err, 'strerror', None) or err}")) from None
        try:
            data = json.loads(text)
        except ValueError as err:
            raise UserError(Problem(where, "", f"not valid JSON ({err})")) from None
        return cls.from_data(data, where)

    def write(self, path: Path) -> Path:
        return write_json_atomic(path, self.to_json(), sort_keys=False)  # fields in schema order

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)
