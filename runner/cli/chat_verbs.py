"""Verbs that put a trained run in front of people: chat (a local web page, base and fine-tuned side by side)."""
from __future__ import annotations

import argparse
import signal

from runner.cli import targets
from runner.core import console, paths
from runner.evaluate.chat_page import DEFAULT_HOST, DEFAULT_PORT

CHAT_EXAMPLES = """examples:
  recipe chat tiny-cpu                          # the latest run, on http://127.0.0.1:7860/
  recipe chat smollm2-135m-sql-chatml --run 20261122-101500-1a2b3c4d --port 8080
  recipe chat tiny-cpu --host 0.0.0.0           # reachable from other machines (no authentication!)
"""


def cmd_chat(args) -> int:
    from runner.evaluate import chat_page, generate

    chat_page.check_port(args.host, args.port)  # the user's mistakes first, before minutes of loading
    run, recipe = targets.finished_run(args, "chat")
    run.trained()
    log = run.log_path("chat")
    console.say(f"chat: loading the base and fine-tuned models of {paths.display(run.path)}")
    with console.third_party_to(log, args.verbose):  # model loading and the web server's messages go to the log
        pair = generate.load_pair(run, recipe.eval.max_new_tokens)
        page = chat_page.build(pair)
        url = chat_page.launch(page, args.host, args.port)
        console.say(f"chat page: {url} (Ctrl-C stops it; library messages: {paths.display(log)})")
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl-C does
        page.block_thread()  # until Ctrl-C: closes the server
    console.say("chat: stopped")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def register(verb, with_recipe) -> None:
    chat = verb("chat", cmd_chat, "a local web page: the base and fine-tuned answers to a prompt, side by side")
    chat.epilog, chat.formatter_class = CHAT_EXAMPLES, argparse.RawDescriptionHelpFormatter
    targets.with_run(chat)
    chat.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    chat.add_argument("--host", default=DEFAULT_HOST,
                      help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
