"""`recipe serve`: transformers serve's OpenAI-compatible app (FastAPI + uvicorn), run in-process on run/serve/.

transformers serve (transformers.cli.serving) does the serving: /v1/models, /v1/chat/completions (streaming
too), /v1/completions, /health; it formats chats with the folder's chat template, stops at the generation
config's stop strings and cuts answers with the tokenizer's response template (runner.serve.folder). Its app is
built here rather than through the `transformers serve` command for what the command cannot do, each
through the classes its `Serve` command composes (and FastAPI's own hooks):

- the model is offered under the recipe's name: `RunModels` (a `ModelManager`) loads run/serve/ for that name
  and lists it on /v1/models, where the command lists the Hugging Face cache;
- a request longer than the model's context is answered 400 with what to change (the command would generate
  past the context): the handlers below count the prompt's tokens first;
- the port is bound before the model loads, so a port in use is a clear error at once;
- errors go out in OpenAI's shape, so OpenAI clients show their message (an exception handler on the app);
- the model loads and generates as `recipe generate` and eval do (runner.models.numerics): its LoRA adapter in
  float32 (transformers' own loading would round it to the model's bf16), autocast off, the same threads;
- an answer ends before the caller's `stop` string, as OpenAI's API returns it (runner.serve.stops), where
  transformers serve keeps the stop string.
"""
from __future__ import annotations

import errno
import socket
from functools import lru_cache

from runner.core.errors import Problem, UserError
from runner.serve.folder import Served

SERVE_DEFAULT_NEW_TOKENS = 1024  # transformers serve's floor for max_new_tokens when a request gives no max_tokens


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), for uvicorn to listen on; a UserError when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise UserError(Problem("--port", "", f"port {port} on {host} is already in use; stop what listens "
                                    f"there or serve on another port: --port {port + 1} (or --port 0 for any free "
                                    "one)")) from None
        raise UserError(Problem("--host", "", f"cannot listen on {host}:{port}: {err.strerror or err}")) from None
    return sock


@lru_cache(maxsize=1)
def _classes():
    """The serving classes, defined on first use (transformers serve imports FastAPI and openai)."""
    from fastapi import HTTPException
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.utils import Modality

    class RunModels(ModelManager):
        """Serves one folder under one name: every request for that name gets run/serve/'s model."""

        def __init__(self, served: Served, how, **kwargs):
            self.served = served
            self.numerics = how  # runner.models.numerics.Numerics: how the model loads and generates
            self.context_length = served.context_length
            super().__init__(force_model=served.name, **kwargs)  # loads the model now

        def _load_model(self, model_id_and_revision: str, tqdm_class=None, progress_callback=None):
            """What run/serve/ links to, loaded as `recipe generate` loads it: the weights, the LoRA adapter on them
            (through peft, in the adapter dtype numerics decides), the folder's generation config (its stop
            strings); generate bound to the numerics."""
            from transformers import GenerationConfig

            folder = self.served.folder
            adapter = folder / "adapter_config.json"
            adapter_dir = adapter.resolve().parent if adapter.is_file() else None
            model = self.numerics.load((folder / "config.json").resolve().parent, adapter_dir,
                                       trust_remote_code=self.trust_remote_code)
            if adapter_dir is not None:
                model = model.get_base_model()  # the transformers model, peft's LoRA layers in it
            model.generation_config = GenerationConfig.from_pretrained(folder)
            return self.numerics.bind(model)

        def process_model_name(self, model_id: str) -> str:
            return model_id  # the recipe's name, not a hub id with an @revision

        def load_model_and_processor(self, model_id_and_revision: str, **kwargs):
            return super().load_model_and_processor(f"{self.served.folder}@main", **kwargs)

        def get_gen_models(self, cache_dir: str | None = None) -> list[dict]:
            return [{"id": self.served.name, "object": "model", "created": int(self.served.folder.stat().st_mtime),
                     "owned_by": "recipe-runner"}]

    def bad(message: str):
        raise HTTPException(status_code=400, detail=message)

    def fit(handler, body: dict, model, prompt_tokens: int) -> None:
        """400 when the prompt (and max_tokens) does not fit the context; else cap the default answer length."""
        limit = handler.model_manager.context_length
        if limit is None:
            return
        if prompt_tokens >= limit:
            bad(f"the prompt is {prompt_tokens} tokens and the model's context is {limit} tokens; shorten it")
        asked = body.get("max_tokens")
        if asked is not None:
            if not isinstance(asked, int) or isinstance(asked, bool) or asked < 1:
                bad(f"max_tokens must be a positive integer, not {asked!r}")
            if prompt_tokens + asked > limit:
                bad(f"the prompt is {prompt_tokens} tokens and max_tokens asks for {asked} more, over the model's "
                    f"context of {limit} tokens; ask for at most {limit - prompt_tokens} or shorten the prompt")
        elif body.get("generation_config") is None:
            default = max(model.generation_config.max_new_tokens or 0, SERVE_DEFAULT_NEW_TOKENS)
            body["max_tokens"] = min(default, limit - prompt_tokens)

    class ChatHandler(ChatCompletionHandler):
        async def handle_request(self, body: dict, request_id: str):
            import jinja2

            from runner.serve import stops

            self._validate_request(stops.normalize(body))
            _, model, processor = self._resolve_model(body)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                bad("messages must be a non-empty list of {role, content}")
            try:
                turns = self.get_processor_inputs_from_messages(messages, Modality.LLM)
                text = processor.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            except (KeyError, TypeError, AttributeError) as err:
                bad(f"messages must be a list of {{role, content}}: {type(err).__name__} {err}")
            except jinja2.TemplateError as err:
                bad(f"the recipe's template cannot render these messages: {err}")
            fit(self, body, model, len(processor(text, add_special_tokens=False)["input_ids"]))
            return cut_at_stops(await super().handle_request(body, request_id), body)

    class CompletionsHandler(CompletionHandler):
        async def handle_request(self, body: dict, request_id: str):
            from runner.serve import stops

            self._validate_request(stops.normalize(body))
            _, model, processor = self._resolve_model(body)
            prompt = body.get("prompt", "")
            if not isinstance(prompt, str):
                bad("prompt must be a string")
            fit(self, body, model, len(getattr(processor, "tokenizer", processor)(prompt)["input_ids"]))
            return cut_at_stops(await super().handle_request(body, request_id), body)

    return RunModels, ChatHandler, CompletionsHandler


