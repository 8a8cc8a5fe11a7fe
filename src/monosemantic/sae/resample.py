"""Neuron resampling, as the paper specifies it.

At each configured step: neurons that fired on no input since the last check are dead; the
loss is computed on a random subset of inputs; one input per dead neuron is drawn with
probability ∝ loss²; the decoder row becomes that input at unit norm; the encoder column
becomes it at 0.2 × the mean norm of the alive encoder columns; b_enc ← 0; and Adam's
moments are zeroed for exactly the modified entries.
"""

from __future__ import annotations

import torch

from monosemantic.sae.standard import Standard

ENCODER_SCALE = 0.2


@torch.no_grad()
def per_input_loss(sae: Standard, x: torch.Tensor, l1_coefficient: float, batch: int = 8192) -> torch.Tensor:
    """Each input's own loss (its MSE over elements + λ·its L1), as used to weight the draw; through
    the training step's `autoencode`, whose decoder runs on f's nonzeros while f is sparse."""
    out = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        x_hat, f = sae.autoencode(xb)
        out.append((x_hat - xb).pow(2).mean(-1) + l1_coefficient * f.sum(-1))
    return torch.cat(out)


@torch.no_grad()
def resample(
    sae: Standard,
    optimizer: torch.optim.Adam,
    dead: torch.Tensor,
    inputs: torch.Tensor,
    losses: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Re-initialise the `dead` neurons (bool [d_sae]) from `inputs`; returns the drawn rows."""
    idx = dead.nonzero().squeeze(1)
    if len(idx) == 0:
        return idx
    weights = losses.double().pow(2)
    if weights.sum() <= 0:  # a perfect reconstruction everywhere: fall back to a uniform draw
        weights = torch.ones_like(weights)
    # On the CPU, where `generator` lives: the same draw on any device.
    drawn = torch.multinomial(weights.cpu(), len(idx), replacement=True, generator=generator).to(inputs.device)
    direction = inputs[drawn] / inputs[drawn].norm(dim=1, keepdim=True).clamp_min(1e-12)

    alive = ~dead
    alive_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else sae.W_enc.new_tensor(1.0)
    sae.W_dec[idx] = direction
    sae.W_enc[:, idx] = (direction * ENCODER_SCALE * alive_norm).T
    sae.b_enc[idx] = 0.0

    for param, where in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        state = optimizer.state.get(param)
        if state:
            state["exp_avg"][where] = 0.0
            state["exp_avg_sq"][where] = 0.0
    return drawn
