"""Evaluate one dictionary on held-out contexts, the paper's way.

Every batch runs the subject model four times through one hook: unchanged (recording the
activations), with the SAE's reconstruction spliced in, with the hooked activations zeroed,
and with them replaced by their training-set mean. The reconstruction metrics use the
activations recorded in the first pass, in float32, not the float16 cache.

Positions the cache left out (`keep` False: special tokens, attention sinks) keep their original
activation in all three interventions, so that the losses compare the same intervention, and are
left out of MSE, FVU, L0 and the feature densities; the losses still count every prediction.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from monosemantic.compute import Compute
from monosemantic.evaluation.metrics import Reconstruction, density_histogram, density_summary, fraction_recovered
from monosemantic.model.hooks import logits, splice
from monosemantic.sae.model import Dictionary


def _loss_sum(lg: torch.Tensor, tokens: torch.Tensor) -> float:
    return float(F.cross_entropy(lg[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="sum"))


@torch.no_grad()
def evaluate_sae(
    model: nn.Module, hook: str, sae: Dictionary, contexts: np.ndarray, mean_activation: torch.Tensor,
    batch_seqs: int = 32, ultralow_density: float = 1e-6, dense_density: float = 0.1, histogram_bins: int = 40,
    compute: Compute = Compute(), keep: np.ndarray | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Metrics (eval.json's keys) and the log10 feature-density histogram over `contexts` [n_seq, ctx].
    `keep` [n_seq, ctx] marks the positions evaluated (None: all). `model` and `sae` are on `compute`'s
    device; forward passes run under its precision."""
    rec = Reconstruction(sae.d_in)
    fire_counts = torch.zeros(sae.d_sae, dtype=torch.long, device=compute.device)
    mean_activation = mean_activation.to(compute.device)
    losses = dict.fromkeys(("original", "reconstructed", "zero_ablation", "mean_ablation"), 0.0)
    kl_sum, l0_sum, n_tokens, n_predicted = 0.0, 0.0, 0, 0

    for i in tqdm(range(0, len(contexts), batch_seqs), desc="evaluate", unit="batch"):
        tokens = compute.to_device(torch.from_numpy(np.asarray(contexts[i : i + batch_seqs])).long())
        kept = None if keep is None else compute.to_device(torch.from_numpy(np.asarray(keep[i : i + batch_seqs])))
        seen: list[torch.Tensor] = []

        def at_kept(fn):
            """fn's replacement at the kept positions only; the original activation elsewhere."""
            return fn if kept is None else lambda a: torch.where(kept[..., None], fn(a), a)

        def record(a: torch.Tensor) -> torch.Tensor:
            seen.append(a)
            return a

        with compute.autocast():
            with splice(model, hook, record):
                lg_orig = logits(model, tokens)
            x = seen[0].float()
            f = sae.encode(x)
            x_hat = sae.decode(f).to(seen[0].dtype)
            with splice(model, hook, at_kept(lambda a: x_hat)):
                lg_rec = logits(model, tokens)
            with splice(model, hook, at_kept(torch.zeros_like)):
                lg_zero = logits(model, tokens)
            with splice(model, hook, at_kept(lambda a: mean_activation.to(a.dtype).expand_as(a))):
                lg_mean = logits(model, tokens)

        for name, lg in zip(losses, (lg_orig, lg_rec, lg_zero, lg_mean)):
            losses[name] += _loss_sum(lg, tokens)
        log_p = F.log_softmax(lg_orig[:, :-1].float(), -1)
        log_q = F.log_softmax(lg_rec[:, :-1].float(), -1)
        kl_sum += float((log_p.exp() * (log_p - log_q)).sum())
        if kept is not None:
            x, x_hat, f = x[kept], x_hat[kept], f[kept]
        rec.update(x, x_hat.float())
        active = f.reshape(-1, sae.d_sae) > 0
        fire_counts += active.sum(0)
        l0_sum += float(active.sum())
        n_tokens += active.shape[0]
        n_predicted += tokens.shape[0] * (tokens.shape[1] - 1)

    loss, fire_counts = {k: v / n_predicted for k, v in losses.items()}, fire_counts.cpu()
    metrics = {
        "mse": rec.mse, "fvu": rec.fvu, "l0": l0_sum / n_tokens,
        **{f"loss_{k}": v for k, v in loss.items()},
        "loss_recovered": fraction_recovered(loss["original"], loss["reconstructed"], loss["zero_ablation"]),
        "loss_recovered_mean_ablation": fraction_recovered(loss["original"], loss["reconstructed"], loss["mean_ablation"]),
        "kl_divergence": kl_sum / n_predicted,
        **density_summary(fire_counts, n_tokens, ultralow_density, dense_density),
        "n_eval_tokens": n_tokens,
        "n_excluded_tokens": 0 if keep is None else int((~np.asarray(keep, dtype=bool)).sum()),
    }
    return metrics, density_histogram(fire_counts, n_tokens, histogram_bins)
