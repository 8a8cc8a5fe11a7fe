"""Matryoshka dictionaries: Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning Multi-Level
Features with Matryoshka Sparse Autoencoders" (arXiv:2503.17547); Nabeshima 2024, "Matryoshka
Sparse Autoencoders" (LessWrong / AI Alignment Forum).

    f = BatchTopK_{k·B}(ReLU(x̄ W_enc + b_enc))  as BatchTopK (monosemantic.sae.batchtopk)
    x̂_m = f[:, :m] W_dec[:m] + b_dec  for each prefix width m in M = {prefixes · d_sae} ∪ {d_sae}
    loss = mean over m ∈ M of MSE(x̂_m, x) / Var(x) + α · AuxK

Every prefix of the dictionary must reconstruct the input on its own, so the first latents
learn the general, frequent features and later ones refine them rather than absorbing them.
The whole dictionary is the last prefix; inference, θ, AuxK (on the whole dictionary's
residual), initialisation, decoder constraint and the SAELens export ("jumprelu") are
BatchTopK's. The inner prefixes' reconstructions are sums over f's nonzeros (embedding bags),
O(nonzeros · d_in) for all of them together, not dense products; on CPU their MSEs are
differentiated by hand (`_InnerMSEs`).

Differences from the papers:
- The mean over the prefixes, where Bussmann et al. write the sum: the loss stays on one
  reconstruction's scale, as the other architectures', so α keeps its meaning (under Adam the
  two differ only in AuxK's relative weight).
- Fixed prefixes (`prefixes`, fractions of d_sae), as Bussmann et al.; Nabeshima samples them.
- What BatchTopK's docstring lists (data-parallel batch top-k, θ's estimate, Gao et al.'s
  normalisation and initialisation).
"""

from __future__ import annotations

import torch

from monosemantic.sae.batchtopk import BatchTopK
from monosemantic.sae.model import Output, _bag_sums, _bounds, _by_column, _product_at, by_hand


class Matryoshka(BatchTopK):
    architecture = "matryoshka"

    def __init__(self, d_in: int, d_sae: int, k: int = 32, aux_k: int | None = None, aux_coefficient: float = 1 / 32,
                 threshold_beta: float = 0.999, prefixes: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2)):
        super().__init__(d_in, d_sae, k, aux_k, aux_coefficient, threshold_beta)
        self.prefixes = list(prefixes)
        self.widths = sorted({max(1, round(p * d_sae)) for p in prefixes} | {d_sae})  # the whole is the last

    def options(self) -> dict:
        return {**super().options(), "prefixes": self.prefixes}

    def forward(self, x: torch.Tensor, coefficient: float = 0.0, dead: torch.Tensor | None = None) -> Output:
        x_hat, f = self.autoencode(x, self.activation)
        mses = torch.cat([self.inner_mses(x, f), (x_hat - x).pow(2).mean().view(1)])
        aux = self.aux_loss(x, x_hat, dead)
        loss = mses.mean() / self.input_variance + coefficient * aux
        return Output(x_hat, f, loss, mses[-1], aux, (self.smallest_kept(f),))

    def inner_mses(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """MSE(x̂_m, x) for every prefix width m but the whole, from the nonzeros of f's first
        `widths[-2]` columns alone (the whole dictionary's x̂ is autoencode's)."""
        inner = self.widths[:-1]
        if not inner:  # every prefix rounded to the whole dictionary
            return x.new_zeros(0)
        rows, cols = f.detach()[:, :inner[-1]].nonzero().T  # input by input, latents ascending: so by group
        groups = torch.bucketize(cols, torch.tensor(inner[:-1], device=cols.device), right=True)
        values = f[rows, cols].to(self.W_dec.dtype)  # f may be in autocast's precision
        if by_hand(x):
            return _InnerMSEs.apply(values, self.W_dec, self.b_dec, x, rows, cols, groups, len(inner))
        parts = _bag_sums(cols, self.W_dec, _bounds(rows * len(inner) + groups, len(f) * len(inner)), values)
        x_hats = parts.view(len(f), len(inner), -1).cumsum(1) + self.b_dec
        return (x_hats - x[:, None]).pow(2).mean((0, 2))


class _InnerMSEs(torch.autograd.Function):
    """MSE(x̂_m, x) for the inner prefix widths m, x̂_m[b] = Σ_{c < m} f[b, c] W_dec[c] + b_dec, with a
    hand-written backward: autograd's, through the embedding bag, the cumulative sum and the
    [B, prefixes, d_in] squares, took more than half of a step.

    The nonzeros (r, c) of group j (latents between widths j − 1 and j) sum into part[r, j], one
    embedding bag per (r, j); the residual x̂_m − x is a running sum of the parts. With
    H[r, j] = Σ_{m ≥ j} ∂L/∂MSE_m · 2 (x̂_m − x)[r] / (B · d_in):
        ∂L/∂f[r, c] = H[r, j] · W_dec[c] (a sampled product),  ∂L/∂W_dec[c] = Σ_r f[r, c] H[r, j],
        ∂L/∂b_dec = Σ_r H[r, 0].  CPU; x gets no gradient.
    """

    @staticmethod
    def forward(ctx, values, W_dec, b_dec, x, rows, cols, groups, n):
        keys = rows * n + groups  # ascending: (input, group) pairs in CSR order
        by_key = _bounds(keys, len(x) * n)
        parts = _bag_sums(cols, W_dec, by_key, values).view(len(x), n, -1)
        residuals = torch.empty_like(parts)
        torch.add(parts[:, 0], b_dec - x, out=residuals[:, 0])
        for j in range(1, n):  # a running sum, in place: cumsum over a middle dimension is slower
            torch.add(residuals[:, j - 1], parts[:, j], out=residuals[:, j])
        ctx.save_for_backward(values, W_dec, cols, keys, by_key, residuals)
        return torch.linalg.vector_norm(residuals, dim=(0, 2)).square() / (len(x) * x.shape[1])

    @staticmethod
    def backward(ctx, g):
        values, W_dec, cols, keys, by_key, residuals = ctx.saved_tensors
        batch, n, d = residuals.shape
        scale = (2 * g / (batch * d)).tolist()
        H = torch.empty_like(residuals)
        torch.mul(residuals[:, -1], scale[-1], out=H[:, -1])
        for j in range(n - 2, -1, -1):
            torch.add(H[:, j + 1], residuals[:, j], alpha=scale[j], out=H[:, j])
        g_b_dec = H[:, 0].sum(0)
        H = H.view(batch * n, d)
        g_values = _product_at(H, W_dec, by_key, cols)
        order = _by_column(cols, len(W_dec))
        g_W_dec = _bag_sums(keys[order], H, _bounds(cols, len(W_dec)), values[order])
        return g_values, g_W_dec, g_b_dec, None, None, None, None, None
