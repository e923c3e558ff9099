"""What every benchmark shares: paths, sizes, the phase context, and running and timing subprocesses.

Every measurement runs in a subprocess started by `timed`; the benchmark process only starts, polls and reads
them. Workers (code that must run in a fresh interpreter) are started as `python bench/run.py --worker NAME`.
"""
from __future__ import annotations

import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin" if (ROOT / ".venv" / "bin" / "python").exists() else Path(sys.executable).parent
PYTHON = str(VENV_BIN / "python")
RECIPE = str(VENV_BIN / "recipe")
ENTRY = ROOT / "bench" / "run.py"  # started with --worker for the code that runs in a subprocess
DEMO_RECIPE = "smollm2-135m-sql-chatml"
SIZES = {  # quick: toy sizes for the test; full: the real figures
    "quick": {"train_overrides": ["train.max_steps=1"], "order": "AB", "prep_rows": 200, "prep_order": "AB",
              "eval_items": 4, "eval_order": [1, 8], "packing_seeds": 1,
              "packing_rows": 300, "packing_standin": str(ROOT / "models" / "tiny-llama"), "eval_demo_items": 0,
              "overhead_warmup": False, "prep_tokenize": False,
              # when no finished demo run exists, the demo stages run in the temporary folder, shortened
              "demo_train_overrides": ["train.max_steps=1", "train.micro_batch_size=1", "data.split.val=0",
                                       "data.datasets.0.weight=0.1"],
              "demo_eval_overrides": ["eval.max_items=2", "eval.max_new_tokens=16", "eval.compare_base=false"]},
    "full": {"train_overrides": [], "order": "ABBA", "prep_rows": 15_000, "prep_order": "ABBA",
             "eval_items": 16, "eval_order": [1, 8, 8, 1], "packing_seeds": 5,
             "packing_rows": 4000, "packing_standin": DEMO_RECIPE, "eval_demo_items": 32,
             "overhead_warmup": True, "prep_tokenize": True,
             # ... or as `make demo` runs them
             "demo_train_overrides": [], "demo_eval_overrides": []},
}


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Failed(RuntimeError):
    pass


@dataclass
class Context:
    """One benchmark run: its temporary folder, sizes and logs, and what one phase hands to a later one."""

    tmp: Path
    size: dict
    quick: bool
    tiny_run: Path | None = None  # a trained tiny-cpu run (figure 1 makes one; figure 4 evaluates it)
    demo: dict | None = None  # the demo run figures 4 and 5 use (bench/demo.py: demo_run)

    @property
    def logs(self) -> Path:
        return self.tmp / "logs"

    def env(self, **changes: str) -> dict:
        return base_env(self.tmp) | changes


def base_env(tmp: Path) -> dict:
    """The environment every measured command gets: offline, temp runs/cache, venv first on PATH, no telemetry."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", AXOLOTL_DO_NOT_TRACK="1", DO_NOT_TRACK="1",
               RECIPE_RUNS_DIR=str(tmp / "runs"), RECIPE_CACHE_DIR=str(tmp / "cache"))
    env.setdefault("WANDB_MODE", "disabled")
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    return env


def worker_command(name: str, *args: str) -> list[str]:
    return [PYTHON, str(ENTRY), "--worker", name, *args]


def read_json(path: Path) -> dict:
    """A JSON file the runner wrote (manifest.json, data.json), read as plain JSON: its on-disk keys."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- running and timing subprocesses


