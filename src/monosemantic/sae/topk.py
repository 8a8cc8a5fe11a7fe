"""TopK dictionaries: Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (arXiv:2406.04093).

    x̄ = x − b_dec;  f = ReLU(TopK_k(x̄ W_enc + b_enc));  x̂ = f W_dec + b_dec
    loss = MSE(x̂, x) / Var(x) + α · AuxK,  AuxK = ‖e − ê‖² / ‖e − ē‖²  (sums over the batch)

e = x − x̂ (no gradient) is the residual; ê = ReLU(TopK_aux_k(pre-activations of the dead
latents)) W_dec reconstructs it from the aux_k (default d_in / 2) most active latents that have
not fired for sae.train.dead_window steps, so only dead latents (and b_dec, through the encoder)
get AuxK's gradient. Both terms are normalised MSEs, as in the authors' released code:
the main one by the variance of the inputs, measured once on the initialisation sample (their
`mse_scale`), AuxK by the variance of the batch's residual. `penalty` logs AuxK, `mse` the
plain MSE that every architecture reports. Initialisation: decoder rows at unit norm, encoder =
decoder transpose, b_enc = 0, b_dec = the geometric median of a sample. The decoder stays at
unit norm (the gradient parallel to each row removed before the step, rows renormalised after).
The main reconstruction runs through `Dictionary.autoencode`'s sparse products (k of d_sae
latents fire); AuxK goes through autograd on the dead latents' columns only.

Differences from the paper:
- The main term is normalised by Var(x), as in the released code; the paper writes the plain
  squared error. Adam is all but blind to the loss's scale, so this only sets α's weight.
- α rises linearly over sae.train.l1_warmup_steps (the trainer warms up every architecture's
  coefficient); with a warm-up no longer than dead_window (params.yaml's), no latent can be
  dead before α is whole, so this changes nothing.
- Dead means silent for dead_window steps, where the paper counts tokens (10M).
- Adam's ε is torch's 1e-8 (theirs 6.25e-10), and there is no weight EMA.
- The released code also rescales the encoder at initialisation so that random unit inputs
  reconstruct at unit norm; the authors found no clear benefit, and it is omitted.
- Under data parallelism AuxK's normaliser is the global batch's residual variance (one small
  all-reduce per step while latents are dead); theirs shards the latents instead.
- Learning rate: params.yaml's 0.01, for a run of thousands of steps (unit-norm decoder rows move by
  about lr per step; README, "Dictionary architectures").
"""

from __future__ import annotations

import torch

from monosemantic.compute import Compute
from monosemantic.sae.model import Dictionary, Output


def top_k(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the k largest entries of each row; zero elsewhere."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


class TopK(Dictionary):
    architecture = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int = 32, aux_k: int | None = None, aux_coefficient: float = 1 / 32):
        super().__init__(d_in, d_sae, coefficient=aux_coefficient)
        self.k, self.aux_k = k, aux_k
        with torch.no_grad():
            self.W_enc.copy_(self.W_dec.T)  # the decoder's transpose, rows already at unit norm
        self.register_buffer("input_variance", torch.ones(()))  # the main MSE's normaliser, set by `initialize`
        self.spread: tuple[Compute, int] | None = None  # (the ranks, the global batch size) under data parallelism

    def share_batches(self, compute: Compute | None, batch_size: int = 0) -> None:
        self.spread = (compute, batch_size) if compute is not None and compute.distributed else None

    def options(self) -> dict:
        return {"k": self.k, "aux_k": self.aux_k, "aux_coefficient": self.coefficient}

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return top_k(pre, self.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation((x - self.b_dec) @ self.W_enc + self.b_enc)

    def forward(self, x: torch.Tensor, coefficient: float = 0.0, dead: torch.Tensor | None = None) -> Output:
        x_hat, f = self.autoencode(x, self.activation)
        mse = (x_hat - x).pow(2).mean()
        aux = self.aux_loss(x, x_hat, dead)
        return Output(x_hat, f, mse / self.input_variance + coefficient * aux, mse, aux)

    def aux_loss(self, x: torch.Tensor, x_hat: torch.Tensor, dead: torch.Tensor | None) -> torch.Tensor:
        """AuxK: the top aux_k dead latents of each input reconstruct its residual (normalised MSE)."""
        idx = dead.nonzero().squeeze(1) if dead is not None else x.new_zeros(0, dtype=torch.long)
        if len(idx) == 0:
            return x.new_zeros(())
        pre = (x - self.b_dec) @ self.W_enc[:, idx] + self.b_enc[idx]  # the dead latents' columns only
        e_hat = top_k(pre, min(self.aux_k or max(1, self.d_in // 2), len(idx))) @ self.W_dec[idx]
        e = (x - x_hat).detach()
        if self.spread is None:
            return ((e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()).nan_to_num(0.0)
        # The global batch's Σ‖e − ē‖², times this rank's share: the trainer's share-weighted sum is then AuxK.
        compute, batch_size = self.spread
        sums = compute.sum_(torch.cat([e.pow(2).sum().view(1), e.sum(0), e.new_full((1,), len(e))]))
        deviation = sums[0] - sums[1:-1].pow(2).sum() / sums[-1]
        return ((e_hat - e).pow(2).sum() / (deviation * len(e) / batch_size)).nan_to_num(0.0)

    @torch.no_grad()
    def initialize(self, sample: torch.Tensor) -> None:
        super().initialize(sample)  # b_dec at the geometric median
        self.input_variance.copy_((sample - sample.mean(0)).pow(2).mean())

    def sae_lens_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        fields, tensors = super().sae_lens_state()
        # SAELens's TopK also applies ReLU after its top k; our decoder rows are at unit norm
        return {**fields, "architecture": "topk", "k": self.k, "rescale_acts_by_decoder_norm": False}, tensors
