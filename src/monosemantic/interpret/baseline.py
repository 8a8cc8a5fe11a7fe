"""The offline explainer and simulator: token and context statistics, deterministic.

The explainer reads only the training examples (on the 0–10 scale) and tries a few kinds of
hypothesis — the current token, the token before it, the pair, the token's shape (which
character classes it is made of), and two combinations — as lookup tables of mean activation.
It keeps the kind that predicts best across two halves of its examples (fit on one, test on the
other), so a table that only memorises does not win. The explanation is that table written as
a sentence plus the table itself; the simulator predicts from the table alone, and so do the
judges of detection and fuzzing: an excerpt holds the pattern where the table applies in it, and a
highlight is right where the table applies to most of its tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from monosemantic.interpret.scoring import pearson

KINDS = ("token", "previous", "bigram", "shape")
CANDIDATES = (("token",), ("previous",), ("bigram",), ("token", "previous"), ("shape",), ("token", "shape"))
_CLASSES = {"U": "capitals", "l": "lower-case letters", "d": "digits", "s": "spaces", "n": "newlines",
            "p": "punctuation"}


@dataclass(frozen=True)
class Explanation:
    text: str
    form: dict = field(default_factory=dict)  # kind -> [[key, value 0-10], ...]; empty for an LLM's text


def shape(s: str) -> str:
    """The character classes a token is made of, e.g. "Uld" for a base64 chunk."""
    seen = set()
    for ch in s:
        seen.add("n" if ch == "\n" else "s" if ch.isspace() else "U" if ch.isupper() else
                 "l" if ch.islower() else "d" if ch.isdigit() else "p")
    return "".join(c for c in _CLASSES if c in seen)


class Baseline:
    def __init__(self, strings: list[str], min_count: int = 2, max_entries: int = 20, shown: int = 6):
        self.strings = strings
        self.shapes = sorted({shape(s) for s in strings})
        self.shape_of = np.array([self.shapes.index(shape(s)) for s in strings], dtype=np.int64)
        self.min_count, self.max_entries, self.shown = min_count, max_entries, shown

    def keys(self, tokens: np.ndarray, before: np.ndarray) -> dict[str, np.ndarray]:
        """Each kind's key at every position of ``tokens [E, W]``; -1 where unknown."""
        tokens = tokens.astype(np.int64)
        prev = np.concatenate([before.astype(np.int64)[:, None], tokens[:, :-1]], axis=1)
        return {"token": tokens, "previous": prev,
                "bigram": np.where(prev >= 0, prev * len(self.strings) + tokens, -1),
                "shape": self.shape_of[tokens]}

    def explain_all(self, jobs: list[dict]) -> list[Explanation]:
        return [self.explain(j["tokens"], j["before"], j["acts10"]) for j in jobs]

    def simulate_all(self, jobs: list[tuple[Explanation, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [self.simulate(e.form, tokens, before) for e, tokens, before in jobs]

    def detect_all(self, jobs: list[tuple[Explanation, np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per excerpt: does the unit activate in it, and the largest value the table predicts there."""
        out = []
        for e, tokens, before in jobs:
            peak = self.simulate(e.form, tokens, before).max(1)
            out.append((peak > 0, peak))
        return out

    def fuzz_all(self, jobs: list[tuple[Explanation, np.ndarray, np.ndarray, np.ndarray]]
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per excerpt: are the highlighted tokens (``marked [E, W]``) the unit's, and the share of them the
        table predicts."""
        out = []
        for e, tokens, before, marked in jobs:
            hit = self.simulate(e.form, tokens, before) > 0
            share = (hit & marked).sum(1) / np.maximum(marked.sum(1), 1)
            out.append((share >= 0.5, share))
        return out

    def explain(self, tokens: np.ndarray, before: np.ndarray, acts10: np.ndarray) -> Explanation:
        keys = self.keys(tokens, before)
        halves = [np.arange(len(tokens)) % 2 == h for h in (0, 1)]
        best, best_score = CANDIDATES[0], -np.inf
        for kinds in CANDIDATES:
            score = 0.0
            for fit, test in (halves, halves[::-1]):
                tables = {k: self._table(keys[k][fit], acts10[fit]) for k in kinds}
                score += pearson(_predict(tables, {k: keys[k][test] for k in kinds}), acts10[test]) / 2
            if score > best_score + 1e-9:
                best, best_score = kinds, score
        tables = {k: self._table(keys[k], acts10) for k in best}
        form = {k: [[int(key), round(float(v), 2)] for key, v in zip(*t)] for k, t in tables.items()}
        return Explanation(self._sentence(form), form)

    def simulate(self, form: dict, tokens: np.ndarray, before: np.ndarray) -> np.ndarray:
        keys = self.keys(tokens, before)
        tables = {k: (np.array([e[0] for e in v], dtype=np.int64), np.array([e[1] for e in v]))
                  for k, v in form.items()}
        return _predict(tables, {k: keys[k] for k in tables}) if tables else np.zeros(tokens.shape)

    def _table(self, keys: np.ndarray, acts10: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys seen at least `min_count` times whose mean activation is at least 1 of 10."""
        k, a = keys.ravel(), acts10.ravel()
        ok = k >= 0
        if not ok.any():
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        uniq, inv = np.unique(k[ok], return_inverse=True)
        n = np.bincount(inv)
        mean = np.bincount(inv, weights=a[ok]) / n
        idx = np.flatnonzero((n >= self.min_count) & (mean >= 1.0))
        idx = idx[np.lexsort((-n[idx], -mean[idx]))][: self.max_entries]
        return uniq[idx], mean[idx]

    def _sentence(self, form: dict) -> str:
        def tok(i: int) -> str:
            return json.dumps(self.strings[i], ensure_ascii=False)

        def listed(entries, show) -> str:
            more = len(entries) - self.shown
            items = ", ".join(f"{show(k)} ({v:.0f})" for k, v in entries[: self.shown])
            return items + (f" and {more} more" if more > 0 else "")

        v = len(self.strings)
        parts = {
            "token": lambda e: "the tokens " + listed(e, tok),
            "previous": lambda e: "the token right after " + listed(e, tok),
            "bigram": lambda e: listed(e, lambda k: f"{tok(k % v)} right after {tok(k // v)}"),
            "shape": lambda e: "tokens made of " + listed(
                e, lambda k: " and ".join(_CLASSES[c] for c in self.shapes[k]) or "nothing"),
        }
        said = [parts[k](e) for k, e in form.items() if e]
        if not said:
            return "No token or context pattern stands out in the examples."
        return "Fires on " + "; also on ".join(said) + " (mean activation, 0-10)."


def _predict(tables: dict[str, tuple[np.ndarray, np.ndarray]], keys: dict[str, np.ndarray]) -> np.ndarray:
    """The largest table value that applies at each position (0 where none does)."""
    out = None
    for kind, (table_keys, values) in tables.items():
        k = keys[kind]
        pred = np.zeros(k.shape)
        if len(table_keys):
            order = np.argsort(table_keys)
            pos = np.clip(np.searchsorted(table_keys[order], k), 0, len(order) - 1)
            hit = table_keys[order][pos] == k
            pred = np.where(hit, values[order][pos], 0.0)
        out = pred if out is None else np.maximum(out, pred)
    return out
