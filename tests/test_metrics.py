"""Tests for runner.metrics, runner.stats and runner.judge: real computations with hand-checked values."""
from __future__ import annotations

import json
import logging
import socket
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import sacrebleu

from runner.evaluate import judge, stats
from runner.evaluate.judge import JudgeUnavailable
from runner.metrics import registry as metrics

# ---------------------------------------------------------------- metrics


def test_normalize_answer_squad_style():
    assert metrics.normalize_answer("  The Cat, sat!  on a   MAT. ") == "cat sat on mat"
    # articles are removed as whole words only
    assert metrics.normalize_answer("Theatre an anthem") == "theatre anthem"


def test_exact_match():
    assert metrics.exact_match("The Cat!", "cat") == 1.0
    assert metrics.exact_match("an apple.", "Apple") == 1.0
    assert metrics.exact_match("apples", "apple") == 0.0
    assert isinstance(metrics.exact_match("x", "x"), float)


def test_token_f1_hand_checked():
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]
    # overlap 2; precision 2/2 = 1; recall 2/3; F1 = 2*1*(2/3) / (1 + 2/3) = (4/3)/(5/3) = 0.8
    assert metrics.token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # repeated tokens count with multiplicity: pred [cat, cat] vs ref [cat]: overlap 1, P=1/2, R=1, F1=2/3
    assert metrics.token_f1("cat cat", "cat") == pytest.approx(2 / 3)
    assert metrics.token_f1("dog", "cat") == 0.0
    assert metrics.token_f1("Paris.", "paris") == 1.0


def test_token_f1_empty_follows_squad_v1_1():
    # v1.1 returns 0 whenever nothing overlaps, including both-empty (v2.0 would return 1)
    assert metrics.token_f1("", "") == 0.0
    assert metrics.token_f1("the", "a") == 0.0
    assert metrics.exact_match("the", "a") == 1.0  # both normalise to ""


def test_rouge_l_hand_checked():
    # LCS of [the cat sat on the mat] and [the cat lay on the mat] = [the cat on the mat], 5 tokens
    # P = R = 5/6 -> F = 5/6
    assert metrics.rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # Porter stemming: cats -> cat, running -> run
    assert metrics.rouge_l("cats running", "cat run") == pytest.approx(1.0)
    assert metrics.rouge_l("", "anything") == 0.0


def test_rouge_l_argument_order():
    # prediction [a b] vs reference [a b c d]: LCS 2, P = 2/2, R = 2/4, F = 2*1*0.5/1.5 = 2/3 (symmetric in F,
    # so check precision/recall via the shared scorer to be sure the reference is passed as target)
    assert metrics.rouge_l("a b", "a b c d") == pytest.approx(2 / 3)
    score = metrics._rouge_scorer().score("alpha beta gamma delta", "alpha beta")["rougeL"]
    assert score.precision == pytest.approx(1.0) and score.recall == pytest.approx(0.5)


def test_bleu_hand_checked():
    # hyp "a b c d e" vs ref "a b c d f": n-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths so BP = 1
    # BLEU = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 0.2 ** 0.25
    assert metrics.bleu("a b c d e", "a b c d f") == pytest.approx(0.2 ** 0.25)
    assert metrics.corpus_bleu(["a b c d e"], ["a b c d f"]) == pytest.approx(0.2 ** 0.25)
    assert metrics.bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert metrics.bleu("", "the cat") == 0.0


def test_corpus_bleu_equals_sacrebleu():
    preds = ["the cat sat on the mat", "a quick brown fox", "hello world", "it is raining today in paris"]
    refs = ["the cat is on the mat", "the quick brown fox jumps", "hello there world", "today it rains in paris"]
    expected = sacrebleu.corpus_bleu(preds, [refs]).score / 100
    assert metrics.corpus_bleu(preds, refs) == pytest.approx(expected, abs=1e-12)
    # corpus BLEU pools n-gram counts; it is not the mean of sentence BLEUs
    mean_sentence = sum(metrics.bleu(p, r) for p, r in zip(preds, refs, strict=True)) / len(preds)
    assert metrics.corpus_bleu(preds, refs) != pytest.approx(mean_sentence)
    with pytest.raises(ValueError):
        metrics.corpus_bleu(preds, refs[:-1])


