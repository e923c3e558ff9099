"""The one place files are written: atomically (temp file + rename), so a crash never leaves half a file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

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


def write_json_atomic(path: Path, data) -> Path:
    """Deterministic JSON: sorted keys, two-space indent, trailing newline."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
