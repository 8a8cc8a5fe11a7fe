"""The 2023 recipe of Towards Monosemanticity (Bricken et al. 2023), the default and the baseline.

    x̄ = x − b_dec;  f = ReLU(x̄ W_enc + b_enc);  x̂ = f W_dec + b_dec
    loss = mean over elements of (x̂ − x)² + λ · Σ_features f, averaged over the batch

Decoder rows at unit norm (the parallel gradient removed before each step, rows renormalised
after), b_dec at the geometric median of a sample, Adam, and neuron resampling at the configured
steps (monosemantic.sae.resample). The model and loss are the paper's; what differs is the shared
trainer's run, set in params:
- Schedule: sae.train's linear lr warm-up, linear lr decay to zero and λ warm-up (later practice;
  the paper states none). Set lr_warmup_steps, lr_decay_steps and l1_warmup_steps to 0 for a
  constant rate and λ.
- Length and resampling: the paper resamples at 25k, 50k, 75k and 100k of 1M steps (2.5-10% of the
  run); the default 1,000-step run resamples at steps 200-800, one dead window (200 steps) apart, so
  the last resampled features get 200 steps to settle, inside the lr decay. params/paper.yaml has
  the paper's absolute steps in a 150k-step run.
- Learning rate: params.yaml's sae.standard.lr, 0.01 for the default run: unit-norm decoder rows
  move by about lr per step, and at 1e-3 they barely settle in 1,000 steps (README, "Dictionary
  architectures").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from monosemantic.sae.model import Dictionary, Output


class Standard(Dictionary):
    architecture = "standard"
    resamples = True

    def __init__(self, d_in: int, d_sae: int, l1_coefficient: float = 0.0):
        super().__init__(d_in, d_sae, coefficient=l1_coefficient)

    def options(self) -> dict:
        return {"l1_coefficient": self.coefficient}

    def encode_units(self, x: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
        if units is None:
            return self.encode(x)
        return torch.relu((x - self.b_dec) @ self.W_enc[:, units] + self.b_enc[units])

    def forward(self, x: torch.Tensor, coefficient: float = 0.0, dead: torch.Tensor | None = None) -> Output:
        x_hat, f = self.autoencode(x)
        mse = F.mse_loss(x_hat, x)  # mean over elements; one fused pass each way
        l1 = f.sum(-1).mean()  # f >= 0, so |f| = f
        return Output(x_hat, f, mse + coefficient * l1, mse, l1)
