"""Hypothesis proxies: which tokens a feature for a hypothesis (base64, DNA, ...) should fire on.

A proxy marks character spans of a context's decoded text (a regex's matches, or a user
callable's spans); a token is positive when its characters overlap a span. Labelling the text
rather than the tokens lets a regex say "inside a base64 blob" however the tokenizer cut it.
"""

from __future__ import annotations

import importlib
import re
from typing import Callable, Iterable

import numpy as np

from monosemantic.errors import UserError
from monosemantic.params import Proxy

Detector = Callable[[str], Iterable[tuple[int, int]]]

def detector(proxy: Proxy) -> Detector:
    if proxy.regex is not None:
        pattern = re.compile(proxy.regex)
        return lambda text: (m.span() for m in pattern.finditer(text))
    module, _, name = proxy.callable.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"interpret.proxies {proxy.name!r}: cannot import {proxy.callable!r} ({e}); "
                        "make the module importable (installed, or on PYTHONPATH) or fix the name") from None
    if not callable(fn):
        raise UserError(f"interpret.proxies {proxy.name!r}: {proxy.callable!r} is not callable")
    return fn


def token_labels(contexts: np.ndarray, strings: list[str], detectors: list[Detector]) -> np.ndarray:
    """bool ``[n_contexts * ctx, n_proxies]``: does each token overlap a detector's span?"""
    n, ctx = contexts.shape
    labels = np.zeros((n, ctx, len(detectors)), dtype=bool)
    lengths = np.array([len(s) for s in strings])
    for i, row in enumerate(contexts):
        text = "".join(strings[t] for t in row)
        ends = np.cumsum(lengths[row])
        starts = ends - lengths[row]
        for j, detect in enumerate(detectors):
            mask = np.zeros(len(text) + 1, dtype=np.int64)
            for a, b in detect(text):
                mask[a] += 1
                mask[b] -= 1
            covered = np.concatenate([[0], np.cumsum(np.cumsum(mask)[:-1] > 0)])
            labels[i, :, j] = covered[ends] > covered[starts]
    return labels.reshape(n * ctx, len(detectors))
