"""`recipe serve NAME --artifact export:gguf-QUANT`: an exported GGUF file behind llama.cpp's own OpenAI-compatible
server (llama_cpp.server: /v1/models, /v1/chat/completions, /v1/completions), run in-process on the bound socket.

The file carries the recipe's chat template (written by `recipe export`), so chats are formatted as the model was
trained, by the server's Jinja2 chat formatter; what the formatter cannot know is the recipe's stop strings (it stops
at the end-of-sequence token only), so the chat handler here is that formatter with the file's
`recipe_runner.stop`. Answers end before a stop string, as OpenAI's API returns them; llama.cpp's server does that
itself. Each request is computed from an empty cache (see _fresh), and one that does not set llama.cpp's own
sampling knobs gets OpenAI's neutral values (no repeat penalty, no top-k or min-p cut, top_p 1) instead of
llama.cpp's (1.1, 40, 0.05, 0.95): temperature 0 is then the greedy decoding eval measured, request by request.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.core import paths
from runner.core.errors import Problem, UserError
from runner.models import llamacpp


@dataclass(frozen=True)
class ServedGguf:
    file: Path
    name: str  # the model name clients ask for
    artifact: str
    chat_template: str
    stop: tuple[str, ...]
    context_length: int | None


def describe(served: ServedGguf) -> str:
    return f"{served.name}: the {served.artifact} export through llama.cpp, from {paths.display(served.file)}"


NEUTRAL = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0, "top_p": 1.0}
COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")


class OpenAIDefaults:
    """ASGI middleware: NEUTRAL fills the sampling keys a completion request leaves out (see the module's docstring)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in COMPLETION_PATHS:
            return await self.app(scope, receive, send)
        import json

        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            request = json.loads(body)
            if isinstance(request, dict):
                body = json.dumps(NEUTRAL | request).encode()
        except ValueError:
            pass  # the server answers a malformed body itself
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        scope = scope | {"headers": [*headers, (b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def _formatter_class():
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    class RecipeChatFormatter(Jinja2ChatFormatter):
        """The file's chat template, stopping at the recipe's stop strings as well as end-of-sequence."""

        def __init__(self, *args, stop: tuple[str, ...], **kwargs):
            super().__init__(*args, **kwargs)
            self.recipe_stop = list(stop)

        def __call__(self, **kwargs):
            response = super().__call__(**kwargs)
            response.stop = list(dict.fromkeys([*self.recipe_stop, *(response.stop or [])]))
            return response

    return RecipeChatFormatter


def app_for(served: ServedGguf, threads: int):
    """llama.cpp's FastAPI app with the file loaded under the recipe's name and its chat handler set."""
    import llama_cpp.server.app as server_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    settings = ModelSettings(model=str(served.file), model_alias=served.name, n_ctx=served.context_length or 0,
                             n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)
    try:
        app = server_app.create_app(server_settings=ServerSettings(), model_settings=[settings])
    except (ValueError, RuntimeError) as err:
        raise UserError(Problem(paths.display(served.file), "", f"llama.cpp could not load it ({err}); export it "
                                "again with `recipe export`")) from None
    llama = server_app._llama_proxy(served.name)  # loaded by create_app; its handler is the file's template's
    eos = llama._model.token_get_text(llama.token_eos()) if llama.token_eos() >= 0 else ""
    bos = llama._model.token_get_text(llama.token_bos()) if llama.token_bos() >= 0 else ""
    formatter = _formatter_class()(served.chat_template, eos_token=eos, bos_token=bos, stop=served.stop,
                                   stop_token_ids=[llama.token_eos()])
    llama.chat_handler = formatter.to_chat_handler()
    llama.create_completion = _fresh(llama)
    app.add_middleware(OpenAIDefaults)
    return app


def _fresh(llama):
    """create_completion from an empty cache: llama.cpp otherwise reuses the prefix the previous request left in
    its KV cache, which computes the prompt in other chunks and, on near-tied tokens, gives another greedy answer
    than the same request alone (measured on the SQL demo's q4_k_m file: 2 of 90). A request's answer then depends
    on itself only, as it did in eval."""
    inner = llama.create_completion

    def create_completion(*args, **kwargs):
        llama.reset()
        return inner(*args, **kwargs)

    return create_completion


def prepare(run, artifact: str) -> ServedGguf:
    """The exported GGUF file `artifact` (export:gguf-QUANT) names and what it carries; exit 2 naming the export to
    run when it is not there, or llama.cpp when it is not installed."""
    from runner.recipe import candidates
    from runner.runs.export_info import exported_gguf

    try:
        parsed = candidates.parse(artifact)
    except ValueError as err:
        raise UserError(Problem("--artifact", "", str(err))) from None
    if parsed.kind != "export":
        raise UserError(Problem("--artifact", "", f"{artifact!r}: name an exported GGUF file, export:gguf-QUANT; "
                                "without --artifact the run's adapter or merged model is served with transformers"))
    recipe = run.recipe()
    file, found = exported_gguf(run, parsed.artifact, "--artifact")
    if llamacpp.installed_version() is None:
        raise UserError(Problem("--artifact", "", "serving a GGUF file needs llama.cpp, which is not installed; run "
                                f"`make llama-cpp` ({llamacpp.BUILD_NOTE})"))
    return ServedGguf(file=file, name=recipe.name, artifact=parsed.artifact,
                      chat_template=found.chat_template or "", stop=tuple(found.stop),
                      context_length=recipe.model.context_length)