def test_score_all():
    out = metrics.score_all(["the cat sat", "Paris"], ["a cat sat down", "paris."], ["exact_match", "token_f1"])
    assert out == {"exact_match": [0.0, 1.0], "token_f1": [pytest.approx(0.8), 1.0]}
    full = metrics.score_all(["x y"], ["x y"], list(metrics.TEXT_METRICS))
    assert all(0.0 <= v[0] <= 1.0 for v in full.values())
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.score_all(["a"], ["a"], ["rouge"])
    with pytest.raises(ValueError):
        metrics.score_all(["a", "b"], ["a"], ["exact_match"])


def test_clean_generation():
    assert metrics.clean_generation("  Paris.\nQuestion: next", ["\n", "Question:"]) == "Paris."
    # the earliest occurrence in the text wins, not the first stop string in the list
    assert metrics.clean_generation("answer ### more\n\nx", ["\n\n", "###"]) == "answer"
    assert metrics.clean_generation("  no stops here ", ["</s>"]) == "no stops here"
    assert metrics.clean_generation("keep", ["", "zzz"]) == "keep"  # empty stop strings are ignored
    assert metrics.clean_generation("</s>", ["</s>"]) == ""


# ---------------------------------------------------------------- stats


def _noisy(n, seed, shift=0.1):
    rng = np.random.default_rng(seed)
    base = rng.random(n)
    ft = np.clip(base + shift + rng.normal(0, 0.3, n), 0, 1)
    return base.tolist(), ft.tolist()


def test_paired_bootstrap_means_and_determinism():
    base, ft = [0.0, 0.5, 1.0, 0.5], [1.0, 0.5, 1.0, 1.0]
    r = stats.paired_bootstrap(base, ft, iters=2000, seed=7)
    assert r["base"] == pytest.approx(0.5) and r["finetuned"] == pytest.approx(0.875)
    assert r["delta"] == pytest.approx(0.375) and r["n"] == 4
    assert r == stats.paired_bootstrap(base, ft, iters=2000, seed=7)
    lo, hi = r["ci95"]
    # resampled mean differences of {1, 0, 0, 0.5} lie in [0, 1]
    assert 0.0 <= lo <= r["delta"] <= hi <= 1.0
    assert stats.paired_bootstrap(base, ft, iters=0)["ci95"] is None


def test_paired_bootstrap_seed_matters_and_chunking_does_not(monkeypatch):
    base, ft = _noisy(200, seed=1)
    a = stats.paired_bootstrap(base, ft, iters=3000, seed=0)
    b = stats.paired_bootstrap(base, ft, iters=3000, seed=1)
    assert a["ci95"] != b["ci95"]
    monkeypatch.setattr(stats, "_CHUNK_CELLS", 1000)  # 5 resamples per chunk instead of all at once
    assert stats.paired_bootstrap(base, ft, iters=3000, seed=0) == a


def test_paired_bootstrap_resamples_items_jointly():
    # finetuned = base + 0.25 on every item: any joint resample has mean difference exactly 0.25,
    # whereas resampling the two lists independently would give a wide interval
    base = [0.0, 0.25, 0.5, 0.75] * 10
    ft = [b + 0.25 for b in base]
    lo, hi = stats.paired_bootstrap(base, ft, iters=1000, seed=3)["ci95"]
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)


def test_paired_bootstrap_ci_contains_delta_and_shrinks():
    widths = []
    for n in (40, 400, 4000):
        base, ft = _noisy(n, seed=n)
        r = stats.paired_bootstrap(base, ft, iters=4000, seed=0)
        lo, hi = r["ci95"]
        assert lo < r["delta"] < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # ~1/sqrt(n): 10x the items gives roughly a 3.16x narrower interval
    assert 2.0 < widths[0] / widths[1] < 5.0 and 2.0 < widths[1] / widths[2] < 5.0


