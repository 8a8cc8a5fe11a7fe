"""Universality: do two subject models that differ only in their seed learn the same features?

For every feature of dictionary A (trained on model A) its best match in dictionary B (the same
size, trained the same way on model B): the highest Pearson correlation of the two features'
activations over the same held-out tokens. Likewise for every MLP neuron of model A against
model B's neurons. The paper (A/1 against B/1) finds median best-match correlations of 0.72
for features and 0.46 for neurons: features are far more universal than neurons.

Memory stays bounded for any dictionary size: only the hooked activations ``x [n_tokens, d]``
are held (n_tokens is a parameter); features are encoded from them a block of features at a
time, and correlations are accumulated per (block of A, block of B) over blocks of tokens.

Deviations from the paper: it does not say which tokens it correlates on; here they are
held-out contexts that neither model nor dictionary was trained on. Units constant on those
tokens (dead features, dead neurons) have no correlation and are left out, and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl
import torch
from torch import nn
from tqdm import tqdm

from monosemantic.errors import UserError
from monosemantic.model.hooks import capture
from monosemantic.sae.model import Dictionary


@dataclass(frozen=True)
class Units:
    """`width` activation signals over the rows (tokens) of `x`, computed a block of units at a
    time by `block(rows of x, slice of units)`, so that a large dictionary is never held whole."""

    x: torch.Tensor
    width: int
    block: Callable[[torch.Tensor, slice], torch.Tensor]


def neurons(x: torch.Tensor) -> Units:
    """The columns of `x` themselves: the subject model's neurons."""
    return Units(x, x.shape[1], lambda rows, units: rows[:, units])


def features(x: torch.Tensor, sae: Dictionary) -> Units:
    """The dictionary's feature activations on `x`: Dictionary.encode_units, a slice of features at a time."""
    return Units(x, sae.d_sae, lambda rows, units: sae.encode_units(rows, units).detach())


@dataclass(frozen=True)
class BestMatch:
    """Per unit of A: the highest correlation with any unit of B, and that unit's index.

    A unit that is constant on the tokens (a feature that never fires) has no correlation:
    its entry is NaN and its match -1."""

    correlation: torch.Tensor  # float64 [width of A]
    match: torch.Tensor  # int64 [width of A]

    @property
    def compared(self) -> torch.Tensor:
        return self.correlation[~self.correlation.isnan()]

    def summary(self) -> dict[str, float | int]:
        c = self.compared.numpy()
        return {"median": float(np.median(c)), "mean": float(c.mean()), "compared": len(c),
                "excluded_dead": len(self.correlation) - len(c)}


