"""JumpReLU: Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
JumpReLU Sparse Autoencoders" (arXiv:2407.14435), the recipe of Gemma Scope (Lieberum et al. 2024).

    x' = s·x, one constant s for the whole dataset such that E‖x'‖² = 1
    z = x' W_enc + b_enc;  f' = JumpReLU_θ(z) = z · H(z − θ);  x̂' = f' W_dec + b_dec
    loss = ‖x̂' − x'‖² (summed over dimensions) + λ · ‖f'‖₀, averaged over the batch

θ > 0 is a learned per-feature threshold, trained as log θ from `threshold_init`. H has no useful
derivative, so θ learns through the paper's straight-through estimators with the rectangle kernel
K(u) = 1[|u| < ½] of bandwidth ε:
    ∂JumpReLU_θ(z)/∂θ := −(θ/ε) K((z − θ)/ε),   ∂H(z − θ)/∂θ := −(1/ε) K((z − θ)/ε)
and z gets the ordinary gradient of JumpReLU (H(z − θ)) and none from the L0 term. As the paper's
equation for f: no pre-encoder bias. Decoder rows at unit norm (parallel gradient removed, rows
renormalised after each step) from Kaiming-uniform, W_enc = W_decᵀ at init, biases zero (the
L0 term does not see decoder norms, so the constraint only fixes W_dec's scale). Adam (β1 = 0,
β2 = 0.999); no resampling, no gradient clipping.

Speed: on CPU the training step is differentiated by hand (`_Autoencode`), with the same
estimators: one pass over z finds the entries above the window's lower edge, and while few are,
the decoder and every backward product run on them alone, as the ReLU family's
(monosemantic.sae.model).

Units: training runs on x'; `encode`, `decode` and `forward` take and return x in its own units,
with features f = f'/s: f = JumpReLU_{θ/s}(x W_enc + b_enc/s), x̂ = f W_dec + b_dec/s. The SAELens
"jumprelu" export is that form (threshold θ/s); cfg.json keeps s as `input_scale`.

Differences from the paper (and Gemma Scope, which states the training details):
- Sparsity-coefficient warm-up (paper: linear over the first 10,000 steps), learning-rate warm-up
  (Gemma Scope: cosine from 0.1η over 1,000 steps; ours linear from 0) and any decay are the shared
  schedule's (sae.train). The learning rate is params.yaml's sae.jumprelu.lr, 0.01 (paper: 7e-5 at
  batch 4096 for 8B tokens), and θ starts at 0.05 (paper: 0.001): in a run of thousands of steps,
  log θ moves too little from 0.001 for the L0 penalty to bite (README, "Dictionary architectures").
- s is estimated on the trainer's initial sample (up to 32,768 inputs), not the whole dataset.
- `mse` in the Output is the mean over elements in x's units (the same measure for every
  architecture); the loss itself is the paper's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from monosemantic.sae.model import (Dictionary, Output, _bag_sums, _bounds, _entries_above, _product_at,
                                     _sparse_weight_grads, by_hand)

INPUT_SCALE = "input_scale"  # cfg.json field: the s folded into the exported weights


class JumpReLU(Dictionary):
    architecture = "jumprelu"
    adam_betas = (0.0, 0.999)
    sparse_below = 0.25  # its dense step costs more than ReLU's: sparse/dense 0.89 at 25%, 1.08 at 30%

    def __init__(self, d_in: int, d_sae: int, l0_coefficient: float = 1e-3, bandwidth: float = 1e-3,
                 threshold_init: float = 1e-3):
        super().__init__(d_in, d_sae, coefficient=l0_coefficient)  # unit-norm Kaiming-uniform decoder rows
        self.bandwidth, self.threshold_init = bandwidth, threshold_init
        with torch.no_grad():
            self.W_enc.copy_(self.W_dec.T)
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(threshold_init)))
        self.register_buffer(INPUT_SCALE, torch.ones(()))  # s; set by `initialize`

    def options(self) -> dict:
        return {"l0_coefficient": self.coefficient, "bandwidth": self.bandwidth, "threshold_init": self.threshold_init}

    @torch.no_grad()
    def initialize(self, sample: torch.Tensor) -> None:
        """s such that the sample's mean squared norm is 1 (b_dec stays at zero: the paper's)."""
        self.input_scale.copy_(sample.float().pow(2).sum(1).mean().clamp_min(1e-24).rsqrt())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.W_enc + self.b_enc / self.input_scale
        return z * (z > self.log_threshold.exp() / self.input_scale)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec / self.input_scale

    def forward(self, x: torch.Tensor, coefficient: float = 0.0, dead: torch.Tensor | None = None) -> Output:
        s, theta = self.input_scale, self.log_threshold.exp()
        x_s = x * s
        if by_hand(x):
            x_hat_s, f, l0 = _Autoencode.apply(x_s, self.W_enc, self.b_enc, self.W_dec, self.b_dec, theta,
                                               self.bandwidth, self.sparse_below, s)
        else:  # the formula through autograd, with the estimators' backward
            z = x_s @ self.W_enc + self.b_enc
            f_s = _JumpReLU.apply(z, theta, self.bandwidth)
            x_hat_s = f_s @ self.W_dec + self.b_dec
            f, l0 = f_s / s, _Step.apply(z, theta, self.bandwidth).sum(-1).mean()  # ‖f'‖₀
        sse = (x_hat_s - x_s).pow(2).sum(-1).mean()  # summed over dimensions, in x' units
        mse = sse / (self.d_in * s * s)  # mean over elements, in x's units
        return Output(x_hat_s / s, f, sse + coefficient * l0, mse, l0)

    def sae_lens_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        s = self.input_scale
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc / s, "W_dec": self.W_dec, "b_dec": self.b_dec / s,
                   "threshold": self.log_threshold.exp() / s}
        return {"architecture": "jumprelu", "apply_b_dec_to_input": False, INPUT_SCALE: s.item()}, tensors

    @classmethod
    def from_sae_lens_state(cls, d_in, d_sae, options, cfg, tensors) -> "JumpReLU":
        sae = cls(d_in, d_sae, **options)
        s = torch.tensor(float(cfg.get(INPUT_SCALE, 1.0)))
        t = {k: v.float() for k, v in tensors.items()}
        sae.load_state_dict({"W_enc": t["W_enc"], "b_enc": t["b_enc"] * s, "W_dec": t["W_dec"], "b_dec": t["b_dec"] * s,
                             "log_threshold": (t["threshold"] * s).log(), INPUT_SCALE: s})
        return sae


def _window(z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """K((z − θ)/ε) / ε, the rectangle kernel's estimate of the density of z at θ."""
    return ((z - theta).abs() < bandwidth / 2).to(z.dtype) / bandwidth