def test_paired_bootstrap_errors():
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError):
        stats.paired_bootstrap([], [])
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1.0], [1.0], iters=-1)


@pytest.mark.parametrize(
    "k,n,expected",
    [
        (0, 10, 2 / 1024),  # 2 * C(10,0) / 2^10 = 0.001953125
        (2, 10, 2 * (1 + 10 + 45) / 1024),  # 0.109375
        (8, 10, 2 * (1 + 10 + 45) / 1024),  # symmetric
        (1, 5, 2 * (1 + 5) / 32),  # 0.375
        (5, 20, 2 * (1 + 20 + 190 + 1140 + 4845 + 15504) / 2**20),  # 0.04138946533203125
        (5, 10, 1.0),  # the most likely outcome
        (3, 6, 1.0),
        (0, 0, 1.0),  # nothing but ties
    ],
)
def test_binomial_p_values(k, n, expected):
    assert stats._binom_two_sided(k, n) == pytest.approx(expected, rel=1e-9)
    assert stats._binom_two_sided_exact(k, n) == pytest.approx(expected, rel=1e-12)


def test_sign_test_counts_and_p():
    base = [0.5] * 13
    ft = [1.0] * 8 + [0.0] * 2 + [0.5] * 3  # 8 wins, 2 losses, 3 ties
    r = stats.sign_test(base, ft)
    assert (r["wins"], r["losses"], r["ties"]) == (8, 2, 3)
    assert r["p_value"] == pytest.approx(0.109375)
    everything_tied = stats.sign_test([0.3, 0.4], [0.3, 0.4])
    assert everything_tied == {"wins": 0, "losses": 0, "ties": 2, "p_value": 1.0}


def test_summarize_shape_and_rounding():
    base = {"exact_match": [0.0, 1.0, 0.0], "token_f1": [1 / 3, 0.5, 0.0]}
    ft = {"exact_match": [1.0, 1.0, 1.0], "token_f1": [2 / 3, 0.5, 0.25]}
    s = stats.summarize(base, ft, iters=500, seed=0)
    assert set(s) == {"exact_match", "token_f1"}
    for entry in s.values():
        assert set(entry) == {"base", "finetuned", "delta", "ci95", "n", "p_sign"}
    em = s["exact_match"]
    assert (em["base"], em["finetuned"], em["delta"], em["n"]) == (0.333333, 1.0, 0.666667, 3)
    assert em["p_sign"] == 0.5  # 2 wins, 0 losses: 2 * (1/2)^2
    assert s["token_f1"]["delta"] == round((1 / 3 + 0.25) / 3, 6)
    assert all(x == round(x, 6) for x in s["token_f1"]["ci95"])
    json.dumps(s)  # plain JSON types
    assert stats.summarize(base, ft, iters=0, seed=0)["exact_match"]["ci95"] is None
    assert stats.summarize(base, ft, iters=500, seed=0) == s


def test_summarize_errors():
    with pytest.raises(ValueError, match="exact_match"):
        stats.summarize({"exact_match": [1.0, 0.0]}, {"exact_match": [1.0]}, iters=10, seed=0)
    with pytest.raises(ValueError):
        stats.summarize({"exact_match": [1.0]}, {"bleu": [1.0]}, iters=10, seed=0)


# ---------------------------------------------------------------- judge: verdicts and both-order logic