def cut_at_stops(response, body: dict):
    """The response with its answers ending before the request's first `stop` string, as OpenAI's API returns them
    (transformers serve keeps the stop string): a whole JSON answer is rewritten, a stream filtered as it goes."""
    import json

    from fastapi.responses import JSONResponse, StreamingResponse

    from runner.serve import stops

    wanted = stops.stops_of(body)
    if not wanted:
        return response
    if isinstance(response, StreamingResponse):
        response.body_iterator = stops.cut_stream(response.body_iterator, wanted)
        return response
    if isinstance(response, JSONResponse) and response.status_code == 200:
        return JSONResponse(stops.cut_response(json.loads(response.body), wanted))
    return response


def load(served: Served):
    """The model manager with the run's model loaded and generating as eval and `recipe generate` do for the recipe
    (runner.models.numerics.decide: on CPU float32, or bf16 where the recipe and the CPU allow; one request at a
    time, a batch of one)."""
    from runner.models import numerics

    RunModels, _, _ = _classes()
    recipe = served.run.recipe()
    how = numerics.decide(recipe)
    try:
        return RunModels(served, how, device=how.device_map, dtype=how.dtype,
                         trust_remote_code=recipe.model.trust_remote_code)
    except Exception as err:  # whatever stops it loading (a missing or corrupt file, a config it cannot read)
        from runner.core import paths

        raise UserError(Problem(paths.display(served.folder), "", f"cannot load the model: {type(err).__name__}: "
                                f"{err}; check the run's model (train or merge it again)")) from None


def app_for(models):
    """transformers serve's FastAPI app around a loaded RunModels."""
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    _, ChatHandler, CompletionsHandler = _classes()
    state = GenerationState()
    app = build_server(models, ChatHandler(models, state), completion_handler=CompletionsHandler(models, state),
                       response_handler=ResponseHandler(models, state),
                       transcription_handler=TranscriptionHandler(models, state), generation_state=state)
    _openai_errors(app)
    return app


def _openai_errors(app) -> None:
    """Errors in OpenAI's shape, {"error": {"message", "type", ...}}, which OpenAI clients show; FastAPI's own shape
    ({"detail": ...}), which transformers serve answers with, reaches a client as a bare status code."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def error(status: int, message: str, headers=None) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return JSONResponse(body, status_code=status, headers=headers)

    async def http_error(_request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def invalid_body(_request, exc: RequestValidationError):
        return error(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_body)


def run(app, sock: socket.socket) -> None:
    """Serve until interrupted: uvicorn shuts down cleanly on Ctrl-C or SIGTERM, then lets the signal end the
    process (the CLI reports Ctrl-C as `stopped`, exit 130)."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info")).run(sockets=[sock])
