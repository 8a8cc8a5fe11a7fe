"""Train the subject model: AdamW, warm-up then cosine decay, resumable from checkpoints.

Batches are drawn by a generator seeded with (seed, step), so a resumed run sees exactly the
batches an uninterrupted one would, and ends with the same weights.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from monosemantic.compute import Compute
from monosemantic.model.transformer import Transformer, next_token_loss
from monosemantic.params import ModelParams


def lr_at(step: int, p: ModelParams) -> float:
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    progress = (step - p.warmup_steps) / max(1, p.steps - p.warmup_steps)
    return p.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def batch_at(step: int, p: ModelParams, n_rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(p.seed * 1_000_003 + step)
    return torch.randint(0, n_rows, (p.batch_size,), generator=g)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, rows: np.ndarray, batch_size: int = 64) -> float:
    """Mean next-token loss (nats) over `rows`."""
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for i in range(0, len(rows), batch_size):
        tokens = torch.from_numpy(rows[i : i + batch_size]).long().to(device)
        logits = model(tokens)
        logits = logits.logits if hasattr(logits, "logits") else logits
        n = tokens[:, 1:].numel()
        total += next_token_loss(logits, tokens).item() * n
        count += n
    return total / max(count, 1)


def unigram_entropy(rows: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats) of the token distribution: the loss of the best context-free model."""
    counts = np.bincount(rows.ravel(), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def train_model(
    model: Transformer,
    train_rows: np.ndarray,
    p: ModelParams,
    checkpoint: Path,
    fingerprint: str,
    log: Callable[[int, dict], None] = lambda step, m: None,
    compute: Compute = Compute(),
) -> dict:
    """Train in place on `compute`'s device; returns train-side metrics. Resumes from `checkpoint`
    if it matches. Data-parallel: each rank runs its part of every global batch and the ranks'
    gradients are averaged before the (identical) optimiser step; rank 0 checkpoints."""
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay, betas=(0.9, 0.95))
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=compute.device)
        if state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start = state["step"]
            print(f"resuming subject-model training from {checkpoint} at step {start}")
    tokens_per_step = p.batch_size * train_rows.shape[1]
    train_tensor = torch.from_numpy(train_rows)
    model.train()
    loss_ema, t0 = None, time.perf_counter()
    compute.broadcast_(list(model.parameters()))  # every rank from rank 0's weights
    mine = compute.part(p.batch_size)
    bar = tqdm(range(start, p.steps), initial=start, total=p.steps, desc="train_model", unit="step",
               disable=not compute.is_main)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, p)
        batch = compute.to_device(train_tensor[batch_at(step, p, len(train_rows))[mine]].long())
        with compute.autocast():
            loss = next_token_loss(model(batch), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        (loss,) = compute.reduce_gradients_(model.parameters(), len(batch) / p.batch_size, loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if (step + 1) % p.log_every == 0 or step + 1 == p.steps:
            bar.set_postfix(loss=f"{loss_ema:.3f}", refresh=False)
            log(step + 1, {"train_loss": loss.item(), "lr": lr_at(step, p)})
        if compute.is_main and (step + 1) % p.checkpoint_every == 0 and step + 1 < p.steps:
            tmp = checkpoint.with_name(checkpoint.name + ".tmp")
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                 "fingerprint": fingerprint}, tmp,
            )
            os.replace(tmp, checkpoint)
    elapsed = time.perf_counter() - t0
    model.eval()
    steps_run = p.steps - start
    return {
        "train_loss": loss_ema,
        "tokens_seen": p.steps * tokens_per_step,
        "steps": p.steps,
        "tokens_per_second": steps_run * tokens_per_step / elapsed if steps_run else None,
    }
