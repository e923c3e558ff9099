"""Verbs that put a trained model to use: serve (an OpenAI-compatible API)."""
from __future__ import annotations

from runner.cli import targets
from runner.core import console, paths

SERVE_EPILOG = """examples:
  recipe serve tiny-cpu                           # http://127.0.0.1:8000/v1, model "tiny-cpu"
  recipe serve smollm2-135m-sql-chatml --run 20261122-101500-1a2b3c4d --port 8080 --host 0.0.0.0
then, with any OpenAI client:
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "tiny-cpu", "messages": [{"role": "user", "content": "Name a colour."}], "temperature": 0}'
"""


def cmd_serve(args) -> int:
    from runner.serve import folder, server

    run, _ = targets.finished_run(args, "serve")
    run.trained()  # a run with no model is exit 2 before anything else
    sock = server.bind(args.host, args.port)  # a port in use is exit 2 before the model loads
    try:
        log = run.log_path("serve")
        with console.third_party_to(log, args.verbose):
            served = folder.prepare(run)
            console.say(f"loading {folder.describe(served)}")
            models = server.load(served)
            app = server.app_for(models)
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            console.say(f"serving at http://{shown}:{port}/v1 (OpenAI API; model \"{served.name}\"); Ctrl-C stops "
                        f"it; requests and library messages: {paths.display(log)}")
            server.run(app, sock)
    finally:
        sock.close()
    return 0


def register(verb, with_recipe) -> None:
    import argparse

    serve = verb("serve", cmd_serve, "serve a run's model (its adapter on the base, or the merged model) behind an "
                 "OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions) with transformers serve; "
                 "chats are formatted with the recipe's template and answers end at its stop strings")
    serve.formatter_class = argparse.RawDescriptionHelpFormatter
    serve.epilog = SERVE_EPILOG
    targets.with_run(serve)
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine "
                       "only; 0.0.0.0 for every interface)")