@pytest.mark.parametrize(
    "text,expected",
    [
        ("A is better.\n[[A]]", "A"),
        ("[[B]]", "B"),
        ("They are equally good. [[C]]", "tie"),
        ("At first [[A]] seemed right, but on reflection [[B]]", "B"),  # last tag wins
        ("Verdict: [[ A ]]", "A"),
        ("I prefer A.", None),
        ("[A]", None),
        ("[[D]]", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_verdict(text, expected):
    assert judge.parse_verdict(text) == expected


def test_judge_prompt_mentions_verdict_format():
    msgs = judge.judge_messages("Q?", "REF", "ANS-A {braces}", "ANS-B")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert all(tag in msgs[0]["content"] for tag in ("[[A]]", "[[B]]", "[[C]]"))
    user = msgs[1]["content"]
    assert "Q?" in user and "REF" in user and "ANS-A {braces}" in user
    assert user.index("ANS-A") < user.index("ANS-B")


def _fake_judge(verdict_when_base_is_a, verdict_when_ft_is_a, calls):
    """A judge that replies depending on which answer was shown as assistant A."""

    def ask(messages):
        user = messages[-1]["content"]
        a_part = user.split("[The Start of Assistant A's Answer]")[1].split("[The End of Assistant A's Answer]")[0]
        calls.append("BASE" if "BASE-ANSWER" in a_part else "FT")
        tag = verdict_when_base_is_a if "BASE-ANSWER" in a_part else verdict_when_ft_is_a
        return "Some reasoning." + (f"\n[[{tag}]]" if tag else "")

    return ask


VERDICTS = ["A", "B", "C", None]
# (verdict with base shown as A, verdict with fine-tuned shown as A) -> outcome for the fine-tuned model
EXPECTED = {
    ("B", "A"): "win",  # both orders prefer fine-tuned
    ("A", "B"): "loss",  # both orders prefer base
    ("A", "A"): "tie",  # position bias: always A
    ("B", "B"): "tie",  # position bias: always B
    ("C", "C"): "tie",
    ("B", "C"): "tie", ("C", "A"): "tie",  # one order says fine-tuned, the other a tie
    ("A", "C"): "tie", ("C", "B"): "tie",  # one order says base, the other a tie
    ("B", None): "tie", (None, "A"): "tie",  # unparseable verdict counts as a tie
    ("A", None): "tie", (None, "B"): "tie",
    ("C", None): "tie", (None, "C"): "tie", (None, None): "tie",
}


def test_expected_table_covers_every_combination():
    assert set(EXPECTED) == {(a, b) for a in VERDICTS for b in VERDICTS}


@pytest.mark.parametrize("v_base_first,v_ft_first", sorted(EXPECTED, key=str))
def test_judge_pair_both_orders(v_base_first, v_ft_first):
    calls = []
    r = judge.judge_pair("Q", "REF", "BASE-ANSWER", "FT-ANSWER", _fake_judge(v_base_first, v_ft_first, calls))
    assert calls == ["BASE", "FT"]  # asked twice, once per order
    assert r["outcome"] == EXPECTED[(v_base_first, v_ft_first)]
    as_parsed = {"A": "A", "B": "B", "C": "tie", None: None}
    assert r["verdict_base_first"] == as_parsed[v_base_first]
    assert r["verdict_ft_first"] == as_parsed[v_ft_first]
    assert len(r["raw"]) == 2


def test_judge_pair_maps_preferences():
    r = judge.judge_pair("Q", "R", "BASE-ANSWER", "FT-ANSWER", _fake_judge("B", "A", []))
    assert r["preferred"] == ["finetuned", "finetuned"]
    r = judge.judge_pair("Q", "R", "BASE-ANSWER", "FT-ANSWER", _fake_judge("A", "A", []))
    assert r["preferred"] == ["base", "finetuned"]


def test_tally_arithmetic():
    dicts = [{"outcome": "tie"}, {"outcome": "loss"}, {"outcome": "win"}]  # judge_pair results are accepted too
    t = judge.tally(["win", "win", "win", "tie", "loss"] + dicts)
    # 4 wins, 2 ties, 2 losses of 8: win_rate 4/8 = 0.5; adjusted (4 + 0.5*2)/8 = 5/8 = 0.625
    assert t == {"wins": 4, "ties": 2, "losses": 2, "n": 8, "win_rate": 0.5, "adjusted_win_rate": 0.625}
    assert judge.tally([]) == {"wins": 0, "ties": 0, "losses": 0, "n": 0, "win_rate": None,
                               "adjusted_win_rate": None}
    with pytest.raises(ValueError):
        judge.tally(["draw"])


# ---------------------------------------------------------------- judge: OpenAI-compatible asker over real HTTP

PLANTED_KEY = "sk-planted-4e1f9c0d7b2a-DO-NOT-LEAK"


class _ChatHandler(BaseHTTPRequestHandler):
    mode = "ok"  # class attribute switched per test: ok | badjson | 500
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.headers.get("Authorization") != f"Bearer {PLANTED_KEY}":
            return self._send(401, {"error": {"message": "invalid api key"}})
        if self.mode == "500":
            return self._send(500, {"error": {"message": "boom"}})
        if self.mode == "badjson":
            return self._send(200, None, raw=b"<html>not json</html>")
        content = "Assistant B is closer to the reference.\n[[B]]"
        reply = {
            "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
        }
        return self._send(200, reply)

    def _send(self, code, obj, raw=None):
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def chat_server():
    _ChatHandler.mode = "ok"
    _ChatHandler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    # shutdown() waits for serve_forever's next poll: 0.5 s by default, a tenth of that here
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _assert_no_key(exc, caplog, capsys):
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), caplog.text]
    captured = capsys.readouterr()
    texts += [captured.out, captured.err]
    assert all(PLANTED_KEY not in t for t in texts)
    assert exc.__context__ is None and exc.__cause__ is None  # nothing chained that could carry the request


def test_openai_asker_round_trip(chat_server, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", PLANTED_KEY)
    ask = judge.openai_chat_asker(chat_server + "/", "judge-model", api_key_env="JUDGE_KEY_FOR_TEST", timeout=5)
    messages = judge.judge_messages("Q", "R", "a", "b")
    assert ask(messages) == "Assistant B is closer to the reference.\n[[B]]"
    (req,) = _ChatHandler.seen
    assert req["path"] == "/v1/chat/completions"
    assert req["auth"] == f"Bearer {PLANTED_KEY}"
    assert req["body"] == {"model": "judge-model", "messages": messages, "temperature": 0}
    assert PLANTED_KEY not in caplog.text
    out = capsys.readouterr()
    assert PLANTED_KEY not in out.out + out.err


def test_openai_asker_reads_key_at_call_time(chat_server, monkeypatch):
    monkeypatch.delenv("JUDGE_KEY_FOR_TEST", raising=False)
    ask = judge.openai_chat_asker(chat_server, "m", api_key_env="JUDGE_KEY_FOR_TEST", timeout=5)
    with pytest.raises(JudgeUnavailable, match="HTTP 401"):
        ask([{"role": "user", "content": "hi"}])
    assert _ChatHandler.seen[-1]["auth"] is None  # no key set: no Authorization header at all
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", PLANTED_KEY)
    assert judge.parse_verdict(ask([{"role": "user", "content": "hi"}])) == "B"


def test_judge_pair_over_http(chat_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", PLANTED_KEY)
    ask = judge.openai_chat_asker(chat_server, "m", api_key_env="JUDGE_KEY_FOR_TEST", timeout=5)
    r = judge.judge_pair("Q", "R", "base", "ft", ask)
    # the canned judge always says [[B]]: prefers fine-tuned in one order, base in the other -> tie
    assert r["outcome"] == "tie" and r["preferred"] == ["finetuned", "base"]
    assert len(_ChatHandler.seen) == 2


@pytest.mark.parametrize("mode,match", [("500", "HTTP 500"), ("badjson", "unexpected response")])
def test_openai_asker_server_errors(chat_server, monkeypatch, caplog, capsys, mode, match):
    caplog.set_level(logging.DEBUG)
    _ChatHandler.mode = mode
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", PLANTED_KEY)
    ask = judge.openai_chat_asker(chat_server, "m", api_key_env="JUDGE_KEY_FOR_TEST", timeout=5)
    with pytest.raises(JudgeUnavailable, match=match) as info:
        ask([{"role": "user", "content": "hi"}])
    assert chat_server + "/chat/completions" in str(info.value)
    _assert_no_key(info.value, caplog, capsys)


def test_openai_asker_server_down(monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:  # find a free port, then close it so nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", PLANTED_KEY)
    url = f"http://127.0.0.1:{port}/v1"
    ask = judge.openai_chat_asker(url, "m", api_key_env="JUDGE_KEY_FOR_TEST", timeout=5)
    with pytest.raises(JudgeUnavailable) as info:
        ask([{"role": "user", "content": "hi"}])
    assert f"{url}/chat/completions" in str(info.value)
    assert "unreachable" in str(info.value)
    _assert_no_key(info.value, caplog, capsys)


def test_openai_asker_invalid_key_not_echoed(monkeypatch, caplog, capsys):
    # http.client rejects a header value containing a newline with ValueError(repr(value)): that text must not leak
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", PLANTED_KEY + "\nX-Injected: 1")
    ask = judge.openai_chat_asker("http://127.0.0.1:9/v1", "m", api_key_env="JUDGE_KEY_FOR_TEST", timeout=5)
    with pytest.raises(JudgeUnavailable) as info:
        ask([{"role": "user", "content": "hi"}])
    _assert_no_key(info.value, caplog, capsys)


# ---------------------------------------------------------------- judge: local transformers model


@pytest.mark.model
def test_local_model_asker_tiny_random_model(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "<s>", "</s>", "system", "user", "assistant", ":", "[[A]]", "[[B]]", "[[C]]",
             "question", "answer", "reference"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # no system role in this template on purpose: the asker must fold the system prompt into the user turn
    template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
    )
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                bos_token="<s>", eos_token="</s>")
    fast.chat_template = template
    fast.save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)

    ask = judge.local_model_asker(str(tmp_path), max_new_tokens=4)
    msgs = [{"role": "system", "content": "reference answer"}, {"role": "user", "content": "question answer"}]
    with pytest.raises(Exception, match="no system role"):
        fast.apply_chat_template(msgs, add_generation_prompt=True)  # so the asker's fallback path is exercised
    out1, out2 = ask(msgs), ask(msgs)
    assert isinstance(out1, str) and out1 == out2  # greedy decoding is deterministic
    assert len(out1.split()) <= 4
    assert judge.parse_verdict(out1) in {"A", "B", "tie", None}


def test_a_registered_metric_is_usable_by_suites_and_scored_by_the_task_hooks():
    """One definition makes a metric: the suite language accepts it and the lm-eval process_results scores it."""
    from runner.evaluate import task_hooks
    from runner.recipe import suites

    metrics.register(metrics.Metric("shouting", "generation", lambda p, r, _db: float(p.isupper())))
    try:
        import importlib

        importlib.reload(suites)  # the suite language reads the registry when it is defined
        suite = suites.Suite.model_validate({"suite": 1, "name": "s", "version": "1.0.0", "metrics": ["shouting"]})
        assert suite.generation_metrics == ["shouting"]
        scorer = task_hooks.generation_scorer(["shouting"], [])
        assert scorer({"reference": "x"}, ["HELLO"]) == {"shouting": 1.0, "prediction": "HELLO"}
    finally:
        del metrics.REGISTRY["shouting"]
        importlib.reload(suites)


def test_one_rule_gives_every_metric_its_direction():
    from runner.metrics import registry

    assert registry.higher_is_better("sql_execution") and not registry.higher_is_better("perplexity")
    assert not registry.higher_is_better("perplexity", recorded=True)  # the registry wins for its own metrics
    assert registry.higher_is_better("hellaswag/acc,none") and not registry.higher_is_better("wikitext/word_perplexity")
    assert registry.higher_is_better("wikitext/word_perplexity", recorded=True)  # lm-eval's own config wins
