#!/usr/bin/env python
"""recipe-runner benchmark: five figures, each measured side by side in one run, written to bench/results.json.

    .venv/bin/python bench/run.py            # full run (about 7 minutes on 2 quiet CPU cores with a finished
                                             # demo run; without one it runs the demo's stages too, ~8 min more)
    .venv/bin/python bench/run.py --quick    # toy sizes, for the test (about 3 minutes)
    .venv/bin/python bench/run.py --only packing,demo --out /tmp/r.json

Figures (one module each under bench/; see bench/README.md for how each is measured):
  overhead  runner_overhead_ratio, launch_latency_s     bench/overhead.py
  prep      prep_ratio_vs_axolotl                       bench/prep.py
  packing   packing_efficiency                          bench/packing.py
  eval      eval_batch_speedup                          bench/eval_batch.py
  demo      demo_stage_seconds                          bench/demo.py
  bf16      bf16_train_speedup, bf16_exec_accuracy_delta  bench/bf16.py
  fit       fit_published_verdicts_agree, fit_cpu_*_error  bench/fit.py
  seeds     seeds_exec_accuracy_sd (the demo over 3 seeds)  bench/seeds.py

Nothing here asserts on time. Every measurement runs in a subprocess; this process only starts, polls and
reads them. Runs and caches go to a temporary folder (RECIPE_RUNS_DIR / RECIPE_CACHE_DIR), never runs/.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # started as a script: import bench/ as the package `bench`, not its modules
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from bench import bf16, demo, eval_batch, fit, overhead, packing, prep, results, seeds  # noqa: E402
from bench.common import DEMO_RECIPE, ROOT, SIZES, Context, Failed, ensure_tiny_model, say  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results.json"
PHASES = {"overhead": overhead.bench, "prep": prep.bench, "packing": packing.bench, "eval": eval_batch.bench,
          "demo": demo.bench, "bf16": bf16.bench, "fit": fit.bench, "seeds": seeds.bench}
FIGURES = tuple(PHASES)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes (for the test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (default bench/results.json)")
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, runs)")
    parser.add_argument("--worker", choices=("packing", "eval"), help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=4000, help=argparse.SUPPRESS)
    parser.add_argument("--standin", default=DEMO_RECIPE, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", default="tiny-cpu", help=argparse.SUPPRESS)
    parser.add_argument("--order", default="1,8,8,1", help=argparse.SUPPRESS)
    parser.add_argument("--max-items", type=int, default=16, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_worker(args) -> int:
    """The code a phase runs in a fresh interpreter; its result is one marked JSON line on stderr."""
    if args.worker == "packing":
        tag, result = "BENCH_PACKING", packing.worker(args.seeds, args.rows, args.standin, args.work)
    else:
        tag, result = "BENCH_EVAL", eval_batch.worker(args.run, args.recipe, [int(x) for x in args.order.split(",")],
                                                      args.max_items)
    print(f"{tag} {json.dumps(result)}", file=sys.stderr, flush=True)
    return 0


def run_phase(name: str, ctx: Context, record: dict) -> None:
    """One figure's phase; its figures and details (with phase time and machine load) go into record."""
    phase = time.perf_counter()
    load_at_start = round(os.getloadavg()[0], 2)
    busy_at_start, ours_at_start = results.busy_cpu_s(), results.own_cpu_s()
    try:
        figures, details = PHASES[name](ctx)
    except Failed as err:
        record["errors"][name] = str(err)
        say(f"{name} failed: {err}")
        return
    elapsed = time.perf_counter() - phase
    details["phase_s"] = round(elapsed, 1)
    details["load_avg_1min_at_start"] = load_at_start
    # CPU the rest of the machine used meanwhile (all busy CPU time minus this benchmark's), in cores
    others = (results.busy_cpu_s() - busy_at_start) - (results.own_cpu_s() - ours_at_start)
    details["other_processes_cores"] = round(max(0.0, others) / max(1e-9, elapsed), 2)
    record["figures"] |= figures
    record["details"][name] = details


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - set(FIGURES)
    if unknown:
        print(f"unknown figure(s) {sorted(unknown)}; choose from {FIGURES}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    ctx = Context(tmp=Path(tempfile.mkdtemp(prefix="recipe-bench-")), size=SIZES["quick" if args.quick else "full"],
                  quick=args.quick)
    say(f"{'quick' if args.quick else 'full'} run; temporary folder {ctx.tmp}")
    record = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "quick": args.quick,
              "machine": results.machine(), "figures": {}, "details": {}, "errors": {}, "figures_run": only}
    try:
        if {"overhead", "prep", "packing", "eval"} & set(only):
            ensure_tiny_model(ctx.env(), ctx.logs)
        for name in only:
            run_phase(name, ctx, record)
    except Failed as err:  # models/tiny-llama could not be built: no phase can run
        record["errors"]["tiny-model"] = str(err)
    finally:
        record["duration_s"] = round(time.perf_counter() - started, 1)
        record["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        record["goals"] = results.judge(record["figures"])
        if not record["errors"]:
            del record["errors"]
        results.write(record, args.out)
        if args.keep or record.get("errors"):
            say(f"kept {ctx.tmp} (logs in {ctx.logs})")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    print(results.table(record))
    print(f"wrote {args.out} in {record['duration_s']:.0f} s")
    return 1 if record.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
