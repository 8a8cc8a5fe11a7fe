"""The sparse autoencoder of Towards Monosemanticity, with SAELens's parameter layout.

    x̄ = x − b_dec;  f = ReLU(x̄ W_enc + b_enc);  x̂ = f W_dec + b_dec
    loss = mean over elements of (x̂ − x)² + λ · Σ_features |f|, averaged over the batch

``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``: row i of W_dec is feature i's direction
(the paper's "decoder column"), kept at unit norm.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


class Output(NamedTuple):
    x_hat: torch.Tensor
    f: torch.Tensor
    loss: torch.Tensor
    mse: torch.Tensor
    l1: torch.Tensor


class SparseAutoencoder(nn.Module):
    def __init__(self, d_in: int, d_sae: int):
        super().__init__()
        self.d_in, self.d_sae = d_in, d_sae
        # Kaiming-uniform, untied; decoder rows then normalised to unit length.
        self.W_enc = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(d_sae, d_in), a=math.sqrt(5)).T.contiguous())
        self.W_dec = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(d_sae, d_in), a=math.sqrt(5)))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.normalize_decoder()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor, l1_coefficient: float = 0.0) -> Output:
        f = self.encode(x)
        x_hat = self.decode(f)
        mse = (x_hat - x).pow(2).mean()
        l1 = f.sum(-1).mean()  # f >= 0, so |f| = f
        return Output(x_hat, f, mse + l1_coefficient * l1, mse, l1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Drop the part of each decoder row's gradient along the row, before the optimiser step."""
        if self.W_dec.grad is not None:
            g, w = self.W_dec.grad, self.W_dec
            g -= (g * w).sum(dim=1, keepdim=True) * w


@torch.no_grad()
def geometric_median(points: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    median = points.mean(0)
    for _ in range(iters):
        dist = (points - median).norm(dim=1).clamp_min(1e-8)
        weights = 1 / dist
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - median).norm() < tol * max(1.0, median.norm().item()):
            return new
        median = new
    return median
