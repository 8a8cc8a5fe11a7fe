"""Positions that SAE training, evaluation and interpretation leave out.

Real language models spend a few positions on bookkeeping: the BOS or separator token, and
"attention sinks" (often the first position of a context) whose activations have tens to thousands
of times the norm of an ordinary token's. Left in, they dominate the reconstruction loss and buy
dictionary features of their own, and they crowd the top examples of every unit that fires there.
Two rules, each counted separately: a position holding one of the tokenizer's special tokens, and a
position whose stored activation norm exceeds `norm_factor` times the median norm. The median is
taken once, over the first `median_tokens` cached tokens that are not special, and recorded in the
store, so a resumed or data-parallel cache applies exactly the same threshold.

The cache keeps every position (the model reads whole contexts) and stores a boolean ``keep`` per
token row beside the activations; readers skip the rows where it is False.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from monosemantic.errors import UserError

HF_NORM_FACTOR = 10.0  # attention sinks sit one to three orders of magnitude above the median norm
RULES = ("special_tokens", "norm_outliers")


@dataclass(frozen=True)
class Exclusion:
    special_ids: tuple[int, ...] = ()
    norm_factor: float | None = None
    median_tokens: int = 65_536

    @property
    def active(self) -> bool:
        return bool(self.special_ids) or self.norm_factor is not None

    def special(self, tokens: np.ndarray) -> np.ndarray:
        return np.isin(tokens, self.special_ids)

    def rules(self, tokens: np.ndarray, norms: np.ndarray, median: float | None) -> dict[str, np.ndarray]:
        """Each rule's verdict per position (True: excluded), for `tokens` and their activation `norms`."""
        outlier = (norms > self.norm_factor * median if self.norm_factor is not None
                   else np.zeros(len(norms), dtype=bool))
        return {"special_tokens": self.special(tokens), "norm_outliers": outlier}

    def median_norm(self, tokens: np.ndarray, norms: np.ndarray) -> float | None:
        """The median norm of the non-special positions among `tokens`: the norm rule's unit (None when off)."""
        if self.norm_factor is None:
            return None
        ordinary = norms[~self.special(tokens)]
        median = float(np.median(ordinary)) if len(ordinary) else 0.0
        if not median > 0:
            raise UserError(f"the median activation norm over the first {len(tokens):,} cached tokens is "
                            f"{median}: activations.exclude.norm_factor has no scale to measure outliers "
                            "against; set it to null (or raise activations.exclude.median_tokens)")
        return median


def exclusion(special_tokens: str | bool, norm_factor: str | float | None, median_tokens: int, source: str,
              special_ids: Iterable[int]) -> Exclusion:
    """The rules params ask for ("auto" resolved for the model `source`); `special_ids` are the tokenizer's.

    "auto" turns both rules on for a Hugging Face model (special tokens, and norms above 10 x the
    median) and off for the built-in one: the paper trains on every position, and there the separator
    is an ordinary document boundary with an ordinary activation norm (and the defaults keep the
    built-in pipeline's results unchanged)."""
    hf = source == "hf"
    special = hf if special_tokens == "auto" else special_tokens
    factor = (HF_NORM_FACTOR if hf else None) if norm_factor == "auto" else norm_factor
    return Exclusion(tuple(sorted(int(i) for i in special_ids)) if special else (), factor, median_tokens)