def tree_memory(proc) -> int:
    """Memory of a process and all its descendants, in bytes (0 when it is gone): the sum of their PSS
    (proportional set size: pages shared between forked workers are split, not counted twice), RSS where
    PSS cannot be read."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        members = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for member in members:
        try:
            try:
                total += member.memory_full_info().pss
            except (psutil.AccessDenied, AttributeError):
                total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def _wait(proc, name: str, log_path: Path, *, poll, rss: bool, timeout: float, started: float,
          started_epoch: float) -> tuple[object, int]:
    """Wait for proc, calling poll every 10 ms until it answers and sampling memory every 0.2 s when rss.
    Returns (what poll answered, peak tree memory in bytes)."""
    polled, peak_tree, next_rss = None, 0, started
    while True:
        now = time.perf_counter()
        if now - started > timeout:
            proc.kill()
            proc.wait()
            raise Failed(f"{name}: timed out after {timeout:.0f} s; log: {log_path}")
        if poll is not None and polled is None:
            polled = poll(started_epoch, started)
        if rss and now >= next_rss:
            peak_tree = max(peak_tree, tree_memory(proc))
            next_rss = now + 0.2
        if proc.poll() is not None:
            return polled, peak_tree
        if poll is not None and polled is None:
            time.sleep(0.01)
        elif rss:
            time.sleep(max(0.0, min(0.2, next_rss - time.perf_counter())))
        else:
            try:
                proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - started)))
            except subprocess.TimeoutExpired:
                pass  # the next pass kills it


def _peak_rss_mb(time_file: Path) -> float | None:
    try:
        return round(int(time_file.read_text().split()[-1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None


def timed(name: str, argv: list[str], *, cwd: Path, env: dict, logs: Path, poll=None, rss: bool = False,
          timeout: float = 3600) -> dict:
    """Run argv to completion with its output in logs/<name>.log; wall seconds measured around Popen..wait.

    poll(started_epoch, started) is called every 10 ms until it returns a value (then polling stops); rss
    samples the process tree's memory (sum of PSS) every 0.2 s, and wraps the command in /usr/bin/time -f %M
    for the peak RSS of the largest single process. Also returns cpu_s: user + system seconds of the command
    and every descendant it waited for (getrusage), which other load on the machine disturbs less than wall
    time, and started_unix / ended_unix."""
    logs.mkdir(parents=True, exist_ok=True)
    log_path, time_file = logs / f"{name}.log", logs / f"{name}.maxrss"
    command = list(argv)
    if rss and Path("/usr/bin/time").exists():
        command = ["/usr/bin/time", "-f", "%M", "-o", str(time_file), *command]
    with log_path.open("w", encoding="utf-8") as log:
        log.write(f"$ (cd {cwd} && {shlex.join(argv)})\n")
        log.flush()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        started_epoch, started = time.time(), time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        polled, peak_tree = _wait(proc, name, log_path, poll=poll, rss=rss, timeout=timeout, started=started,
                                  started_epoch=started_epoch)
        wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        tail = "\n  ".join(text.splitlines()[-25:])
        raise Failed(f"{name}: exit code {proc.returncode}; log {log_path}, last lines:\n  {tail}")
    result = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "log": str(log_path), "polled": polled,
              "text": text, "started_unix": round(started_epoch, 3), "ended_unix": round(started_epoch + wall, 3)}
    if rss:
        result["peak_pss_tree_mb"] = round(peak_tree / 2**20, 1)
        peak = _peak_rss_mb(time_file) if time_file.is_file() else None
        if peak is not None:
            result["peak_rss_max_process_mb"] = peak
    return result


def marker(text: str, tag: str) -> dict:
    """The JSON a worker printed on a line starting with tag."""
    for line in reversed(text.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    raise Failed(f"no {tag} line in the output")


def mean(values: list[float]) -> float:
    return round(statistics.fmean(values), 3)


def spread(values: list[float]) -> dict:
    return {"runs": [round(v, 3) for v in values], "mean": mean(values),
            "stdev": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0}


def ensure_tiny_model(env: dict, logs: Path) -> None:
    if not (ROOT / "models" / "tiny-llama" / "config.json").is_file():
        say("building models/tiny-llama (recipe tiny-model)")
        timed("tiny-model", [RECIPE, "tiny-model"], cwd=ROOT, env=env, logs=logs)
