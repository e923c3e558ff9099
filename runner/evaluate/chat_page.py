"""`recipe chat`: a local web page (Gradio) with one prompt box and the base and fine-tuned answers side by side.

The page answers through `generate.Pair`, the same functions `recipe generate` uses, so an answer on the page is
exactly what `recipe generate` prints for the same prompt: the run's template, its stop strings, greedy decoding.
The system prompt (the recipe's data.system to start with) and the number of new tokens can be changed on the
page; every other setting is shown, not editable. One request is answered at a time.
"""
from __future__ import annotations

import errno
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from runner.core import paths
from runner.core.errors import Problem, UserError

if TYPE_CHECKING:  # `recipe --help` does not import the model stack
    from runner.evaluate.generate import Pair

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: no usage pings

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
FONTS = ["ui-sans-serif", "system-ui", "DejaVu Sans", "sans-serif"]  # local fonts: the page loads nothing remote
MONO = ["ui-monospace", "DejaVu Sans Mono", "monospace"]
READY = "Ready: type a prompt, then Answer (or Shift+Enter)."
CSS = """
.answer textarea { font-family: ui-monospace, "DejaVu Sans Mono", monospace !important; font-size: 0.92em; }
#settings { font-size: 0.9em; }
#status { min-height: 1.6em; color: var(--body-text-color-subdued); }
"""


def check_port(host: str, port: int) -> None:
    """A UserError (exit 2) unless this machine can listen on host:port now (before any model is loaded)."""
    where = f"{host}:{port}"
    if not 0 < port < 65536:
        raise UserError(Problem("--port", "", f"{port} is not a TCP port (1-65535)"))
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is fine
            probe.bind((host, port))
    except socket.gaierror as err:
        raise UserError(Problem("--host", "", f"cannot resolve {host!r} ({err.strerror}); give an address such as "
                                "127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")) from None
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise UserError(Problem(where, "", "port in use: another program listens there; stop it or choose "
                                    "another port with --port")) from None
        raise UserError(Problem(where, "", f"cannot listen there: {err.strerror}; choose another --host or "
                                "--port (ports under 1024 need root)")) from None


def _uses_system(pair: Pair) -> bool:
    """Whether the run's template renders a system prompt at all (alpaca and qa do not)."""
    return pair.render("?", "system prompt probe") != pair.render("?", "")


def _describe(pair: Pair) -> tuple[str, str]:
    """(header, settings) markdown: what answers, and how."""
    run, recipe = pair.run, pair.recipe
    tuned = "the run's LoRA adapter (`model/`) on that base" if pair.adapter else "the run's `model/`"
    header = (f"# {recipe.name}: base vs fine-tuned\n"
              f"Run `{run.run_id}` · base `{paths.display(pair.base_dir)}` · fine-tuned: {tuned} · "
              f"template `{recipe.data.template}`")
    stops = ", ".join(f"``{s!r}``" for s in pair.stop) or "none"
    if pair.numerics is not None:  # runner.models.numerics: as `recipe generate`, `recipe serve` and eval compute
        computed = pair.numerics.describe()
    else:
        weights = next(pair.base.parameters())
        computed = f"{str(weights.dtype).removeprefix('torch.')} on {weights.device.type}"
    settings = (f"**Generation** (as `recipe generate`): greedy decoding (`do_sample=False`) in {computed}, the "
                f"prompt as one user turn in the `{recipe.data.template}` template, answers cut at the stop strings "
                f"{stops}.")
    return header, settings


def _responder(pair: Pair, context: int, uses_system: bool):
    """The page's answer function: (prompt, system, max new tokens) -> yields (base, fine-tuned, status, prompt)."""
    import gradio as gr

    lock = threading.Lock()  # the two models answer one request at a time (an adapter's base is the same model)

    def respond(prompt: str, system: str, max_new_tokens: float | None):
        if not (prompt or "").strip():
            raise gr.Error("Type a prompt first.")
        limit = int(max_new_tokens or pair.max_new_tokens)
        rendered = pair.render(prompt, system if uses_system else None)
        length = len(pair.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        if length + limit > context:
            raise gr.Error(f"The prompt is {length} tokens in the template; with {limit} new tokens that is "
                           f"over the model's context of {context} tokens. Shorten it or lower max new tokens.")
        with lock:
            start = time.monotonic()
            base = pair.base_answer(rendered, limit)
            base_s = time.monotonic() - start
            yield base, "", "Base model answered; the fine-tuned model is writing...", rendered
            finetuned = pair.finetuned_answer(rendered, limit)
            tuned_s = time.monotonic() - start - base_s
        yield base, finetuned, (f"Answered in {base_s + tuned_s:.1f} s (base {base_s:.1f} s, fine-tuned "
                                f"{tuned_s:.1f} s) · prompt {length} tokens · up to {limit} new tokens"), rendered

    return respond


def build(pair: Pair):
    """The page (a gr.Blocks) answering through `pair`."""
    import gradio as gr

    context = getattr(pair.base.config, "max_position_embeddings", None) or 1_000_000
    uses_system = _uses_system(pair)
    header, settings = _describe(pair)
    respond = _responder(pair, context, uses_system)
    with gr.Blocks(title=f"recipe chat: {pair.recipe.name}", analytics_enabled=False) as page:
        gr.Markdown(header, elem_id="header")
        with gr.Row(equal_height=True):
            system = gr.Textbox(pair.recipe.data.system or "", label="System prompt", lines=2 if uses_system else 1,
                                scale=3, elem_id="system", interactive=uses_system,
                                info="the recipe's data.system to start with; empty: none" if uses_system else
                                f"the {pair.recipe.data.template} template has no system prompt",
                                placeholder="(none)")
            limit = gr.Number(pair.max_new_tokens, label="Max new tokens", minimum=1, maximum=context, precision=0,
                              scale=1, elem_id="max-new-tokens", info="the recipe's eval.max_new_tokens to start")
        gr.Markdown(settings, elem_id="settings")
        prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Ask both models the same question...",
                            elem_id="prompt", autofocus=True)
        with gr.Row():
            send = gr.Button("Answer", variant="primary", elem_id="answer", scale=3)
            clear = gr.Button("Clear", elem_id="clear", scale=1)
        with gr.Row(equal_height=True):
            base = gr.Textbox(label="Base model", lines=8, interactive=False, buttons=["copy"],
                              elem_id="base-answer", elem_classes="answer")
            tuned = gr.Textbox(label=f"Fine-tuned (run {pair.run.run_id})", lines=8, interactive=False,
                               buttons=["copy"], elem_id="finetuned-answer", elem_classes="answer")
        status = gr.Markdown("", elem_id="status")
        with gr.Accordion("The prompt as the models see it", open=False):
            rendered = gr.Code(label="rendered prompt", language=None, interactive=False, elem_id="rendered")
        outputs = [base, tuned, status, rendered]
        for trigger in (send.click, prompt.submit):
            trigger(respond, [prompt, system, limit], outputs, concurrency_limit=1, concurrency_id="models")
        clear.click(lambda: ("", "", "", "", ""), None, [prompt, *outputs], queue=False)
        page.load(lambda: READY, None, status, queue=False)  # the page is live: typing now is kept
    return page


def launch(page, host: str, port: int) -> str:
    """Start serving the page in the background; returns its URL."""
    import gradio as gr

    theme = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate", font=FONTS, font_mono=MONO)
    try:
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                    quiet=True, show_error=True, theme=theme, css=CSS)
    except OSError as err:  # taken between check_port and now
        raise UserError(Problem(f"{host}:{port}", "", f"cannot serve the page: {err}")) from None
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"

