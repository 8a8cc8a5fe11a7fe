"""BatchTopK dictionaries: Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders"
(arXiv:2412.06410).

    training:   f = BatchTopK_{k·B}(ReLU(x̄ W_enc + b_enc))   the k·B largest activations of the batch
    inference:  f = JumpReLU_θ(x̄ W_enc + b_enc) = pre · [pre > θ]
    x̄ = x − b_dec;  x̂ = f W_dec + b_dec;  loss = MSE/Var(x) + α · AuxK, as TopK (monosemantic.sae.topk)

Inputs share a budget of k·B latents, so the number each uses adapts to the input while the
batch's mean L0 is k. θ, the threshold that reproduces that sparsity without a batch, is
estimated during training from the smallest activation kept in each batch: its running mean
for the first 1/(1 − threshold_beta) batches, an exponential moving average with factor
threshold_beta after. θ is a buffer, so checkpoints and the trainer's broadcast carry it; the
dictionary exports to SAELens as "jumprelu" with every feature's threshold at θ (as SAELens
exports its BatchTopK). Initialisation, decoder constraint and AuxK are TopK's. Under data
parallelism the batch is the global one: each rank offers its share's k·B largest and every rank
keeps its entries among the global k·B largest (`spread_batch_top_k`), as one process would.

Differences from the paper:
- The paper states θ as the average of the per-batch minima; here a running mean turning into
  an EMA, so that θ follows the encoder as it trains (SAELens: an EMA from 0, biased low early).
- Loss normalisation, initialisation (b_dec at the geometric median) and AuxK follow Gao et al.
  2024; the authors' code uses the plain MSE, a zero b_dec and AuxK on the plain residual MSE.
- α's warm-up: as TopK's.
- Learning rate: params.yaml's 0.01, for a run of thousands of steps (unit-norm decoder rows move by
  about lr per step; README, "Dictionary architectures").
"""

from __future__ import annotations

import torch

from monosemantic.compute import Compute
from monosemantic.sae.model import Output
from monosemantic.sae.topk import TopK


def batch_top_k(pre: torch.Tensor, k: int, floor: float = 0.0) -> torch.Tensor:
    """ReLU of the k · len(pre) largest entries of the whole batch; zero elsewhere.

    `floor` only changes the speed: when at least k · len(pre) entries exceed it, the largest are
    among them, and only they are searched. The trainer passes θ/2: θ follows each batch's smallest
    kept activation, so most batches keep well above it."""
    n = k * len(pre)
    if floor > 0:
        candidates = (pre.flatten() > floor).nonzero().squeeze(1)
        if n <= len(candidates) <= 16 * n:
            values, picked = pre.flatten()[candidates].topk(n, sorted=False)
            return _scatter(pre, candidates[picked], values)
    # Else (2-3x faster than a top-k over the whole batch on CPU): the batch's n largest lie among
    # each row's `width` largest, unless some row has all of its candidates among them and so
    # perhaps more; then select among all.
    width = min(pre.shape[1], 4 * k)
    row_values, row_indices = pre.topk(width, dim=1, sorted=False)
    values, picked = row_values.flatten().topk(n, sorted=False)
    if width < pre.shape[1] and bool((row_values.amin(1) >= values.min()).any()):
        values, flat = pre.flatten().topk(n, sorted=False)
    else:
        flat = picked // width * pre.shape[1] + row_indices.flatten()[picked]
    return _scatter(pre, flat, values)


