"""Explain and simulate with a language model behind any OpenAI-compatible chat endpoint.

The prompts follow Bills et al. (2023) in spirit: the explainer sees examples as token/activation
lines on a 0–10 scale plus the unit's logit effects; a fresh prompt then gives the simulator the
explanation alone and asks for one 0–10 prediction per held-out token, as JSON. Detection and fuzzing
(after EleutherAI's delphi) ask, from the explanation alone, how likely (0–10) each held-out excerpt
holds what it describes, and whether each excerpt's <<highlighted>> tokens are the ones it describes.
Excerpts come in the order they are given: the caller shuffles them, so that order tells nothing.

Replies are cached on disk by a hash of the request, so a re-run (or a resumed one) costs
nothing. Timeouts, connection errors, 429 and 5xx are retried with exponential backoff (a 429's
Retry-After wins); a reply that does not parse is asked again and never cached. A unit whose
calls all fail gets an error message instead of an explanation or a score — never a made-up one.
The API key lives only in the request header: it is redacted from every message this module makes.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np

from monosemantic.errors import UserError
from monosemantic.interpret.baseline import Explanation
from monosemantic.params import OpenAIParams


class LLMError(Exception):
    pass


class ChatClient:
    def __init__(self, p: OpenAIParams, api_key: str | None, sleep: Callable[[float], None] = time.sleep):
        self.p, self._key, self._sleep = p, api_key, sleep
        self.url = p.base_url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=p.timeout_s, headers=headers)
        self.calls = 0  # requests actually sent (cache hits send none)

    def complete(self, messages: list[dict[str, str]], parse: Callable[[str], Any]) -> Any:
        body = {"model": self.p.model, "messages": messages, "temperature": 0}
        path = Path(self.p.cache_dir) / _digest(body)
        if path.exists():
            try:
                return parse(json.loads(path.read_text())["reply"])
            except (ValueError, KeyError):
                pass  # a damaged entry: ask again
        problem = "no attempt made"
        for attempt in range(self.p.max_retries + 1):
            delay = self.p.backoff_s * 2**attempt
            try:
                self.calls += 1
                r = self._http.post(self.url, json=body)
            except httpx.TimeoutException:
                problem = f"no reply within {self.p.timeout_s}s"
            except httpx.TransportError as e:
                problem = f"cannot reach {self.p.base_url} ({type(e).__name__})"
            else:
                if r.status_code == 429 or r.status_code >= 500:
                    problem = f"HTTP {r.status_code}"
                    delay = _retry_after(r.headers.get("retry-after"), delay)
                elif r.status_code >= 400:
                    raise LLMError(self._redact(f"HTTP {r.status_code} from {self.url}: {r.text[:300]}"))
                else:
                    try:
                        reply = r.json()["choices"][0]["message"]["content"]
                        value = parse(reply)
                    except (ValueError, KeyError, IndexError, TypeError) as e:
                        problem = f"malformed reply ({e})"
                    else:
                        _write(path, {"request": body, "reply": reply})
                        return value
            if attempt < self.p.max_retries:
                self._sleep(delay)
        raise LLMError(self._redact(f"{problem}, after {self.p.max_retries + 1} attempts"))

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


class LLMBackend:
    def __init__(self, client: ChatClient, strings: list[str]):
        self.client, self.strings = client, strings

    def explain_all(self, jobs: list[dict]) -> list[Explanation | str]:
        return self._map(lambda job: Explanation(self.client.complete(self._explain_prompt(job), _parse_explanation)),
                         jobs)

    def simulate_all(self, jobs: list[tuple[Explanation, np.ndarray, np.ndarray]]) -> list[np.ndarray | str]:
        def one(job):
            explanation, tokens, _ = job
            lengths = [len(row) for row in tokens]
            return np.array(self.client.complete(self._simulate_prompt(explanation.text, tokens),
                                                 lambda reply: _parse_simulation(reply, lengths)))
        return self._map(one, jobs)

    def detect_all(self, jobs: list[tuple[Explanation, np.ndarray, np.ndarray]]
                   ) -> list[tuple[np.ndarray, np.ndarray] | str]:
        def one(job):
            explanation, tokens, _ = job
            texts = ["".join(self.strings[t] for t in row) for row in tokens]
            return self._judge(_DETECT_SYSTEM, explanation.text, texts, _DETECT_ASK)
        return self._map(one, jobs)

    def fuzz_all(self, jobs: list[tuple[Explanation, np.ndarray, np.ndarray, np.ndarray]]
                 ) -> list[tuple[np.ndarray, np.ndarray] | str]:
        def one(job):
            explanation, tokens, _, marked = job
            texts = [_highlight([self.strings[t] for t in row], m) for row, m in zip(tokens, marked)]
            return self._judge(_FUZZ_SYSTEM, explanation.text, texts, _FUZZ_ASK)
        return self._map(one, jobs)

    def _judge(self, system: str, explanation: str, texts: list[str], ask: str) -> tuple[np.ndarray, np.ndarray]:
        """A 0-10 answer per excerpt: yes from 5 up, and the answer over 10 as the score."""
        user = (f"Explanation of the neuron: {explanation}\n\nExcerpts, a JSON list of strings:\n"
                f"{json.dumps(texts, ensure_ascii=False)}\n\n{ask}")
        answers = self.client.complete([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                       lambda reply: _parse_answers(reply, len(texts)))
        score = np.array(answers) / 10
        return score >= 0.5, score

    def _map(self, fn, jobs):
        done, t0, last = 0, time.perf_counter(), 0.0

        def safe(job):
            try:
                return fn(job)
            except LLMError as e:
                return str(e)

        results = []
        with ThreadPoolExecutor(self.client.p.max_concurrency) as pool:
            for result in pool.map(safe, jobs):
                results.append(result)
                done += 1
                if time.perf_counter() - last > 10 or done == len(jobs):
                    last = time.perf_counter()
                    print(f"interpret llm: {done}/{len(jobs)} prompts, {self.client.calls} sent "
                          f"(the rest cached), {last - t0:.0f}s", flush=True)
        return results

    def _explain_prompt(self, job: dict) -> list[dict[str, str]]:
        blocks = []
        for tokens, acts in zip(job["tokens"], job["acts10"]):
            lines = "\n".join(f"{self.strings[t]!r}\t{a:.0f}" for t, a in zip(tokens, acts))
            blocks.append(f"<start>\n{lines}\n<end>")
        effects = ""
        if job.get("boosted"):
            effects = (f"\n\nTokens it makes more likely next: {', '.join(map(repr, job['boosted']))}"
                       f"\nTokens it makes less likely next: {', '.join(map(repr, job['suppressed']))}")
        user = (f"Neuron {job['name']}\nActivations (token, then activation on a 0-10 scale):\n"
                + "\n".join(blocks) + effects
                + f"\n\nExplanation of neuron {job['name']} behaviour: the main thing this neuron does is find")
        return [{"role": "system", "content": _EXPLAIN_SYSTEM}, {"role": "user", "content": user}]

    def _simulate_prompt(self, explanation: str, tokens: np.ndarray) -> list[dict[str, str]]:
        excerpts = json.dumps([[self.strings[t] for t in row] for row in tokens], ensure_ascii=False)
        user = (f"Explanation of the neuron: {explanation}\n\nExcerpts, each a JSON list of tokens:\n{excerpts}\n\n"
                'Reply with JSON only: {"activations": [[...], ...]}, one list per excerpt holding one '
                "integer from 0 to 10 per token, predicting the neuron's activation on that token.")
        return [{"role": "system", "content": _SIMULATE_SYSTEM}, {"role": "user", "content": user}]


_EXPLAIN_SYSTEM = ("We're studying neurons in a neural network. Each neuron looks for some particular thing in a "
                   "short document. Look at the parts of the document the neuron activates for and summarize in "
                   "a single sentence what the neuron is looking for. Don't list examples of words.")
_SIMULATE_SYSTEM = ("We're studying neurons in a neural network. Given an explanation of what a neuron looks for, "
                    "predict how strongly it activates on each token of new text, from 0 (not at all) to 10.")

_DETECT_SYSTEM = ("We're studying neurons in a neural network. Given an explanation of what a neuron looks for, "
                  "judge for each text excerpt whether the neuron activates anywhere in it.")
_DETECT_ASK = ('Reply with JSON only: {"answers": [...]}, one integer from 0 to 10 per excerpt: how likely the '
               "neuron activates in that excerpt (0: surely not, 10: surely).")
_FUZZ_SYSTEM = ("We're studying neurons in a neural network. Given an explanation of what a neuron looks for, "
                "judge text excerpts in which some tokens are marked <<like this>>.")
_FUZZ_ASK = ('Reply with JSON only: {"answers": [...]}, one integer from 0 to 10 per excerpt: how likely the '
             "marked tokens are the ones the neuron activates on, as the explanation describes (0: surely not, "
             "10: surely).")


def _highlight(tokens: list[str], marked: np.ndarray) -> str:
    """The excerpt's text with each run of marked tokens inside << >>."""
    out = []
    for i, t in enumerate(tokens):
        if marked[i] and (i == 0 or not marked[i - 1]):
            out.append("<<")
        out.append(t)
        if marked[i] and (i + 1 == len(tokens) or not marked[i + 1]):
            out.append(">>")
    return "".join(out)


