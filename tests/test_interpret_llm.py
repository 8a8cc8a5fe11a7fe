"""The OpenAI-compatible backend against a small chat-completions server started on 127.0.0.1."""

import json
import re
import secrets
import socket
import subprocess
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import polars as pl
import pytest

from monosemantic.interpret import Explanation
from monosemantic.interpret.llm import ChatClient, LLMBackend, LLMError
from monosemantic.params import OpenAIParams
from tests.conftest import BIN, ENV, clone_repo, set_params, sh

KEY = "sk-test-" + secrets.token_hex(12)  # made at run time: the test file itself is in the repo
BIN_PY = str(BIN / "python")


class FakeChat:
    """Answers like a chat model; `script` lists what to do with the next requests (then: answer)."""

    def __init__(self):
        self.script: list = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append({"auth": self.headers.get("Authorization"), "body": body})
                    action = fake.script.pop(0) if fake.script else "answer"
                if action == "sleep":
                    time.sleep(1.0)
                    action = "answer"
                if action == "429":
                    return self._send(429, {"error": "slow down"}, {"Retry-After": "2"})
                if action == "401":
                    return self._send(401, {"error": f"bad key {self.headers.get('Authorization')}"})
                content = "this is not JSON" if action == "garbage" else fake.answer(body["messages"])
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

            def _send(self, status, payload, headers=()):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in dict(headers).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up, as the timeout test intends

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def answer(messages) -> str:
        """A neuron for digits: it explains so (in words that differ per prompt, so a control's simulation
        is never the same prompt as the unit's own), simulates 10 on tokens with a digit, detects excerpts with
        one, and takes a highlight as right when every marked span has one."""
        user = messages[-1]["content"]
        if "Excerpts" not in user:
            return f"digits and capital letters, as in encoded data (variant {zlib.crc32(user.encode()) % 997})"
        if "JSON list of strings" in user:
            texts = json.loads(user.split("JSON list of strings:\n", 1)[1].split("\n\nReply", 1)[0])
            if "marked" in user:
                answers = [10 if all(map(_digit, re.findall("<<(.*?)>>", t))) else 0 for t in texts]
            else:
                answers = [10 if _digit(t) else 0 for t in texts]
            return json.dumps({"answers": answers})
        excerpts = json.loads(user.split("JSON list of tokens:\n", 1)[1].split("\n\nReply", 1)[0])
        acts = [[10 if _digit(t) else 0 for t in row] for row in excerpts]
        return "```json\n" + json.dumps({"activations": acts}) + "\n```"


def _digit(text: str) -> bool:
    return any(c.isdigit() for c in text)


@pytest.fixture
def chat():
    fake = FakeChat()
    yield fake
    fake.server.shutdown()


def client(chat, tmp_path, sleeps=None, **kw):
    """A generous timeout by default: on a loaded 2-core CI machine the fake server can take over 0.5 s."""
    kw = {"timeout_s": 10.0, "max_retries": 2, "backoff_s": 0.01} | kw
    p = OpenAIParams(base_url=chat.url if chat else "http://127.0.0.1:9/v1", model="m",
                     cache_dir=str(tmp_path / "cache"), **kw)
    return ChatClient(p, KEY, sleep=(sleeps.append if sleeps is not None else lambda s: None))


STRINGS = ["a", "b", "7", "Q9", " x"]
TOKENS = np.array([[0, 2, 1, 3], [4, 4, 2, 0]])


def test_explain_and_simulate_then_the_cache_answers(chat, tmp_path):
    backend = LLMBackend(client(chat, tmp_path), STRINGS)
    job = {"name": "feature 3", "tokens": TOKENS, "before": np.array([-1, 0]), "acts10": np.ones(TOKENS.shape),
           "boosted": ["7"], "suppressed": ["a"]}
    [explanation] = backend.explain_all([job])
    assert explanation.text.startswith("digits")
    [sim] = backend.simulate_all([(explanation, TOKENS, None)])
    np.testing.assert_array_equal(sim, [[0, 10, 0, 10], [0, 0, 10, 0]])
    assert len(chat.requests) == 2 and all(r["auth"] == f"Bearer {KEY}" for r in chat.requests)
    prompt = chat.requests[0]["body"]["messages"][1]["content"]
    assert "'7'\t1" in prompt and "more likely next: '7'" in prompt
    again = LLMBackend(client(chat, tmp_path), STRINGS)  # a re-run: every reply comes from the cache
    assert again.explain_all([job])[0] == explanation and len(chat.requests) == 2
    assert again.client.calls == 0


