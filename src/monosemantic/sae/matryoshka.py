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
O(nonzeros · d_in) for all of them together, not dense products.

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
from monosemantic.sae.model import Output, _bag_sums, _bounds


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
        inner = self.inner_reconstructions(f)  # [B, prefixes but the whole, d_in]
        mses = torch.cat([(inner - x[:, None]).pow(2).mean((0, 2)), (x_hat - x).pow(2).mean().view(1)])
        aux = self.aux_loss(x, x_hat, dead)
        loss = mses.mean() / self.input_variance + coefficient * aux
        return Output(x_hat, f, loss, mses[-1], aux, (self.smallest_kept(f),))

    def inner_reconstructions(self, f: torch.Tensor) -> torch.Tensor:
        """x̂_m for every prefix width m but the whole, from f's nonzeros alone: one embedding bag per
        (input, group of latents between two widths), then a running sum over the groups."""
        rows, cols = f.detach().nonzero().T  # input by input, latents ascending: so also by group
        groups = torch.bucketize(cols, torch.tensor(self.widths[:-1], device=cols.device), right=True)
        n = len(self.widths)
        values = f[rows, cols].to(self.W_dec.dtype)  # f may be in autocast's precision
        parts = _bag_sums(cols, self.W_dec, _bounds(rows * n + groups, len(f) * n), values).view(len(f), n, -1)
        return parts.cumsum(1)[:, :-1] + self.b_dec
