"""The sparse autoencoder of Towards Monosemanticity, with SAELens's parameter layout.

    x̄ = x − b_dec;  f = ReLU(x̄ W_enc + b_enc);  x̂ = f W_dec + b_dec
    loss = mean over elements of (x̂ − x)² + λ · Σ_features |f|, averaged over the batch

``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``: row i of W_dec is feature i's direction
(the paper's "decoder column"), kept at unit norm.

Speed: a trained dictionary fires on ~1% of its features per input, so of the training step's
five B×d_in×d_sae products only the encoder's needs to be dense. `forward` evaluates the formula
above with `_Autoencode`, which differentiates it by hand and, while f is sparse, computes the
decoder and all of backward from f's nonzeros alone; values and gradients are the formula's.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Output(NamedTuple):
    x_hat: torch.Tensor
    f: torch.Tensor
    loss: torch.Tensor
    mse: torch.Tensor
    l1: torch.Tensor


class SparseAutoencoder(nn.Module):
    sparse_below = 0.1  # _Autoencode works on f's nonzeros while fewer than this fraction of f fire

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
        if x.requires_grad or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
            f = self.encode(x)  # the formula through autograd
            x_hat = self.decode(f)
        else:  # the same, differentiated by hand so that a sparse f makes it cheap
            x_hat, f = _Autoencode.apply(x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.sparse_below)
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


class _Autoencode(torch.autograd.Function):
    """(x̂, f) = (ReLU(x̄ W_enc + b_enc) W_dec + b_dec, f), x̄ = x − b_dec, with a hand-written backward.

    With x̂' = ∂L/∂x̂ and G = ∂L/∂f · [f > 0] (the gradient at the pre-activation):
        ∂L/∂f = x̂' W_decᵀ + (∂L/∂f from the L1 term),  ∂L/∂W_dec = fᵀ x̂',  ∂L/∂W_enc = x̄ᵀ G,
        ∂L/∂b_enc = Σ_rows G,  ∂L/∂b_dec = Σ_rows x̂' − W_enc ∂L/∂b_enc.
    f and G vanish off f's nonzeros (r, c). While fewer than `sparse_below` of f are nonzero, every
    product after the encoder's runs on those entries alone, O(nnz·d_in) instead of B·d_sae·d_in:
    the decoder, fᵀx̂' and x̄ᵀG are embedding bags (sums of table rows weighted by the nonzeros,
    grouped by input or by feature) and x̂' W_decᵀ is wanted only at (r, c), a sampled product.
    Otherwise the same products run dense. CPU; x gets no gradient.
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, sparse_below):
        x_bar = x - b_dec
        f = torch.addmm(b_enc, x_bar, W_enc).relu_()  # the one dense product
        active = f > 0
        ctx.sparse = bool(torch.count_nonzero(active) < sparse_below * f.numel())
        ctx.set_materialize_grads(False)
        if not ctx.sparse:
            ctx.save_for_backward(x_bar, W_enc, W_dec, f)
            return torch.addmm(b_dec, f, W_dec), f
        rows, cols = active.nonzero().T.contiguous()  # the nonzeros, input by input (CSR order)
        vals, by_row = f[rows, cols], _bounds(rows, len(f))
        ctx.save_for_backward(x_bar, W_enc, W_dec, rows, cols, vals, by_row)
        return _bag_sums(cols, W_dec, by_row, vals) + b_dec, f  # x̂[r] = Σ_c f[r, c] W_dec[c] + b_dec

    @staticmethod
    def backward(ctx, g_xhat, g_f):
        if g_xhat is None:  # only f was used
            g_xhat = torch.zeros_like(ctx.saved_tensors[0])
        if not ctx.sparse:
            x_bar, W_enc, W_dec, f = ctx.saved_tensors
            G = g_xhat @ W_dec.T
            G = (G if g_f is None else G + g_f) * (f > 0)
            g_W_dec, g_W_enc, g_b_enc = f.T @ g_xhat, x_bar.T @ G, G.sum(0)
        else:
            x_bar, W_enc, W_dec, rows, cols, vals, by_row = ctx.saved_tensors
            G = _product_at(g_xhat, W_dec, by_row, cols)  # x̂' W_decᵀ at the nonzeros
            G = G if g_f is None else G + g_f[rows, cols]
            # The nonzeros feature by feature (CSC order). numpy: torch's parallel sort takes ~30x longer on
            # two busy cores.
            order = torch.from_numpy(np.argsort(cols.numpy(), kind="stable"))
            by_col, rows_by_col = _bounds(cols, len(W_dec)), rows[order]
            g_W_dec = _bag_sums(rows_by_col, g_xhat, by_col, vals[order])  # [c] = Σ_r f[r, c] x̂'[r]
            g_W_enc = _bag_sums(rows_by_col, x_bar, by_col, G[order]).T  # [:, c] = Σ_r G[r, c] x̄[r]
            g_b_enc = G.new_zeros(len(W_dec)).index_add_(0, cols, G)
        return None, g_W_enc, g_b_enc, g_W_dec, g_xhat.sum(0) - W_enc @ g_b_enc, None


def _bounds(ids: torch.Tensor, n: int) -> torch.Tensor:
    """Where each of 0..n-1 starts and ends in the sorted `ids`: n + 1 offsets."""
    return F.pad(torch.bincount(ids, minlength=n).cumsum(0), (1, 0))


def _bag_sums(index: torch.Tensor, table: torch.Tensor, bounds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Row b: Σ weights[k] · table[index[k]] over bounds[b] <= k < bounds[b + 1]."""
    return F.embedding_bag(index, table, bounds, per_sample_weights=weights, mode="sum", include_last_offset=True)


def _product_at(a: torch.Tensor, b: torch.Tensor, by_row: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(a bᵀ)[r, c] at the entries (r, c) listed in CSR form only: O(entries · d_in), no dense product."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta": all we use is sampled_addmm
        warnings.simplefilter("ignore")
        at = torch.sparse_csr_tensor(by_row, cols, a.new_zeros(len(cols)), (len(a), len(b)), check_invariants=False)
    return torch.sparse.sampled_addmm(at, a, b.T, beta=0).values()


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