def _moments(u: Units, token_block: int, unit_block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (float64) of every unit, and which units are constant."""
    n = len(u.x)
    s, ss = torch.zeros(u.width, dtype=torch.float64), torch.zeros(u.width, dtype=torch.float64)
    lo = torch.full((u.width,), math.inf, dtype=torch.float64)
    hi = torch.full((u.width,), -math.inf, dtype=torch.float64)
    for j in range(0, u.width, unit_block):
        units = slice(j, j + unit_block)
        for t in range(0, n, token_block):
            a = u.block(u.x[t : t + token_block], units).double()
            s[units] += a.sum(0)
            ss[units] += a.square().sum(0)
            lo[units] = torch.minimum(lo[units], a.amin(0))
            hi[units] = torch.maximum(hi[units], a.amax(0))
    mean = s / n
    var = (ss / n - mean.square()).clamp_min(0)
    constant = (hi == lo) | (var == 0)  # min == max is exact; var == 0 catches float64 rounding
    return mean, torch.where(constant, 1.0, var.sqrt()), constant


@torch.no_grad()
def best_match(a: Units, b: Units, token_block: int = 4096, unit_block: int = 4096, desc: str = "correlate",
               ) -> BestMatch:
    """For every unit of `a`, its highest Pearson correlation with a unit of `b` over the same tokens.

    Two passes: float64 means and standard deviations, then the standardised signals' cross
    products, a (block of a) x (block of b) tile at a time summed over token blocks. Each token
    block's product is a float32 matmul (the expensive part; on standardised signals its
    relative error is ~1e-6), summed in float64. Units of `b` that are constant are never a match.
    Memory: a tile of unit_block² float64 plus two token_block x unit_block blocks.
    """
    n = len(a.x)
    if len(b.x) != n:
        raise ValueError(f"a and b must cover the same tokens, got {n} and {len(b.x)}")
    mean_a, std_a, dead_a = _moments(a, token_block, unit_block)
    mean_b, std_b, dead_b = _moments(b, token_block, unit_block)
    for side, u, dead in (("A", a, dead_a), ("B", b, dead_b)):
        if bool(dead.all()):
            raise UserError(f"{desc}: none of the {u.width} units of {side} varies over these {n} tokens (all dead): "
                            "raise universality.max_tokens, or train the models and dictionaries longer")

    def z(u: Units, mean, std, rows: slice, units: slice) -> torch.Tensor:
        return ((u.block(u.x[rows], units).double() - mean[units]) / std[units]).float()

    best = torch.full((a.width,), -math.inf, dtype=torch.float64)
    match = torch.full((a.width,), -1, dtype=torch.long)
    tiles = -(-a.width // unit_block) * -(-b.width // unit_block) * -(-n // token_block)
    bar = tqdm(total=tiles, desc=desc, unit="tile")
    for i in range(0, a.width, unit_block):
        ua = slice(i, min(i + unit_block, a.width))
        for j in range(0, b.width, unit_block):
            ub = slice(j, min(j + unit_block, b.width))
            cross = torch.zeros(ua.stop - ua.start, ub.stop - ub.start, dtype=torch.float64)
            for t in range(0, n, token_block):
                rows = slice(t, t + token_block)
                cross += (z(a, mean_a, std_a, rows, ua).T @ z(b, mean_b, std_b, rows, ub)).double()
                bar.update(1)
            corr = (cross / n).masked_fill(dead_b[ub], -math.inf)
            top, idx = corr.max(dim=1)
            better = top > best[ua]
            best[ua] = torch.where(better, top, best[ua])
            match[ua] = torch.where(better, idx + j, match[ua])
    bar.close()
    return BestMatch(best.clamp(-1, 1).masked_fill(dead_a, math.nan), match.masked_fill(dead_a, -1))


@torch.no_grad()
def hooked_activations(model: nn.Module, hook: str, contexts: np.ndarray, batch_seqs: int = 64) -> torch.Tensor:
    """The activations at `hook` on every token of `contexts` [n_seq, ctx], as float32 [n_seq * ctx, d]."""
    out = [capture(model, hook, torch.from_numpy(np.asarray(contexts[i : i + batch_seqs])).long()).float().flatten(0, 1)
           for i in range(0, len(contexts), batch_seqs)]
    return torch.cat(out)


def universality(model_a: nn.Module, model_b: nn.Module, sae_a: Dictionary, sae_b: Dictionary,
                 hook: str, contexts: np.ndarray, batch_seqs: int = 64) -> dict[str, BestMatch]:
    """Best matches of A's features among B's, and of A's neurons among B's, on the same `contexts`."""
    xa = hooked_activations(model_a, hook, contexts, batch_seqs)
    xb = hooked_activations(model_b, hook, contexts, batch_seqs)
    return {"features": best_match(features(xa, sae_a), features(xb, sae_b), desc="features"),
            "neurons": best_match(neurons(xa), neurons(xb), desc="neurons")}


def histogram(matches: dict[str, BestMatch], bins: int = 20) -> list[dict[str, float]]:
    """Counts of best-match correlations in `bins` bins over [0, 1], one column per entry of `matches`.

    A best match below 0 (no unit of B correlates positively) is counted in the first bin."""
    counts = {name: torch.histc(m.compared.clamp(0, 1).float(), bins=bins, min=0.0, max=1.0)
              for name, m in matches.items()}
    return [{"correlation": round((i + 0.5) / bins, 4), **{name: int(c[i]) for name, c in counts.items()}}
            for i in range(bins)]


def match_table(matches: dict[str, BestMatch]) -> pl.DataFrame:
    """One row per unit of A: its kind (an entry of `matches`), best match in B and correlation."""
    return pl.concat([pl.DataFrame({
        "kind": [kind] * len(m.match), "unit": pl.Series(range(len(m.match)), dtype=pl.Int32),
        "match": pl.Series(m.match.numpy(), dtype=pl.Int32), "correlation": m.correlation.numpy(),
    }) for kind, m in matches.items()])
