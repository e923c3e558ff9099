"""The terminal shows the runner's own messages; third-party output goes to a log file.

Inside `third_party_to(log)`, file descriptors 1 and 2 point at the log, so everything libraries print
(Python warnings and logging, tqdm bars, C extensions writing to fd 2) lands there, while `say()` and
`result()` write to the terminal saved before the switch. With verbose, nothing is redirected.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

_terminal_err = None  # a text stream to the real stderr while third-party output is redirected
_terminal_out = None


def say(message: str) -> None:
    """A progress line from the runner (stderr, always on the terminal)."""
    stream = _terminal_err or sys.stderr
    print(message, file=stream, flush=True)


def result(text: str) -> None:
    """A result for the user (stdout, always on the terminal)."""
    stream = _terminal_out or sys.stdout
    stream.write(text)
    stream.flush()


@contextmanager
def third_party_to(log: Path | None, verbose: bool = False):
    """Redirect fds 1 and 2 (and sys.stdout/sys.stderr) to `log` (appended) for the block, unless verbose."""
    global _terminal_err, _terminal_out
    if verbose or log is None or _terminal_err is not None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    previous = sys.stdout, sys.stderr
    _terminal_out = os.fdopen(os.dup(saved[0]), "w", encoding="utf-8", errors="replace")
    _terminal_err = os.fdopen(os.dup(saved[1]), "w", encoding="utf-8", errors="replace")
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)
    sys.stdout = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace", buffering=1)
    sys.stderr = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace", buffering=1)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
            stream.close()
        sys.stdout, sys.stderr = previous
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for stream in (_terminal_out, _terminal_err):
            stream.close()
        _terminal_out = _terminal_err = None