def spread_batch_top_k(pre: torch.Tensor, n: int, compute: Compute) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_top_k` of a global batch whose rows are spread over the ranks, `pre` being this rank's
    share: ReLU of the entries among the n largest of all the ranks' (n = k · the global batch size),
    and the smallest activation kept anywhere (inf if none), the same on every rank. Each rank offers
    its own n largest (no rank can hold more of the global n), so the selection is one process's, at
    the cost of gathering n values from each rank. A share holds about 1/world of the n, so the one-process
    shortcuts (`batch_top_k`'s) would rarely apply: one top-k, without their host syncs."""
    values, flat = pre.flatten().topk(min(n, pre.numel()), sorted=False)
    offered = torch.full((n + 1,), -torch.inf, dtype=values.dtype, device=values.device)
    offered[: len(values)] = values.detach()
    offered[n] = torch.where(values > 0, values.detach(), torch.inf).amin()  # kept here if fewer than n are > 0
    everyone = compute.gather(offered)
    cut = everyone[:, :n].flatten().topk(n, sorted=False).values.amin()
    smallest = torch.where(cut > 0, cut, everyone[:, n].amin())
    return _scatter(pre, flat, torch.where(values >= cut, values, 0)), smallest


def _scatter(pre: torch.Tensor, flat: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.zeros(pre.numel(), dtype=pre.dtype, device=pre.device).scatter_(0, flat, values.relu()).view_as(pre)


class BatchTopK(TopK):
    architecture = "batchtopk"

    def __init__(self, d_in: int, d_sae: int, k: int = 32, aux_k: int | None = None, aux_coefficient: float = 1 / 32,
                 threshold_beta: float = 0.999):
        super().__init__(d_in, d_sae, k, aux_k, aux_coefficient)
        self.threshold_beta = threshold_beta
        self.register_buffer("threshold", torch.zeros(()))  # θ, inference's JumpReLU threshold
        self.register_buffer("threshold_batches", torch.zeros((), dtype=torch.long))  # batches θ has seen
        self.smallest: torch.Tensor | None = None  # the last spread selection's smallest kept activation

    def options(self) -> dict:
        return {**super().options(), "threshold_beta": self.threshold_beta}

    def share_batches(self, compute: Compute | None, batch_size: int = 0) -> None:
        super().share_batches(compute, batch_size)
        self.smallest = None

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        if self.spread is None:
            return batch_top_k(pre, self.k, floor=float(self.threshold) / 2)
        compute, batch_size = self.spread
        f, self.smallest = spread_batch_top_k(pre, self.k * batch_size, compute)
        return f

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        return pre * (pre > self.threshold)

    def forward(self, x: torch.Tensor, coefficient: float = 0.0, dead: torch.Tensor | None = None) -> Output:
        out = super().forward(x, coefficient, dead)
        return out._replace(stats=(self.smallest_kept(out.f),))

    @torch.no_grad()
    def smallest_kept(self, f: torch.Tensor) -> torch.Tensor:
        """This batch's estimate of θ: its smallest nonzero activation (θ itself if none fired); spread over
        the ranks, the global batch's, which every rank has (so the ranks' average is it)."""
        spread = self.spread is not None and self.smallest is not None
        smallest = self.smallest.float() if spread else torch.where(f > 0, f, torch.inf).amin().float()
        return torch.where(torch.isfinite(smallest), smallest, self.threshold)

    @torch.no_grad()
    def after_step(self, stats: tuple[torch.Tensor, ...] = ()) -> None:
        super().after_step(stats)
        if not stats:  # not a training step's
            return
        self.threshold_batches += 1
        rate = max(1 - self.threshold_beta, 1 / int(self.threshold_batches))
        self.threshold += rate * (stats[0].to(self.threshold) - self.threshold)

    def sae_lens_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        _, tensors = super().sae_lens_state()
        return ({"architecture": "jumprelu", "apply_b_dec_to_input": True},
                {**tensors, "threshold": self.threshold.expand(self.d_sae)})

    @classmethod
    def from_sae_lens_state(cls, d_in: int, d_sae: int, options: dict, cfg: dict,
                            tensors: dict[str, torch.Tensor]) -> "BatchTopK":
        weights = {k: v for k, v in tensors.items() if k != "threshold"}  # SAELens's: one per feature
        sae = super().from_sae_lens_state(d_in, d_sae, options, cfg, weights)
        sae.threshold.fill_(float(tensors["threshold"][0]))  # written by sae_lens_state: one θ for every feature
        return sae
