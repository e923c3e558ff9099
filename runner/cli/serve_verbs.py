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


def _gguf_app(run, artifact: str):
    """llama.cpp's server on an exported GGUF file: (app, name, what is served)."""
    from runner.models import numerics
    from runner.serve import gguf_server

    served = gguf_server.prepare(run, artifact)
    console.say(f"loading {gguf_server.describe(served)}")
    return gguf_server.app_for(served, numerics.default_threads()), served.name


def _transformers_app(run):
    from runner.serve import folder, server

    served = folder.prepare(run)
    console.say(f"loading {folder.describe(served)}")
    return server.app_for(server.load(served)), served.name


def cmd_serve(args) -> int:
    from runner.serve import server

    run, _ = targets.finished_run(args, "serve")
    run.trained()  # a run with no model is exit 2 before anything else
    if args.artifact:
        from runner.serve import gguf_server

        gguf_server.prepare(run, args.artifact)  # a missing export is exit 2 before the port is taken
    sock = server.bind(args.host, args.port)  # a port in use is exit 2 before the model loads
    try:
        log = run.log_path("serve")
        with console.third_party_to(log, args.verbose):
            app, name = _gguf_app(run, args.artifact) if args.artifact else _transformers_app(run)
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            console.say(f"serving at http://{shown}:{port}/v1 (OpenAI API; model \"{name}\"); Ctrl-C stops "
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
    serve.add_argument("--artifact", default=None, metavar="export:gguf-QUANT",
                       help="serve an exported GGUF file (`recipe export`) through llama.cpp's OpenAI-compatible "
                       "server instead of the adapter or merged model through transformers")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine "
                       "only; 0.0.0.0 for every interface)")
