"""User-facing errors: every problem names its file, key path and a fix; the CLI prints them and exits 2."""
from __future__ import annotations

import difflib
import errno
import os
from dataclasses import dataclass

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device", as a trainer's log prints it
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input: where (file, key path, line) and what."""

    file: str
    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class UserError(Exception):
    """Bad input from the user (exit code 2). Carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, (Problem, str)):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class RunFailed(Exception):
    """A stage that started but failed (a training process that died): non-zero exit, not a user error."""

    exit_code = 1


def storage_error(err: OSError, path=None) -> UserError:
    """A file the runner had to write could not be: a full disk, a read-only or unwritable folder."""
    where = path or err.filename2 or err.filename or "?"
    return UserError(Problem(str(where), "", f"cannot write: {err.strerror}; free space there, or set "
                             "RECIPE_RUNS_DIR (runs) and RECIPE_CACHE_DIR (data and model cache) to a writable "
                             "disk with room"))


def did_you_mean(word: str, choices) -> str:
    """' (did you mean x?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_name(kind: str, name: str, choices) -> str:
    """Message for an unknown registry name: lists what exists and suggests the closest."""
    choices = sorted(choices)
    return f"unknown {kind} {name!r}{did_you_mean(name, choices)}; available: {', '.join(choices) or 'none'}"
