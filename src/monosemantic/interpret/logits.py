"""Logit effects: which next tokens a unit's output direction makes more or less likely.

The direct path only, as in the paper: a unit's direction in MLP-neuron space (a feature's
decoder row, or a neuron's basis vector) through the MLP's output weights, the final LayerNorm
taken as linear (centring and its gain, without the data-dependent scale), and the unembedding.
"""

from __future__ import annotations

import torch
from torch import nn

from monosemantic.model import Transformer


def logit_effects(model: nn.Module, directions: torch.Tensor) -> torch.Tensor | None:
    """``[n_units, vocab]`` for ``directions [n_units, d_mlp]``; None where the path is not known
    (a Hugging Face model: its hooked module may sit many layers below the unembedding)."""
    if not isinstance(model, Transformer):
        return None
    with torch.no_grad():
        residual = directions @ model.mlp.w_out.weight.T
        residual = (residual - residual.mean(-1, keepdim=True)) * model.ln_final.weight
        return residual @ model.unembed.weight.T


def top_effects(effects: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boosted ids, values, suppressed ids, values), each ``[n_units, k]``, strongest first."""
    k = min(k, effects.shape[1])
    up, down = effects.topk(k, dim=1), effects.topk(k, dim=1, largest=False)
    return up.indices, up.values, down.indices, down.values
