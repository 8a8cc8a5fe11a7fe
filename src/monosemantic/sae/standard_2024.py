"""Anthropic's April 2024 recipe: Conerly et al., "Circuits Updates – April 2024", section "Update on
how we train SAEs" (transformer-circuits.pub/2024/april-update).

    x' = s·x, one constant s for the whole dataset such that E‖x'‖ = √d_in
    f' = ReLU(x' W_enc + b_enc);  x̂' = f' W_dec + b_dec
    loss = ‖x̂' − x'‖² (summed over dimensions) + λ · Σ_i f'_i ‖W_dec,i‖, averaged over the batch

No pre-encoder bias and no unit-norm constraint: weighting each feature's L1 by its decoder norm
takes away the incentive to shrink f and grow W_dec. Decoder rows start at random directions of
norm `decoder_init_norm` (paper: 0.05 to 1), W_enc = W_decᵀ at init (untied afterwards), biases
at zero; Adam (0.9, 0.999); gradient norm clipped to 1; no resampling.

Units: the loss is the formula's in x'; `encode`, `decode` and `forward` take and return x in its
own units, with features f = f'/s (so x̂ = f W_dec + b_dec/s), and compute there. The SAELens export is that form: W_enc and W_dec
as trained, b_enc/s, b_dec/s, no pre-encoder bias; cfg.json keeps s as `input_scale`.

Differences from the paper:
- λ's linear warm-up and the learning rate's linear decay to zero are the shared schedule's
  (sae.train.l1_warmup_steps and lr_decay_steps; the paper uses the first 5% and the last 20% of
  the steps: set them so to match) and its learning rate (the paper's ≈5e-5 is for far longer runs).
- Random directions are the shared init's Kaiming-uniform rows rescaled, not an isotropic draw.
- s is estimated on the trainer's initial sample (up to 32,768 inputs), not on the whole dataset.
- `mse` in the Output is the mean over elements in x's units (the same measure for every
  architecture); the loss itself is the paper's.

Two options, the paper's by default, give SAELens's `standard` trainer, which keeps both 2023
choices the paper dropped: `pre_encoder_bias: true` (x − b_dec/s enters the encoder: x̄' = x' − b_dec)
and `scale_inputs: false` (s = 1). On known features (benchmarks/ground_truth.py, inputs of mean norm
2.6 in 128 dimensions, so s = 4.3) they decide the gap between the two: the biases must travel s
times farther in x' units at Adam's step of about lr, and without the pre-encoder bias each latent
also sees the inputs' mean. With both set, ours matches SAELens's MCC (README, "Against SAELens").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from monosemantic.sae.model import Dictionary, Output, _Autoencode, by_hand

INPUT_SCALE = "input_scale"  # cfg.json field: the s folded into the exported weights


class Standard2024(Dictionary):
    architecture = "standard_2024"
    unit_norm_decoder = False
    max_grad_norm = 1.0

    def __init__(self, d_in: int, d_sae: int, l1_coefficient: float = 5.0, decoder_init_norm: float = 0.1,
                 pre_encoder_bias: bool = False, scale_inputs: bool = True):
        super().__init__(d_in, d_sae, coefficient=l1_coefficient)  # unit-norm decoder rows
        self.decoder_init_norm = decoder_init_norm
        self.pre_encoder_bias, self.scale_inputs = pre_encoder_bias, scale_inputs
        with torch.no_grad():
            self.W_dec *= decoder_init_norm
            self.W_enc.copy_(self.W_dec.T)
        self.register_buffer(INPUT_SCALE, torch.ones(()))  # s; set by `initialize`

    def options(self) -> dict:
        return {"l1_coefficient": self.coefficient, "decoder_init_norm": self.decoder_init_norm,
                "pre_encoder_bias": self.pre_encoder_bias, "scale_inputs": self.scale_inputs}

    @torch.no_grad()
    def initialize(self, sample: torch.Tensor) -> None:
        """s such that the sample's mean norm is √d_in (b_dec stays at zero: the paper's)."""
        if self.scale_inputs:
            self.input_scale.copy_(math.sqrt(self.d_in) / sample.float().norm(dim=1).mean().clamp_min(1e-12))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_encoder_bias:
            x = x - self.b_dec / self.input_scale
        return torch.relu(x @ self.W_enc + self.b_enc / self.input_scale)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec / self.input_scale

    def forward(self, x: torch.Tensor, coefficient: float = 0.0, dead: torch.Tensor | None = None) -> Output:
        # Computed in x's units: f = f'/s = ReLU(x W_enc + b_enc/s) and x̂ = x̂'/s = f W_dec + b_dec/s (s > 0),
        # the same function of the weights as the formula in x', without scaling batch-sized tensors
        s = self.input_scale
        x_hat, f = self._autoencode(x)
        sse = F.mse_loss(x_hat, x, reduction="sum") * (s * s / len(x))  # ‖x̂' − x'‖², averaged over the batch
        # Σ_i f'_i ‖W_dec,i‖ averaged over the batch, from f's column sums: its gradient stays a broadcast
        # row of norms, where f @ norms would write a batch-by-features outer product in backward
        l1 = f.sum(0) @ self.W_dec.norm(dim=1) * (s / len(x))
        mse = sse / (self.d_in * s * s)  # mean over elements, in x's units
        return Output(x_hat, f, sse + coefficient * l1, mse, l1)

    def _autoencode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(decode(f), f = encode(x)): through the shared sparse product (model.py), with b_dec/s as
        its pre-encoder bias, or a zero one and b_dec/s added after, where it applies; `encode` and
        `decode` elsewhere."""
        if not by_hand(x):
            f = self.encode(x)
            return self.decode(f), f
        s = self.input_scale
        if self.pre_encoder_bias:
            return _Autoencode.apply(x, self.W_enc, self.b_enc / s, self.W_dec, self.b_dec / s,
                                     self.sparse_below, torch.relu_)
        x_hat, f = _Autoencode.apply(x, self.W_enc, self.b_enc / s, self.W_dec, x.new_zeros(self.d_in),
                                     self.sparse_below, torch.relu_)
        return x_hat + self.b_dec / s, f

    def sae_lens_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        s = self.input_scale
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc / s, "W_dec": self.W_dec, "b_dec": self.b_dec / s}
        return {"architecture": "standard", "apply_b_dec_to_input": self.pre_encoder_bias,
                INPUT_SCALE: s.item()}, tensors

    @classmethod
    def from_sae_lens_state(cls, d_in, d_sae, options, cfg, tensors) -> "Standard2024":
        sae = cls(d_in, d_sae, **options)
        s = torch.tensor(float(cfg.get(INPUT_SCALE, 1.0)))
        t = {k: v.float() for k, v in tensors.items()}
        sae.load_state_dict({"W_enc": t["W_enc"], "b_enc": t["b_enc"] * s, "W_dec": t["W_dec"],
                             "b_dec": t["b_dec"] * s, INPUT_SCALE: s})
        return sae
