"""The one place files are written: atomically (temp file + rename), so a crash never leaves half a file."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from runner.core.console import third_party_to
from runner.core.errors import storage_error


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> Path:
    """Write text (UTF-8) to path via a temp file in the same folder and an atomic rename."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write bytes to path via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; written files get the usual mode
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise storage_error(err, path) from None
    return path


def write_json_atomic(path: Path, data, sort_keys: bool = True) -> Path:
    """Deterministic JSON: sorted keys (or the writer's order, when that order is itself fixed), two-space
    indent, trailing newline."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n")


@contextmanager
def file_lock(path: Path):
    """Hold an exclusive fcntl lock on path (created if needed) for the with-block."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def staging_dir(target: Path, keep_existing: bool = False):
    """Stage then publish: a temp dir next to target, renamed onto target when the block succeeds and removed
    when it fails, so target is never half-written. keep_existing: a target that appeared meanwhile (another
    process published the same content-addressed folder first) is kept and ours discarded."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    except OSError as err:
        raise storage_error(err, target.parent) from None
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the published dir should read like any other
    try:
        yield tmp
        if keep_existing:
            _publish_unless_present(tmp, target)
        else:
            publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish_unless_present(tmp: Path, target: Path) -> None:
    """Rename tmp onto target unless target exists, checked by the rename itself: a check-then-rename would let a
    process that publishes between the two make our rename fail (ENOTEMPTY) although its copy is as good as ours."""
    try:
        os.rename(tmp, target)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, target: Path) -> None:
    """Rename a finished tmp dir onto target, moving an old target aside first (rename cannot overwrite a dir)."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_once(target: Path, announce: str, build: Callable[[Path], None]) -> bool:
    """Make the model folder `target` (done when it holds config.json) once: under a lock, so concurrent processes
    build it one time, by `build(staging)` into a staging folder published whole. Returns True when this call built
    it. What libraries print meanwhile goes to <target>.log beside it, not the terminal; OSError is the caller's to
    word."""
    if (target / "config.json").is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / "config.json").is_file():  # another process built it while we waited
            return False
        log = target.parent / f"{target.name}.log"
        print(f"{announce} (log: {log})", file=sys.stderr, flush=True)
        with staging_dir(target) as staging, third_party_to(log):
            build(staging)
    return True
