"""llama.cpp, installed on first use: llama-cpp-python with its OpenAI-compatible server (built from its PyPI source
distribution, which compiles llama.cpp) and that same distribution's `convert_hf_to_gguf.py` with the `gguf-py` it
was written against.

PyPI has no llama-cpp-python wheel, so the first `recipe export --format gguf` (or `make llama-cpp`) builds it:
about 1 min to download 77 MB and 3 min to compile on 2 cores, with a C++ compiler. pip keeps the download and the
built wheel in its cache, so a second virtual environment on the same machine installs in seconds. The converter
files are unpacked into the virtual environment (share/recipe-runner/llama.cpp-<version>/), so they go with the
`llama_cpp` module they match.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from runner.core import paths
from runner.core.atomic import file_lock, staging_dir
from runner.core.console import say
from runner.core.errors import Problem, UserError

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
# From the source distribution's vendor/llama.cpp/: the converter, its model classes and its gguf-py
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")
BUILD_NOTE = "about 1 min to download and 3 min to compile on 2 cores; once per virtual environment"
SERVER_MODULES = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")  # its [server] extra
CONSTRAINTS = paths.PACKAGE_DIR.parent / "constraints.txt"  # the checkout's pins (absent in an installed package)


def converter_dir() -> Path:
    """Where the converter files of this virtual environment's llama.cpp live."""
    return Path(sys.prefix) / "share" / "recipe-runner" / f"llama.cpp-{VERSION}"


def installed_version() -> str | None:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def ready() -> bool:
    """llama-cpp-python at VERSION with its server's packages, and its converter, are all here."""
    import importlib.util

    return (installed_version() == VERSION and all(importlib.util.find_spec(m) for m in SERVER_MODULES)
            and (converter_dir() / CONVERTER_FILES[0]).is_file())


def _pip(args: list[str], log: Path, what: str) -> None:
    """Run pip, its output appended to `log`, with a line every 30 s so a long build shows it is alive."""
    done = threading.Event()
    started = time.monotonic()

    def tick():
        while not done.wait(30):
            say(f"  {what}: {time.monotonic() - started:.0f} s")

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        with log.open("a", encoding="utf-8") as out:
            out.write(f"\n$ pip {' '.join(args)}\n")
            out.flush()
            code = subprocess.call([sys.executable, "-m", "pip", *args], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    finally:
        done.set()
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise UserError(Problem(paths.display(log), "", f"{what} failed (pip exit {code}: {tail[0][:200]}); the "
                                "build needs a C++ compiler and network access to PyPI (Debian: `apt-get install "
                                f"build-essential`), then run `make llama-cpp` again. The whole log: {log}"))


def _unpack_converter(sdist: Path, target: Path) -> None:
    prefix = None
    with tarfile.open(sdist) as archive, staging_dir(target) as staging:
        for member in archive.getmembers():
            parts = Path(member.name).parts
            prefix = prefix or parts[0]
            if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or parts[3] not in CONVERTER_FILES:
                continue
            if not (member.isfile() or member.isdir()):
                continue  # no links out of the folder
            member.name = str(Path(*parts[3:]))
            archive.extract(member, staging, filter="data")


def ensure(log: Path | None = None) -> Path:
    """Install llama.cpp (see the module's docstring) unless it is here; the converter folder."""
    if ready():
        return converter_dir()
    log = log or paths.cache_dir() / "logs" / "llama-cpp-install.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    target = converter_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".llama.cpp-{VERSION}.lock"):
        if ready():  # another process installed it while this one waited
            return target
        pins = ["-c", str(CONSTRAINTS)] if CONSTRAINTS.is_file() else []
        if installed_version() != VERSION:
            if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
                raise UserError(Problem(PACKAGE, "", "building llama.cpp needs a C++ compiler and none is on PATH; "
                                        "install one (Debian: `apt-get install build-essential`), then run the "
                                        "command again"))
            say(f"installing llama.cpp: building {PACKAGE} {VERSION} from source ({BUILD_NOTE}); log: {log}")
            _pip(["install", "--disable-pip-version-check", *pins, f"{PACKAGE}[server]=={VERSION}"], log,
                 f"building {PACKAGE}")
        else:  # installed without its server's packages (pip install llama-cpp-python)
            _pip(["install", "--disable-pip-version-check", *pins, f"{PACKAGE}[server]=={VERSION}"], log,
                 f"installing {PACKAGE}'s server packages")
        say(f"installing llama.cpp's GGUF converter into {target}")
        with tempfile.TemporaryDirectory() as tmp:
            _pip(["download", "--disable-pip-version-check", "--no-deps", "--no-binary", ":all:", "-d", tmp,
                  f"{PACKAGE}=={VERSION}"], log, f"downloading {PACKAGE}'s source")
            sdist = next(Path(tmp).glob("*.tar.gz"))
            _unpack_converter(sdist, target)
        importlib.invalidate_caches()
    return target


if __name__ == "__main__":  # make llama-cpp
    try:
        print(f"llama.cpp ready: {PACKAGE} {VERSION}, converter in {ensure()}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
