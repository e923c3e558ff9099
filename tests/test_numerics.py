"""One decision for how a run's model computes (runner.models.numerics): `recipe generate`, `recipe chat`,
`recipe serve` and eval load and run it alike, whatever ran before in the process.

The served answer once differed from `recipe generate`'s for the same run (test_serve.py's end-to-end test, in a full
`make test` on a bf16 CPU): transformers' loading of the served folder rounded the float32 LoRA weights to the
model's bf16, where peft (generate, lm-eval) keeps them in float32, and the in-process generate also inherited its
caller's autocast, thread count and default dtype; a near tie in the tiny model's logits showed it."""
from __future__ import annotations

from contextlib import contextmanager

import pytest

from runner.core import cpufeatures
from runner.models import numerics
from runner.recipe import loading
from tests.helpers import make_eval_run, offline_workspace

QUESTIONS = ("Name a colour.", "Write a haiku.", "What is 2+2?")


@contextmanager
def _leaked_state():
    """What a long test session may leave behind in its process: another thread count, bf16 as the default dtype,
    bf16 autocast switched on (and not off). Yields that state; the process's own is restored after."""
    import torch

    threads, default = torch.get_num_threads(), torch.get_default_dtype()
    autocast, autocast_dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    leaked = numerics.default_threads() + 1
    torch.set_num_threads(leaked)
    torch.set_default_dtype(torch.bfloat16)
    torch.set_autocast_enabled("cpu", True)
    torch.set_autocast_dtype("cpu", torch.bfloat16)
    try:
        yield leaked, torch.bfloat16, True
    finally:
        torch.set_autocast_enabled("cpu", autocast)
        torch.set_autocast_dtype("cpu", autocast_dtype)
        torch.set_default_dtype(default)
        torch.set_num_threads(threads)


def _state():
    import torch

    return torch.get_num_threads(), torch.get_default_dtype(), torch.is_autocast_enabled("cpu")


def test_the_decision_reads_the_recipe_and_the_machine_never_the_process_state(monkeypatch):
    monkeypatch.delenv(numerics.THREADS_ENV, raising=False)
    recipe = loading.load("tiny-cpu").recipe
    fresh = numerics.decide(recipe)
    with _leaked_state():
        assert numerics.decide(recipe) == fresh
    assert (fresh.autocast, fresh.padding_side, fresh.adapter_dtype, fresh.batch_size) == (False, "left", "float32", 1)
    assert (fresh.device, fresh.dtype) == numerics.device_and_dtype(recipe)
    assert numerics.decide(recipe, recipe.eval.batch_size).batch_size == recipe.eval.batch_size  # eval batches
    monkeypatch.setenv(numerics.THREADS_ENV, "3")  # as the trainer's fixed thread count
    assert numerics.decide(recipe).threads == 3


def test_a_model_runs_in_the_decided_state_and_the_caller_gets_its_own_back():
    import torch

    how = numerics.Numerics(device="cpu", dtype="bfloat16", threads=numerics.default_threads())
    with _leaked_state() as leaked:
        with how.applied():
            assert _state() == (how.threads, torch.float32, False)
        assert _state() == leaked


def _scores(model, pair, question: str) -> tuple:
    """The scores of each token a model generates greedily for the question, as `recipe generate` prompts it."""
    ids = pair.tokenizer(pair.render(question), add_special_tokens=False, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True,
                         pad_token_id=pair.tokenizer.eos_token_id, tokenizer=pair.tokenizer, stop_strings=pair.stop)
    return tuple(out.scores)


def _same(scores: tuple, other: tuple) -> bool:
    import torch

    return len(scores) == len(other) and all(torch.equal(a, b) for a, b in zip(scores, other, strict=True))


@pytest.mark.model
def test_generate_and_the_server_compute_the_same_scores_whatever_ran_before(tmp_path, monkeypatch):
    """bf16 (on any CPU here: where the paths used to part) and a run with a non-zero float32 LoRA adapter: the model
    `recipe generate` loads and the one `recipe serve` loads score every token alike, bit for bit, and go on doing so
    (loaded again too) after the process state changed as a test session may leave it; the server answers as
    generate does."""
    import torch
    from fastapi.testclient import TestClient

    from runner.evaluate import generate
    from runner.serve import folder, server

    monkeypatch.setattr(cpufeatures, "missing_bf16", lambda *args, **kwargs: None)
    with offline_workspace(tmp_path, {}):
        run, recipe = make_eval_run()
        pair = generate.load_pair(run, max_new_tokens=8)
        models = server.load(folder.prepare(run))
        served = next(iter(models.loaded_models.values())).model
        fresh = _scores(pair.finetuned, pair, QUESTIONS[0])
        assert _same(_scores(served, pair, QUESTIONS[0]), fresh)  # the served model computes what generate's does
        with _leaked_state() as leaked:
            again = generate.load_pair(run, max_new_tokens=8)  # loaded in the changed state
            for model in (pair.finetuned, served, again.finetuned):
                assert _same(_scores(model, pair, QUESTIONS[0]), fresh)
            answers = [again.finetuned_answer(again.render(q)) for q in QUESTIONS]
            with TestClient(server.app_for(models)) as client:  # generates on a thread of its own
                replies = [client.post("/v1/chat/completions", json={
                    "model": recipe.name, "messages": [{"role": "user", "content": q}], "temperature": 0,
                    "max_tokens": 8}).json()["choices"][0]["message"]["content"] for q in QUESTIONS]
            assert replies == answers and all(answers)
            assert _state() == leaked  # the caller's own state, back after every load and answer
    assert pair.numerics == again.numerics == numerics.decide(recipe) and pair.numerics.dtype == "bfloat16"
    assert {p.dtype for n, p in served.named_parameters() if "lora_" in n} == {torch.float32}
