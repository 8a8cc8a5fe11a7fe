"""Where this process computes: its device, its precision, and its place in the process group.

The one module that calls ``torch.distributed`` (as tracking.py is the one that talks to
MLflow). Stages and trainers ask a ``Compute`` which rows are theirs, to average gradients,
to agree on a decision, and whether they are the rank that writes; launched by ``torchrun``
it joins the process group torchrun describes in the environment, otherwise it is the one
process of a world of one and every collective is a no-op.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from monosemantic.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str, precision: str = "fp32", where: str = "compute.") -> torch.device:
    """`auto` is CUDA when present, else CPU; anything asked for must exist, or the stage stops here.
    `where` prefixes the key names in messages (a benchmark's flags are --device / --precision)."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if spec == "auto" else spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{where}device is {spec!r} but this machine has no usable CUDA device "
                        f"(torch {torch.__version__}, cuda {torch.version.cuda}); use {where}device cpu "
                        "(or auto), or install a CUDA build of torch")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"{where}device is {spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                        f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}, or cuda (one per rank)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{where}device is {spec!r} but MPS is not available here; use {where}device cpu or auto")
    if device.type == "cpu" and precision == "fp16":
        raise UserError(f"{where}precision fp16 needs a GPU (CPU autocast supports bf16); use bf16 or fp32")
    return device


@dataclass(frozen=True)
class Compute:
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = 600.0  # how long a rank waits for the others (collectives, the cache's last shards)

    @property
    def is_main(self) -> bool:
        """The rank that writes outputs, checkpoints and MLflow records."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision around a forward pass; weights and optimiser state stay fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Host to device without stalling the device: from pinned memory, asynchronously."""
        if self.device.type != "cuda":
            return t.to(self.device)
        return (t if t.is_pinned() else t.pin_memory()).to(self.device, non_blocking=True)

    def host_ready(self, t: torch.Tensor) -> torch.Tensor:
        """A batch made ready for `to_device` on a reading thread: pinned for a GPU (which converts
        it to float32 after the copy), float32 for the CPU."""
        return t.pin_memory() if self.device.type == "cuda" else t.float()

    def part(self, n: int) -> slice:
        """This rank's share of n rows (a global batch): contiguous, as equal as n allows."""
        return slice(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    # ---------------------------------------------------------------- collectives
    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def reduce_gradients_(self, params, share: float, *terms: torch.Tensor) -> list[torch.Tensor]:
        """Data parallelism's one collective per step: every gradient becomes Σ_ranks share·grad (the
        gradient of the global batch's mean loss when `share` is this rank's fraction of it), and each
        of `terms` (loss terms, firing counts) the same share-weighted sum, returned in order."""
        if not self.distributed:
            return list(terms)
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([*(g.flatten() for g in grads), *(t.detach().float().flatten() for t in terms)])
        flat.mul_(share)
        torch.distributed.all_reduce(flat)
        pieces = flat.split([t.numel() for t in [*grads, *terms]])
        for g, piece in zip(grads, pieces):
            g.copy_(piece.view_as(g))
        return [piece.view_as(t) for t, piece in zip(terms, pieces[len(grads):])]

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            torch.distributed.all_reduce(t)
        return t

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's `t` (the same shape on each), stacked in rank order: [world_size, *t.shape]."""
        if not self.distributed:
            return t[None]
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, t.contiguous())
        return torch.stack(out)

    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Rank `src`'s values everywhere: a decision made once (resampling) reaches every rank."""
        if self.distributed:
            for t in tensors:
                torch.distributed.broadcast(t, src)

    def describe(self) -> dict:
        """For provenance and MLflow: what ran, not where (no host names)."""
        return {"device": self.device.type, "precision": self.precision, "world_size": self.world_size}


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@contextlib.contextmanager
def setup(device: str = "auto", precision: str = "fp32", threads: int | None = None,
          timeout_s: float = 600.0) -> Iterator[Compute]:
    """This process's Compute; under torchrun, join (and at the end leave) its process group.

    Collectives time out after `timeout_s`, so a rank that died on another node ends the stage
    with an error instead of leaving the others waiting forever.
    """
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, precision)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local % torch.cuda.device_count())  # one GPU per rank on a node
    if threads:
        torch.set_num_threads(threads)
    elif world > 1 and dev.type == "cpu":  # ranks on one host share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // _env_int("LOCAL_WORLD_SIZE", world)))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s),
                                             device_id=dev if dev.type == "cuda" else None)
    try:
        yield Compute(dev, precision, rank, world, local, timeout_s)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
