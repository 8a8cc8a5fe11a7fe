"""The paper's dictionary metrics as plain functions of tensors, so each is testable by hand."""

from __future__ import annotations

import math

import torch


def fraction_recovered(loss_original: float, loss_spliced: float, loss_ablated: float) -> float:
    """(L_ablated − L_spliced) / (L_ablated − L_original): 1 = as good as the MLP, 0 = as bad as
    ablating it. NaN when ablating the MLP costs nothing (the ratio is then meaningless)."""
    gap = loss_ablated - loss_original
    return (loss_ablated - loss_spliced) / gap if gap > 0 else math.nan


class Reconstruction:
    """Streaming MSE and FVU. FVU divides the squared error by the variance about the mean of
    the data (not its raw second moment), so the mean predictor scores exactly 1."""

    def __init__(self, d: int):
        self.n, self.d = 0, d
        self.sq_err = 0.0
        self.sum = torch.zeros(d, dtype=torch.float64)
        self.sum_sq = 0.0

    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        x, x_hat = x.reshape(-1, self.d).double(), x_hat.reshape(-1, self.d).double()
        self.n += x.shape[0]
        self.sq_err += float((x_hat - x).pow(2).sum())
        self.sum += x.sum(0).cpu()
        self.sum_sq += float(x.pow(2).sum())

    @property
    def mse(self) -> float:
        return self.sq_err / (self.n * self.d)

    @property
    def fvu(self) -> float:
        variance = self.sum_sq - float(self.sum.pow(2).sum()) / self.n
        return self.sq_err / variance if variance > 0 else math.nan


def density_summary(fire_counts: torch.Tensor, n_tokens: int, ultralow: float, dense: float) -> dict[str, float]:
    """Dead, ultralow-density and dense features from how often each fired on n_tokens.

    The paper's ultralow threshold (1e-6) is finer than an eval set of fewer than 10⁶ tokens
    can resolve: a feature seen once has density 1/n. The threshold used is therefore
    max(ultralow, 1/n_tokens), and a feature counts as ultralow at or below it (alive, but
    rarer than the data can tell apart from once); it is reported beside the fractions.
    """
    density = fire_counts.double() / n_tokens
    threshold = max(ultralow, 1.0 / n_tokens)
    dead = fire_counts == 0
    ultra = ~dead & (density <= threshold)
    n = fire_counts.numel()
    return {
        "dead_features": int(dead.sum()), "dead_fraction": float(dead.sum()) / n,
        "ultralow_features": int(ultra.sum()), "ultralow_fraction": float(ultra.sum()) / n,
        "ultralow_threshold": threshold,
        "dense_features": int((density > dense).sum()), "dense_fraction": float((density > dense).sum()) / n,
        "dense_threshold": dense,
    }


def density_histogram(fire_counts: torch.Tensor, n_tokens: int, bins: int) -> list[dict[str, float]]:
    """Counts of alive features per log10-density bin, from the resolvable floor (1/n) to 1.

    Dead features have no log density; they are counted in density_summary instead."""
    alive = fire_counts[fire_counts > 0].double() / n_tokens
    lo = math.floor(math.log10(1.0 / n_tokens))
    counts = torch.histc(alive.log10(), bins=bins, min=lo, max=0.0) if alive.numel() else torch.zeros(bins)
    width = -lo / bins
    return [{"log10_density": round(lo + (i + 0.5) * width, 4), "features": int(c)} for i, c in enumerate(counts)]
