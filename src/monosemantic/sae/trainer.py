"""Train one dictionary of any architecture: Adam on its loss, its decoder constraint, and the
paper's resampling where the architecture uses it.

Resumable: a checkpoint holds the weights, Adam's state, the reader's position, the
dead-neuron counters and the RNG, so a killed run continues to the same final weights.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch
from tqdm import tqdm

from monosemantic.compute import Compute
from monosemantic.errors import UserError
from monosemantic.sae.model import Dictionary
from monosemantic.sae.resample import per_input_loss, resample


class TrainingDiverged(UserError):
    """A non-finite loss: the step that produced it is never checkpointed."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float = 1e-4
    batch_size: int = 4096
    l1_warmup_steps: int = 0  # the sparsity coefficient's linear warm-up, whatever the architecture's penalty
    lr_warmup_steps: int = 0
    lr_decay_steps: int = 0  # linear decay to zero over the last N steps
    resample_steps: tuple[int, ...] = ()
    dead_window: int = 12_500  # a neuron that fired on no input in this many steps is dead
    resample_inputs: int = 819_200
    log_every: int = 50
    checkpoint_every: int = 500
    seed: int = 0

    @classmethod
    def from_params(cls, sae, architecture: str = "standard") -> "TrainConfig":
        """From params.yaml's ``sae`` section (monosemantic.params.SAEParams): ``sae.train`` and the
        trainer's part of ``sae.<architecture>`` (its learning rate, resampling)."""
        p, a = sae.train, getattr(sae, architecture)
        resample = getattr(a, "resample", False)
        return cls(
            steps=p.steps, lr=a.lr or p.lr, batch_size=p.batch_size,
            l1_warmup_steps=p.l1_warmup_steps, lr_warmup_steps=p.lr_warmup_steps, lr_decay_steps=p.lr_decay_steps,
            resample_steps=tuple(a.resample_steps) if resample else (), dead_window=p.dead_window,
            resample_inputs=getattr(a, "resample_inputs", cls.resample_inputs), log_every=p.log_every,
            checkpoint_every=p.checkpoint_every, seed=p.seed,
        )


def adam(sae: Dictionary, lr: float) -> torch.optim.Adam:
    # one fused kernel: ~3x faster than the loop
    return torch.optim.Adam(sae.parameters(), lr=lr, betas=sae.adam_betas, fused=True)


class Step(NamedTuple):
    """One step's loss terms and which features fired, over the global batch."""

    loss: torch.Tensor
    mse: torch.Tensor
    penalty: torch.Tensor
    l0: torch.Tensor | None  # None where not counted
    fired: torch.Tensor


def train_step(sae: Dictionary, opt: torch.optim.Adam, x: torch.Tensor, coefficient: float,
               compute: Compute = Compute(), share: float = 1.0, dead: torch.Tensor | None = None,
               count_l0: bool = True) -> Step:
    """Adam on the architecture's loss, inside its constraint. `x` is this rank's `share` of the
    global batch: the ranks' gradients are averaged with those weights, which is the gradient of
    the global batch's mean loss, so every rank takes the same step. L0 is counted (a pass over f)
    only if `count_l0`."""
    with compute.autocast():
        out = sae(x, coefficient, dead)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    f = out.f.detach()
    l0 = torch.count_nonzero(f) / len(f) if count_l0 else f.new_zeros(())
    # f >= 0: a column sum is a faster "fired at all" than (f > 0).any(0) or amax(0)
    loss, mse, penalty, l0, fired, *stats = compute.reduce_gradients_(
        sae.parameters(), share, out.loss, out.mse, out.penalty, l0, f.sum(0), *out.stats)
    sae.before_step()
    if sae.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), sae.max_grad_norm)
    opt.step()
    sae.after_step(tuple(stats))
    return Step(loss.detach(), mse.detach(), penalty.detach(), l0 if count_l0 else None, fired > 0)


