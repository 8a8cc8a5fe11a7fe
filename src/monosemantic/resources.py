"""Will it fit? The peak memory of the heavy stages, estimated from params before any work.

Sizes that cannot fit used to end in an allocator traceback after the corpus, the model and the
activation cache had been built. This estimate counts the big buffers of each stage, generously
(the worst case: a young dictionary's dense step, every queue full), and `check_memory` refuses
params whose estimate exceeds the machine's memory, naming the keys to lower. It is a readable
sum of the buffers the code allocates, not a model of the allocator: small tensors are ignored
and a fixed allowance covers the Python process itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from monosemantic.params import ParamsError

FP32, FP16, INT32, BOOL = 4, 2, 4, 1
GiB = 1 << 30
PROCESS = 1 * GiB  # the interpreter with torch, zarr, polars and MLflow loaded
LOSS_BLOCK = 8192  # inputs per block of resample.per_input_loss
# Bytes per activation, by activations.dtype: as stored, and as the reader holds it (a bfloat16 store's
# bits are decoded to float32 as they are read: activations/store.py).
STORED = {"float16": FP16, "bfloat16": FP16, "float32": FP32}
READ = {"float16": FP16, "bfloat16": FP32, "float32": FP32}


@dataclass(frozen=True)
class Part:
    what: str
    bytes: int
    lower: str  # the keys that shrink it


@dataclass(frozen=True)
class Estimate:
    stage: str
    asks: str  # the params that make it, "key=value" as the user wrote them
    parts: list[Part] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.parts)


def sae_training(params, d: int, i: int) -> Estimate:
    """train_sae for ``sae.dict_sizes[i]`` (universality trains the same): see sae/trainer.py."""
    t, a, ctx = params.sae.train, params.activations, params.tokenize.ctx
    r = params.sae.standard.resample_inputs
    d_sae, batch = params.sae.dict_sizes[i], t.batch_size
    size, read = f"sae.dict_sizes.{i}", READ[a.dtype]
    n_weights = 2 * d * d_sae + d_sae + d
    # The dense path of sae/model.py's step (a young dictionary fires on half its features): f is
    # saved; backward holds x̂'W_decᵀ, its sum with the L1 gradient and the masked product (fp32) and
    # the f > 0 mask. Resampling keeps the last step's f and runs per_input_loss in blocks (the
    # pre-activation, its sum with b_enc and f); the larger of the two is the peak.
    step = batch * d_sae * (4 * FP32 + BOOL)
    resample = (batch * d_sae * FP32 + min(r, LOSS_BLOCK) * d_sae * 3 * FP32
                + r * d * (read + read + FP32))  # the drawn rows: read, concatenated, as fp32
    window = min(t.window_chunks * a.chunk_seqs * ctx, a.max_train_tokens) * d * read
    heavier = max(
        Part("[batch_size, d_sae] activations and their gradients (the training step)", step,
             f"sae.train.batch_size or {size}"),
        Part(f"resampling: sae.standard.resample_inputs={r} inputs and their loss, [{LOSS_BLOCK}, d_sae] "
             "at a time", resample, f"sae.standard.resample_inputs or {size}"),
        key=lambda p: p.bytes)
    return Estimate("train_sae", f"{size}={d_sae} with sae.train.batch_size={batch} (d={d})", [
        Part("weights, gradients and Adam's two moments (fp32)", 4 * n_weights * FP32, f"{size}"),
        heavier,
        # ShuffledReader: a window being read (zarr pieces, concatenated, shuffled), one queued, one
        # being consumed and the concatenation that carries a batch across two windows.
        Part(f"the reader's shuffle window (sae.train.window_chunks={t.window_chunks} chunks of "
             f"activations.chunk_seqs={a.chunk_seqs} x tokenize.ctx={ctx} rows, {read} bytes each), six copies",
             6 * window,
             "sae.train.window_chunks"),
        Part("batches: the one training, the one read ahead, x̄, x̂ and its gradient (fp32)", 5 * batch * d * FP32,
             "sae.train.batch_size"),
        Part("the Python process (torch, zarr, MLflow)", PROCESS, ""),
    ])


def activation_cache(params, d: int) -> Estimate:
    """cache_activations: see activations/store.py."""
    a, ctx = params.activations, params.tokenize.ctx
    shard_rows = a.chunk_seqs * a.shard_chunks * ctx
    shard = shard_rows * (d * STORED[a.dtype] + 3 * INT32 + BOOL)  # acts, and the tokens, seq, pos and keep columns
    return Estimate("cache_activations", f"activations.chunk_seqs={a.chunk_seqs} x shard_chunks={a.shard_chunks} "
                                         f"x tokenize.ctx={ctx} (d={d})", [
        # The writer's queue holds two shards, the writer one more, and the model fills the next.
        Part(f"four shards of {shard_rows} rows in flight ({a.dtype})", 4 * shard,
             "activations.shard_chunks or activations.chunk_seqs"),
        # The hooked output (fp32), its fp32 copy for the norms and the layers below it; attention is
        # scaled_dot_product_attention, which keeps no [ctx, ctx] scores.
        Part("a forward batch", a.batch_seqs * ctx * 4 * d * FP32, "activations.batch_seqs"),
        Part("the Python process (torch, zarr, MLflow)", PROCESS, ""),
    ])


def estimates(params, d: int) -> list[Estimate]:
    return [activation_cache(params, d)] + [sae_training(params, d, i) for i in range(len(params.sae.dict_sizes))]


def machine_memory() -> int:
    """Bytes this process may use: the machine's MemTotal, or a smaller cgroup (container) limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(limit_file).read_text().strip())  # "max" (no limit) fails int()
        except (OSError, ValueError):
            continue
        total = min(total, limit)
    return total


def check_memory(params, d: int, available: int | None = None) -> None:
    """Refuse params whose heaviest stage would not fit in memory, before any work starts.

    `d` is the width of the cached activations: model.d_mlp for the built-in model; a stage that
    loads a Hugging Face model passes the hooked module's real width.
    """
    available = machine_memory() if available is None else available
    worst = max(estimates(params, d), key=lambda e: e.bytes)
    if worst.bytes <= available:
        return
    parts = sorted(worst.parts, key=lambda p: -p.bytes)
    detail = "; ".join(f"{p.what}: {_gib(p.bytes)}" for p in parts if p.bytes >= 0.05 * worst.bytes)
    lower = next(p.lower for p in parts if p.lower)
    raise ParamsError(
        f"{worst.asks} needs ~{_gib(worst.bytes)} in {worst.stage}; this machine has {_gib(available)}: lower "
        f"{lower}, or run on a larger machine ({detail})")


def _gib(n: int) -> str:
    return f"{n / GiB:.0f} GiB" if n >= 10 * GiB else f"{n / GiB:.1f} GiB"