def test_detection_and_fuzzing_ask_for_one_answer_per_excerpt(chat, tmp_path):
    backend = LLMBackend(client(chat, tmp_path), STRINGS)
    explanation = Explanation("digits")
    [(detected, score)] = backend.detect_all([(explanation, TOKENS, None)])
    assert detected.tolist() == [True, True] and score.tolist() == [1.0, 1.0]
    marked = np.array([[False, True, False, True], [True, False, False, False]])
    [(right, _)] = backend.fuzz_all([(explanation, TOKENS, None, marked)])
    assert right.tolist() == [True, False]
    prompt = chat.requests[-1]["body"]["messages"][1]["content"]
    assert '["a<<7>>b<<Q9>>", "<< x>> x7a"]' in prompt  # runs of marked tokens inside << >>
    chat.script = ["garbage"] * 3
    [failed] = backend.detect_all([(Explanation("other"), TOKENS, None)])
    assert isinstance(failed, str) and "malformed reply" in failed


def _subject():
    """Sparse random activations of 6 neurons over 80 contexts with separators, a small model of that width,
    and interpret params small enough for a few requests per unit."""
    from monosemantic.model import Transformer, TransformerConfig
    from monosemantic.params import InterpretParams

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    strings = [f"w{i}" for i in range(30)] + [f"{i}0" for i in range(10)] + ["<|endoftext|>"]
    n_ctx, ctx, d = 80, 16, 6
    tokens = rng.integers(0, 40, n_ctx * ctx).astype(np.int32)
    tokens[rng.random(len(tokens)) < 0.03] = 40
    acts = (rng.random((n_ctx * ctx, d)) * (rng.random((n_ctx * ctx, d)) < 0.2)).astype(np.float16)
    model = Transformer(TransformerConfig(vocab_size=len(strings), ctx=ctx, d_model=16, n_heads=2, d_mlp=d)).eval()
    p = InterpretParams(batch_tokens=256, top_examples=4, intervals=3, interval_examples=1, random_examples=3,
                        top_tokens=1, token_contexts=1, window_before=3, window_after=2, histogram_bins=5,
                        min_contexts=2, features=3, split_block_contexts=2)
    return acts, tokens, ctx, d, model, strings, p


def test_held_out_windows_reach_the_llm_in_an_order_unrelated_to_activation(chat, tmp_path):
    """Ranked best first, a simulator could score from the order alone; shuffled, the top window is first
    no more often than chance and position does not follow activation."""
    from scipy import stats

    from monosemantic.interpret import interpret_dictionary
    from monosemantic.sae.standard import Standard

    acts, tokens, ctx, d, model, strings, p = _subject()
    sae = Standard(d, 8)
    r = interpret_dictionary(acts, 0, tokens, ctx, sae, model, strings, {},
                             LLMBackend(client(chat, tmp_path), strings), p)
    held = r.examples.filter(pl.col("split") == "heldout")
    peak = {}  # unit -> {window: its max activation}
    for row in held.iter_rows(named=True):
        peak.setdefault((row["kind"], row["index"]), {})[tuple(row["tokens"])] = max(row["acts"])
    first, rhos = [], []
    for request in chat.requests:
        user = request["body"]["messages"][-1]["content"]
        if "JSON list of tokens" not in user:
            continue
        shown = [tuple(w) for w in json.loads(user.split("JSON list of tokens:\n", 1)[1].split("\n\nReply", 1)[0])]
        [unit] = [u for u, windows in peak.items() if set(windows) == set(shown)]
        maxima = [peak[unit][w] for w in shown]
        first.append(maxima[0] == max(maxima))
        rhos.append(stats.spearmanr(np.arange(len(maxima)), maxima)[0])
    assert len(first) == 2 * (p.features + d), len(first)  # each unit's own simulation and a control's
    assert np.mean(first) < 0.5 and abs(np.nanmean(rhos)) < 0.25, (first, rhos)
    assert r.metrics["neurons"]["mean_detection_balanced_accuracy"] is not None
    again = LLMBackend(client(chat, tmp_path), strings)  # the order is seeded: a re-run asks the cached prompts
    interpret_dictionary(acts, 0, tokens, ctx, sae, model, strings, {}, again, p)
    assert again.client.calls == 0


