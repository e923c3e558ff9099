"""Figure 5: demo_stage_seconds, the stage timings (prepare_s, train_s, eval_s, ...) of a finished
smollm2-135m-sql-chatml run; and the demo run that figure 4 evaluates.

The run is the newest finished (evaluated, model present) one under the user's runs folder (RECIPE_RUNS_DIR,
else runs/). Where there is none (a fresh clone, before `make demo`), the benchmark runs the demo's own stages,
`recipe train` then `recipe eval`, into its temporary folder: as `make demo` runs them in a full run, shortened
(one step, two items) in a quick one; details.demo.source says which.
"""
from __future__ import annotations

from pathlib import Path

from bench.common import DEMO_RECIPE, RECIPE, ROOT, Context, Failed, read_json, say, timed

REQUIRED = ("prepare_s", "train_s", "eval_s")
STAMPS = ("start", "trained", "end")  # /tmp/demo.<name>: unix times a timed demo session may leave


def user_runs() -> Path:
    from runner.core import paths

    return paths.runs_dir() / DEMO_RECIPE


def finished(run_dir: Path) -> dict | None:
    """The run's manifest when it is evaluated, has the stage timings, and its model and base model are there."""
    try:
        manifest = read_json(run_dir / "manifest.json")
    except (OSError, ValueError):
        return None
    timings = manifest.get("timings") or {}
    model = run_dir / manifest.get("model_dir", "model")
    base = Path(manifest.get("base_model_dir") or "")
    if manifest.get("status") != "evaluated" or not all(_number(timings.get(k)) for k in REQUIRED):
        return None
    if not ((model / "adapter_config.json").is_file() or (model / "config.json").is_file()):
        return None
    return manifest if not base.is_absolute() or base.is_dir() else None


def newest_finished(runs: Path) -> Path | None:
    if not runs.is_dir():
        return None
    candidates = [p for p in runs.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
    return next((p for p in sorted(candidates, reverse=True) if finished(p)), None)  # run ids sort by time


def demo_run(ctx: Context) -> dict:
    """{path, source: existing|bench, ...}: found once, or made once, per benchmark run."""
    if ctx.demo is None:
        runs = user_runs()
        existing = newest_finished(runs)
        if existing is not None:
            say(f"demo: using the finished demo run {existing}")
            ctx.demo = {"path": existing, "source": "existing"}
        else:
            say(f"demo: no finished {DEMO_RECIPE} run in {runs}; running the demo's train and eval stages here")
            ctx.demo = make_demo_run(ctx)
    return ctx.demo


def make_demo_run(ctx: Context) -> dict:
    train_overrides, eval_overrides = ctx.size["demo_train_overrides"], ctx.size["demo_eval_overrides"]
    stages = {}
    for stage, overrides in (("train", train_overrides), ("eval", eval_overrides)):
        say(f"demo: recipe {stage} {DEMO_RECIPE} {' '.join(overrides)}".rstrip())
        result = timed(f"demo-{stage}", [RECIPE, stage, DEMO_RECIPE, *overrides], cwd=ROOT, env=ctx.env(),
                       logs=ctx.logs)
        stages[stage] = {k: result[k] for k in ("wall_s", "cpu_s", "started_unix", "ended_unix")}
    path = (ctx.tmp / "runs" / DEMO_RECIPE / "latest").resolve()
    if finished(path) is None:
        raise Failed(f"{path}: the demo's train and eval stages ran but left no evaluated run with "
                     f"{', '.join(REQUIRED)} in manifest.json")
    return {"path": path, "source": "bench", "train_overrides": train_overrides, "eval_overrides": eval_overrides,
            "stages": stages}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_stamps() -> tuple[dict, list[str]]:
    stamps, missing = {}, []
    for name in STAMPS:
        path = Path(f"/tmp/demo.{name}")
        try:
            stamps[name] = float(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            missing.append(str(path))
    return stamps, missing


def intervals(stamps: dict) -> dict:
    found = {f"demo_{name}_unix": stamps[name] for name in STAMPS if name in stamps}
    for key, (first, last) in {"start_to_trained_s": ("start", "trained"), "trained_to_end_s": ("trained", "end"),
                               "start_to_end_s": ("start", "end")}.items():
        if first in stamps and last in stamps:
            found[key] = round(stamps[last] - stamps[first], 2)
    return found


def bench(ctx: Context) -> tuple[dict, dict]:
    found = demo_run(ctx)
    path = found["path"]
    manifest = read_json(path / "manifest.json")
    timings = manifest.get("timings") or {}
    figures = {k: timings[k] for k in REQUIRED}
    figures |= {k: v for k, v in timings.items() if k not in figures and _number(v)}
    if found["source"] == "bench":  # measured from outside, around the two stages
        stages = found["stages"]
        stamps, missing = {"start": stages["train"]["started_unix"], "trained": stages["train"]["ended_unix"],
                           "end": stages["eval"]["ended_unix"]}, []
    else:
        stamps, missing = read_stamps()
    figures |= intervals(stamps)
    try:
        shown = str(path.relative_to(ROOT))
    except ValueError:
        shown = str(path)
    details = {"run": shown, "status": manifest.get("status"), "missing": missing,
               **{k: v for k, v in found.items() if k != "path"}}
    return {"demo_stage_seconds": figures}, details
