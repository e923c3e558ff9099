"""A GGUF file scored by llama.cpp, the engine that runs it in production, as an lm-evaluation-harness model.

lm-eval's own `gguf` model talks to a llama.cpp server over HTTP and asks it for logprobs; here the file is loaded
in-process with llama-cpp-python, so no server, port or network is involved. The held-out prompts arrive exactly as
the recipe rendered them (special tokens such as <|im_start|> parsed as tokens, no BOS added: templates write it),
answers are greedy with the same stop strings and max_gen_toks as every other candidate, and loglikelihood scores
the continuation's tokens as lm-eval's `hf` model splits context and continuation.
"""
from __future__ import annotations

import math
from pathlib import Path

from lm_eval.api.model import LM


class LlamaCppLM(LM):
    def __init__(self, gguf: Path, threads: int, context_length: int | None = None, default_max_gen_toks: int = 256):
        super().__init__()
        from llama_cpp import Llama

        self.path = Path(gguf)
        self.settings = {"model_path": str(self.path), "n_ctx": context_length or 0, "n_threads": threads,
                         "n_threads_batch": threads, "seed": 0, "verbose": False}
        self.model = Llama(**self.settings)  # answers: logits of the last position only
        self._scorer = None  # log-likelihoods: every position's logits (logits_all), loaded when first asked
        self.max_gen_toks = default_max_gen_toks
        self.add_bos_token = False  # harness sets it per call, as on lm-eval's hf model
        self.generated_tokens = 0

    def tokens(self, text: str) -> list[int]:
        return self.model.tokenize(text.encode("utf-8"), add_bos=self.add_bos_token, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            self.model.reset()
            answer = self.model.create_completion(
                self.tokens(context), max_tokens=int(kwargs.get("max_gen_toks", self.max_gen_toks)), temperature=0.0,
                top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, stop=until or None, seed=0)
            out.append(answer["choices"][0]["text"])
            self.generated_tokens += answer["usage"]["completion_tokens"]
        return out

    def _score(self, context: str, continuation: str) -> tuple[float, bool]:
        import numpy as np

        spaces = len(context) - len(context.rstrip())  # as lm-eval's hf model: trailing spaces join the continuation
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokens(context + continuation)
        n_context = len(self.tokens(context)) if context else 0
        n_context = max(1, min(n_context, len(whole) - 1))
        if self._scorer is None:
            from llama_cpp import Llama

            self._scorer = Llama(**self.settings, logits_all=True)
        self._scorer.reset()
        self._scorer.eval(whole)
        logits = np.asarray(self._scorer.scores[: len(whole)], dtype=np.float64)
        logprob, greedy = 0.0, True
        for position in range(n_context, len(whole)):
            row = logits[position - 1]
            top = row.max()
            log_norm = top + math.log(float(np.exp(row - top).sum()))
            logprob += float(row[whole[position]] - log_norm)
            greedy = greedy and int(row.argmax()) == whole[position]
        return logprob, greedy

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return [self._score(*request.args) for request in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("rolling loglikelihood is not offered for GGUF candidates")