def test_a_second_dictionary_pays_only_for_its_features(chat, tmp_path):
    """The neurons are the same units beside every dictionary: after one dictionary, another of a different
    size sends exactly the requests its features alone send, and its neuron rows are the first one's."""
    from monosemantic.interpret import interpret_dictionary
    from monosemantic.sae.standard import Standard

    acts, tokens, ctx, d, model, strings, p = _subject()

    def run(sae, cache, **kw):
        backend = LLMBackend(client(chat, tmp_path / cache), strings)
        r = interpret_dictionary(acts, 0, tokens, ctx, sae, model, strings, {}, backend, p.model_copy(update=kw))
        return r, backend.client.calls

    first, _ = run(Standard(d, 8), "shared")
    second = Standard(d, 20)
    _, features_only = run(second, "alone", neurons=False)
    again, calls = run(second, "shared")
    assert 0 < features_only == calls
    neurons = [r.features.filter(pl.col("kind") == "neuron") for r in (first, again)]
    assert neurons[0]["score_pearson"].null_count() == 0 and neurons[0].equals(neurons[1], null_equal=True)


def test_a_timeout_is_retried(chat, tmp_path):
    chat.script = ["sleep"]
    c = client(chat, tmp_path, timeout_s=0.5)
    assert c.complete([{"role": "user", "content": "hi"}], str) and c.calls == 2


def test_429_waits_as_long_as_retry_after_says(chat, tmp_path):
    chat.script = ["429", "429"]
    sleeps = []
    assert client(chat, tmp_path, sleeps).complete([{"role": "user", "content": "hi"}], str)
    assert sleeps == [2.0, 2.0]


def test_a_malformed_reply_is_asked_again_then_recorded_as_a_failure(chat, tmp_path):
    chat.script = ["garbage"]
    backend = LLMBackend(client(chat, tmp_path), STRINGS)
    [sim] = backend.simulate_all([(Explanation("x"), TOKENS, None)])
    assert sim.shape == TOKENS.shape  # the second answer parsed
    chat.script = ["garbage"] * 3
    [failed] = backend.simulate_all([(Explanation("y"), TOKENS, None)])
    assert isinstance(failed, str) and "malformed reply" in failed and "after 3 attempts" in failed
    cached = [json.loads(p.read_text())["reply"] for p in (tmp_path / "cache").rglob("*.json")]
    assert "this is not JSON" not in cached  # a bad reply is never cached


def test_server_down_is_a_recorded_failure(tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OpenAIParams(base_url=f"http://127.0.0.1:{port}/v1", timeout_s=0.5, max_retries=1, backoff_s=0,
                     cache_dir=str(tmp_path / "c"))
    [out] = LLMBackend(ChatClient(p, KEY, sleep=lambda s: None), STRINGS).explain_all(
        [{"name": "n", "tokens": TOKENS, "acts10": np.zeros(TOKENS.shape)}])
    assert isinstance(out, str) and "cannot reach" in out


def test_the_key_is_redacted_from_errors(chat, tmp_path):
    chat.script = ["401"]
    with pytest.raises(LLMError) as e:
        client(chat, tmp_path).complete([{"role": "user", "content": "hi"}], str)
    assert "HTTP 401" in str(e.value) and KEY not in str(e.value) and "***" in str(e.value)


@pytest.mark.e2e
def test_interpret_stage_with_the_openai_backend_leaks_no_key(repo, tmp_path, chat):
    path = clone_repo(repo, tmp_path / "r")

    def use_openai(raw):
        raw["interpret"] |= {"backend": "openai", "features": 10, "neurons": False,
                             "openai": {"base_url": chat.url, "model": "fake", "api_key_env": "FAKE_LLM_KEY",
                                        "max_concurrency": 4, "backoff_s": 0.0}}
    set_params(path, use_openai)
    missing = sh(BIN_PY, "-m", "stages.interpret", "standard-128", cwd=path, check=False)
    assert missing.returncode == 2 and "FAKE_LLM_KEY is not set" in missing.stderr
    env = {**ENV, "FAKE_LLM_KEY": KEY}
    res = subprocess.run([BIN_PY, "-m", "stages.interpret", "standard-128"], cwd=path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((path / "metrics/sae/standard-128/interp.json").read_text())
    assert m["backend"] == "openai" and m["features"]["scored"] == 10 and m["features"]["failed"] == 0
    assert all(r["auth"] == f"Bearer {KEY}" for r in chat.requests)
    for f in [p for p in path.rglob("*") if p.is_file()]:
        assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in res.stdout + res.stderr



def test_a_key_is_never_sent_over_plain_http_to_another_host_without_an_opt_in():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="allow_insecure_http: true"):
        OpenAIParams(base_url="http://llm.example.com/v1", api_key_env="FAKE_LLM_KEY")
    assert OpenAIParams(base_url="http://llm.example.com/v1", api_key_env="FAKE_LLM_KEY", allow_insecure_http=True)
    assert OpenAIParams(base_url="http://127.0.0.1:8000/v1", api_key_env="FAKE_LLM_KEY")  # as the tests above