class _JumpReLU(torch.autograd.Function):
    """z · H(z − θ); ∂/∂z = H(z − θ), ∂/∂θ := −θ K((z − θ)/ε)/ε (straight-through)."""

    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        return g * (z > theta), -(theta * _window(z, theta, ctx.bandwidth) * g).sum(0), None


class _Step(torch.autograd.Function):
    """H(z − θ); ∂/∂z = 0, ∂/∂θ := −K((z − θ)/ε)/ε (straight-through)."""

    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        return None, -(_window(z, theta, ctx.bandwidth) * g).sum(0), None


class _Autoencode(torch.autograd.Function):
    """(x̂', f'/s, ‖f'‖₀ averaged over the batch) with z = x' W_enc + b_enc, f' = z · H(z − θ),
    x̂' = f' W_dec + b_dec, differentiated by hand as the two estimators above and, while f' is
    sparse, from its nonzeros alone, as `monosemantic.sae.model._Autoencode` (see there). f comes
    back in x's units (f'/s): divided at its nonzeros, not over the whole batch.

    With D = ∂L/∂f' = x̂' W_decᵀ + (∂L/∂f' from outside): ∂L/∂z = D · H(z − θ), and θ's
    pseudo-derivative needs D only where |z − θ| < ε/2 (the kernel's window), a sampled product:
        ∂L/∂θ_c = −(θ_c/ε) Σ_{r in window} D[r, c] − (∂L/∂‖f'‖₀ / (B ε)) · #{r in window}.
    Both sets lie among the entries above θ − ε/2, where the sparse path samples D once.
    No pre-encoder bias, so ∂L/∂b_dec = Σ_rows x̂'. CPU; x gets no gradient.
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, theta, bandwidth, sparse_below, s):
        z = torch.addmm(b_enc, x, W_enc)  # the one dense product
        h = bandwidth / 2
        # the firing entries (z > θ) and the window's (|z − θ| < ε/2) are among those above θ − ε/2
        above = _entries_above(z, theta - h, sparse_below)  # input by input
        ctx.sparse, ctx.bandwidth = above is not None, bandwidth
        ctx.set_materialize_grads(False)
        if not ctx.sparse:
            fires = z > theta
            f = z * fires
            window = ((z > theta - h) & (z < theta + h)).nonzero().T.contiguous()
            ctx.save_for_backward(x, W_dec, theta, s, f, *window)
            return torch.addmm(b_dec, f, W_dec), f / s, z.new_tensor(int(fires.sum()) / len(x))
        r, c, at = above
        z_rc, theta_c = z.view(-1).index_select(0, at), theta.index_select(0, c)
        fires, near = (z_rc > theta_c).nonzero().squeeze(1), (z_rc < theta_c + h).nonzero().squeeze(1)
        rows, cols, vals = r.index_select(0, fires), c.index_select(0, fires), z_rc.index_select(0, fires)
        f = z.zero_()  # z's buffer, already in memory: a fresh one cost ~1 ms of page faults per step
        f.view(-1).index_copy_(0, at.index_select(0, fires), vals / s)
        ctx.save_for_backward(x, W_dec, theta, s, r, c, _bounds(r, len(x)), fires, near, rows, cols, vals)
        return _bag_sums(cols, W_dec, _bounds(rows, len(x)), vals) + b_dec, f, z.new_tensor(len(rows) / len(x))

    @staticmethod
    def backward(ctx, g_xhat, g_f, g_l0):
        x, W_dec, theta, s = ctx.saved_tensors[:4]
        if g_xhat is None:
            g_xhat = torch.zeros(len(x), W_dec.shape[1], dtype=x.dtype)
        if not ctx.sparse:
            f, w_rows, w_cols = ctx.saved_tensors[4:]
            D = g_xhat @ W_dec.T
            D = D if g_f is None else D + g_f / s
            G = torch.ops.aten.threshold_backward(D, f, 0)  # D·[f > 0] in one pass: f > 0 where it fires (θ > 0)
            g_W_dec, g_W_enc, g_b_enc = f.T @ g_xhat, x.T @ G, G.sum(0)
            D_window = D[w_rows, w_cols]
        else:
            r, c, by_r, fires, near, rows, cols, vals = ctx.saved_tensors[4:]
            D = _product_at(g_xhat, W_dec, by_r, c)  # at every entry above θ − ε/2
            D = D if g_f is None else D + g_f[r, c] / s
            G, D_window, w_cols = D.index_select(0, fires), D.index_select(0, near), c.index_select(0, near)
            g_W_enc, g_b_enc, g_W_dec = _sparse_weight_grads(x, g_xhat, rows, cols, vals, G, len(W_dec))
        eps = ctx.bandwidth
        g_theta = -(theta / eps) * theta.new_zeros(len(theta)).index_add_(0, w_cols, D_window)
        if g_l0 is not None:
            g_theta -= g_l0 / (len(x) * eps) * torch.bincount(w_cols, minlength=len(theta)).to(theta.dtype)
        return None, g_W_enc, g_b_enc, g_W_dec, g_xhat.sum(0), g_theta, None, None, None