def schedule(step: int, cfg: TrainConfig) -> tuple[float, float]:
    """(learning rate, the sparsity coefficient's warm-up factor in [0, 1]) at `step`."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else cfg.lr
    if cfg.lr_decay_steps and step >= cfg.steps - cfg.lr_decay_steps:
        lr *= (cfg.steps - step) / cfg.lr_decay_steps
    return lr, min(1.0, (step + 1) / cfg.l1_warmup_steps) if cfg.l1_warmup_steps else 1.0


@dataclass
class State:
    step: int = 0
    steps_since_fired: torch.Tensor | None = None
    resampled: list[tuple[int, int]] = field(default_factory=list)  # (step, neurons)
    history: list[dict] = field(default_factory=list)  # the logged rows, kept across a resume
    tokens: int = 0


def train_sae(
    sae: Dictionary,
    batches: Callable[[int], Iterator[torch.Tensor]],
    sample_inputs: Callable[[int, torch.Generator], torch.Tensor],
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    log: Callable[[int, dict], None] = lambda step, m: None,
    compute: Compute = Compute(),
) -> State:
    """Train `sae` in place, on `compute`'s device. `batches(position)` yields this rank's part of each
    global batch from a row position; `sample_inputs(n, gen)` draws n random training inputs (for
    the architecture's data-dependent init and resampling: rank 0 draws, decides, and broadcasts).
    Only rank 0 checkpoints."""
    resample_steps = cfg.resample_steps if sae.resamples else ()
    opt = adam(sae, cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    state = State(steps_since_fired=torch.zeros(sae.d_sae, dtype=torch.long, device=compute.device))
    if checkpoint is not None and checkpoint.exists():
        try:
            saved = torch.load(checkpoint, weights_only=False, map_location=compute.device)
        except Exception as e:  # a torn or foreign file: start over rather than fail every re-run
            print(f"ignoring unreadable checkpoint {checkpoint} ({type(e).__name__}); training from step 0")
            saved = {"fingerprint": None}
        if saved["fingerprint"] == fingerprint:
            sae.load_state_dict(saved["sae"])
            opt.load_state_dict(saved["optimizer"])
            gen.set_state(saved["generator"].cpu())
            state = saved["state"]
            state.steps_since_fired = state.steps_since_fired.to(compute.device)
            print(f"resuming SAE training from {checkpoint} at step {state.step}")
    # reading starts now, during b_dec's init
    data = _ReadAhead(batches(state.step * cfg.batch_size), compute.host_ready)
    if state.step == 0:
        with torch.no_grad():
            if compute.is_main:
                sae.initialize(compute.to_device(sample_inputs(min(cfg.resample_inputs, 32_768), gen)))
            compute.broadcast_([*sae.parameters(), *sae.buffers()])  # every rank starts from rank 0's weights

    sae.share_batches(compute, cfg.batch_size)
    t0, start, finite = time.perf_counter(), state.step, _Finite(compute.device)
    bar = tqdm(total=cfg.steps, initial=state.step, desc=f"train_sae d_sae={sae.d_sae}", unit="step",
               disable=not compute.is_main)
    while state.step < cfg.steps:
        lr, warmup = schedule(state.step, cfg)
        coefficient = sae.coefficient * warmup
        for group in opt.param_groups:
            group["lr"] = lr
        x = compute.to_device(next(data)).float()
        dead = state.steps_since_fired >= cfg.dead_window  # for auxiliary losses on dead latents
        step = state.step + 1
        logged = step in resample_steps or step % cfg.log_every == 0 or step == cfg.steps  # L0 counted
        out = train_step(sae, opt, x, coefficient, compute, len(x) / cfg.batch_size, dead, count_l0=logged)
        finite.record(out.loss, step)
        state.steps_since_fired = torch.where(out.fired, 0, state.steps_since_fired + 1)
        state.step += 1
        state.tokens += cfg.batch_size

        resampling, resampled = state.step in resample_steps, 0
        at_checkpoint = state.step % cfg.checkpoint_every == 0
        if compute.device.type == "cpu" or logged or at_checkpoint:  # the host reads the state: all finite?
            finite.check(sae.d_sae, checkpoint)
        if resampling:
            dead = state.steps_since_fired >= min(cfg.dead_window, state.step)  # the same on every rank
            resampled = int(dead.sum())
            if resampled:  # only dead neurons are resampled: with none, no inputs are drawn or scored
                if compute.is_main:
                    inputs = compute.to_device(sample_inputs(cfg.resample_inputs, gen))
                    resample(sae, opt, dead, inputs, per_input_loss(sae, inputs, coefficient), gen)
                _broadcast_resampled(sae, opt, compute)
                state.steps_since_fired[dead] = 0
            state.resampled.append((state.step, resampled))
        if logged:
            dead_now = int((state.steps_since_fired >= min(cfg.dead_window, state.step)).sum())
            rate = (state.step - start) * cfg.batch_size / (time.perf_counter() - t0)
            row = {"loss": out.loss.item(), "mse": out.mse.item(), "penalty": out.penalty.item(), "l0": out.l0.item(),
                   "dead_features": dead_now, "resampled_neurons": resampled, "lr": lr,
                   "coefficient": coefficient, "tokens_per_second": rate}
            state.history.append({"step": state.step, **row})
            log(state.step, row)
            bar.set_postfix(loss=f"{row['loss']:.4g}", l0=f"{row['l0']:.1f}", tok_s=f"{rate:.0f}", refresh=False)
        bar.update(1)
        if checkpoint is not None and compute.is_main and at_checkpoint and state.step < cfg.steps:
            _save(checkpoint, sae, opt, gen, state, fingerprint)
    bar.close()
    sae.share_batches(None)
    return state


def _broadcast_resampled(sae: Dictionary, opt: torch.optim.Adam, compute: Compute) -> None:
    """Rank 0's resampled weights and reset Adam moments, on every rank."""
    if not compute.distributed:
        return
    moments = [opt.state[p][k] for p in (sae.W_enc, sae.b_enc, sae.W_dec) if p in opt.state
               for k in ("exp_avg", "exp_avg_sq")]
    with torch.no_grad():
        compute.broadcast_([sae.W_enc, sae.b_enc, sae.W_dec, *moments])


class _Finite:
    """Whether every step's loss (the global one: every rank stops together) was finite. Recorded on
    the device and checked where the host reads the state anyway (a GPU's steps then queue without
    waiting for each other), so a non-finite step is never logged, resampled from or checkpointed."""

    def __init__(self, device: torch.device):
        self.first = torch.zeros((), dtype=torch.long, device=device)  # the first non-finite step; 0: none
        self.loss = torch.zeros((), device=device)

    def record(self, loss: torch.Tensor, step: int) -> None:
        new = (self.first == 0) & ~torch.isfinite(loss)
        self.first = torch.where(new, step, self.first)
        self.loss = torch.where(new, loss.detach().float(), self.loss)

    def check(self, d_sae: int, checkpoint: Path | None) -> None:
        if step := int(self.first):
            kept = f"the checkpoint {checkpoint} is kept" if checkpoint is not None and checkpoint.exists() else "no checkpoint was written"
            raise TrainingDiverged(f"the SAE loss became {float(self.loss)} at step {step} (d_sae={d_sae}); "
                                   f"{kept} and no dictionary is written. Lower sae.train.lr or check the activations, "
                                   "then re-run")


class _ReadAhead:
    """The batches of `batches`, each read and `prepare`d in a background thread while the one
    before it trains (the first from construction on)."""

    def __init__(self, batches: Iterator[torch.Tensor], prepare: Callable[[torch.Tensor], torch.Tensor]):
        self.reader = ThreadPoolExecutor(max_workers=1)
        self.read = lambda: prepare(next(batches))
        self.pending = self.reader.submit(self.read)

    def __next__(self) -> torch.Tensor:
        batch, self.pending = self.pending.result(), self.reader.submit(self.read)
        return batch


def _save(path: Path, sae, opt, gen, state: State, fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"sae": sae.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                "state": state, "fingerprint": fingerprint}, tmp)
    os.replace(tmp, path)
