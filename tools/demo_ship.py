"""`make demo-ship`, after `make demo`: what the SQL demo ships, scored on the same 90 questions as what it trained.

1. `recipe export` the demo's latest run as GGUF f16, q8_0 and q4_k_m (llama.cpp's converter and quantizer);
2. `recipe serve --artifact export:gguf-q4_k_m` (llama.cpp's OpenAI-compatible server) on a free local port;
3. `recipe eval` with the candidates fine-tuned, merged, the three GGUF files (run by llama.cpp) and the served
   q4_k_m as an endpoint, on the `sql-ship` suite, whose gate says what ships stays within its bound of what trained;
4. `recipe gate` on that suite; then the table (score, Δ vs fine-tuned with its paired 95% interval, size, answer
   tokens/s, eval seconds) and how many answers each artifact shares with the model it came from, for the docs.

    python tools/demo_ship.py [--recipe smollm2-135m-sql-chatml] [--quants f16 q8_0 q4_k_m]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "smollm2-135m-sql-chatml"
SERVED = "export:gguf-q4_k_m"


def _recipe(*args: str, check: bool = True) -> int:
    print(f"$ recipe {' '.join(args)}", flush=True)
    code = subprocess.call([sys.executable, "-m", "runner", *args], cwd=ROOT)
    if check and code != 0:
        sys.exit(code)
    return code


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(process: subprocess.Popen, url: str, limit_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"recipe serve exited {process.returncode}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    sys.exit(f"recipe serve did not answer within {limit_s:.0f} s")


def _predictions(run, slug: str) -> dict:
    from runner.core import jsonl
    from runner.evaluate.scoring import GENERATE_TASK

    return {r["doc_id"]: r["prediction"].strip()
            for r in jsonl.read(run.file("eval", f"samples-{slug}-{GENERATE_TASK}.jsonl")).rows}


def table(run) -> str:
    from runner.runs.eval_summary import EvalSummary
    from runner.runs.manifest import Manifest

    summary = EvalSummary.read(run.summary_path)
    timings = Manifest.read(run.manifest_path).timings
    lines = ["| candidate | engine | SQL execution accuracy | Δ vs fine-tuned (paired 95% CI) | size on disk | "
             "answer tokens/s | eval s |", "|---|---|---:|---:|---:|---:|---:|"]
    for label, c in summary.candidates.items():
        m = c.metrics.get("sql_execution")
        delta = "" if label == summary.reference or m is None or m.delta is None else \
            f"{100 * m.delta:+.1f} pts [{100 * m.ci95[0]:+.1f}, {100 * m.ci95[1]:+.1f}]"
        size = "" if c.size_bytes is None else f"{c.size_bytes / 1e6:,.0f} MB"
        speed = "" if c.answer_tokens_per_s is None else f"{c.answer_tokens_per_s:,.0f}"
        seconds = timings.get(f"eval_{c.slug}_s")
        lines.append(f"| {label} | {c.engine or ''} | {100 * m.value:.1f}% | {delta} | {size} | {speed} | "
                     f"{'' if seconds is None else f'{seconds:.0f}'} |")
    return "\n".join(lines)


def agreement(run) -> str:
    from runner.runs.eval_summary import EvalSummary

    summary = EvalSummary.read(run.summary_path)
    answers = {label: _predictions(run, c.slug) for label, c in summary.candidates.items()}
    pairs = [("merged", "finetuned"), ("export:gguf-f16", "merged"), ("export:gguf-q8_0", "merged"),
             ("export:gguf-q4_k_m", "merged"), (f"endpoint:{run.path.parent.name}", SERVED)]
    out = []
    for a, b in pairs:
        if a in answers and b in answers:
            same = sum(answers[a][i] == answers[b].get(i) for i in answers[a])
            out.append(f"- {a} gives the same answer as {b} on {same} of {len(answers[a])} questions")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--quants", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    args = parser.parse_args(argv)
    from runner.runs import rundir

    _recipe("export", args.recipe, "--quant", *args.quants)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log = open(ROOT / ".cache" / "demo-ship-serve.log", "w")  # noqa: SIM115 - closed after the server stops
    server = subprocess.Popen([sys.executable, "-m", "runner", "serve", args.recipe, "--artifact", SERVED,
                               "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        _wait(server, url)
        candidates = ["finetuned", "merged", *(f"export:gguf-{q}" for q in args.quants),
                      f"endpoint:{args.recipe}@{url}"]
        _recipe("eval", args.recipe, "eval.suite=sql-ship", f"eval.candidates=[{', '.join(candidates)}]")
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    gate = _recipe("gate", args.recipe, check=False)
    run = rundir.find(args.recipe)
    print(f"\nmeasured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores, run {run.run_id}; gate exit {gate}\n")
    print(table(run))
    print()
    print(agreement(run))
    print(f"\nreport: {run.report_path.relative_to(ROOT) if run.report_path.is_relative_to(ROOT) else run.report_path}")
    print(json.dumps({"gate_exit": gate}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