def api_key(p: OpenAIParams) -> str | None:
    """The key from the environment variable named in params (checked before any work starts)."""
    if p.api_key_env is None:
        return None
    key = os.environ.get(p.api_key_env)
    if not key:
        raise UserError(f"interpret.backend is 'openai' but the environment variable {p.api_key_env} is not set: "
                        "export it, or set interpret.openai.api_key_env: null for a server that needs no key")
    return key


def _parse_explanation(reply: str) -> str:
    text = " ".join(reply.split())
    if not text or len(text) > 1000:
        raise ValueError(f"expected one sentence, got {len(text)} characters")
    return text


def _parse_simulation(reply: str, lengths: list[int]) -> list[float]:
    match = re.search(r"\{.*\}", reply, re.DOTALL)
    if match is None:
        raise ValueError("no JSON object in the reply")
    rows = json.loads(match.group(0))["activations"]
    if [len(r) for r in rows] != lengths:
        raise ValueError(f"expected lists of lengths {lengths}, got {[len(r) for r in rows]}")
    return [[min(max(float(v), 0.0), 10.0) for v in r] for r in rows]


def _parse_answers(reply: str, n: int) -> list[float]:
    match = re.search(r"\{.*\}", reply, re.DOTALL)
    if match is None:
        raise ValueError("no JSON object in the reply")
    answers = json.loads(match.group(0))["answers"]
    if len(answers) != n:
        raise ValueError(f"expected {n} answers, got {len(answers)}")
    return [min(max(float(v), 0.0), 10.0) for v in answers]


def _retry_after(header: str | None, default: float) -> float:
    if not header:
        return default
    try:
        return min(float(header), 300.0)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return default
        return min(max((when - datetime.now(timezone.utc)).total_seconds(), 0.0), 300.0)


def _digest(body: dict) -> str:
    key = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"{key[:2]}/{key}.json"


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{id(data)}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False))
    tmp.replace(path)
