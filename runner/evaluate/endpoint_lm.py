"""An OpenAI-compatible endpoint as an lm-evaluation-harness model: lm-eval's own `local-chat-completions`, with the
held-out items arriving as JSON chat messages (runner.evaluate.fewshot.message_prompts) and the API key read from the
environment variable the recipe names, at request time: never in the model arguments, which lm-eval writes into its
results files.
"""
from __future__ import annotations

import os

from lm_eval.models.api_models import JsonChatStr
from lm_eval.models.openai_completions import LocalChatCompletion


class EndpointChat(LocalChatCompletion):
    def __init__(self, api_key_env: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.api_key_env = api_key_env

    @property
    def api_key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else "unused"

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        for request in requests:  # the prompt is the item's chat messages, as JSON: sent as messages
            context, *rest = request.arguments
            request.arguments = (JsonChatStr(context), *rest)
        return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("an OpenAI-compatible chat API gives no log-likelihoods")
