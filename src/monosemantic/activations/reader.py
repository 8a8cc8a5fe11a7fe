"""Shuffled batches from the activation store, with bounded memory and an exact restart.

Per epoch the store's chunks (whole sequences) are visited in a seeded random order, in
windows of ``window_chunks`` chunks; each window's rows are shuffled together, so a batch mixes
tokens from hundreds of contexts rather than arriving in context order. A background thread
reads the next window while the current one is consumed, its chunks by ``reads`` concurrent
requests: from object storage a chunk is a round trip, and one at a time would leave the
trainer waiting on latency rather than bandwidth. Rows whose ``keep`` flag is False (positions
the cache left out, `activations.exclude`) are dropped as each chunk is read, and never handed out.
The position is the number of rows handed out; every window's order is a function of (seed,
epoch, window), and each chunk's number of kept rows is counted once when the reader is built, so a
reader built with the same arguments and `start` continues exactly where a previous one stopped. Under
data parallelism every rank walks the same global batches: reading all of each and keeping its
part, or, with lanes, reading only its own streams (`batches`). Batches come in the store's
dtype (a float16 store's as float16): converted on the training device, they cross to it at half
the bytes and cost the CPU no conversion.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch
from monosemantic.activations.store import VerifiedArray


class ShuffledReader:
    """One shuffled stream over the store's chunks, or over `lane` = (index, count): every count-th
    chunk from the index-th on, a stream of its own (see `batches`)."""

    def __init__(self, acts: VerifiedArray, start_row: int, stop_row: int, batch_size: int, seed: int,
                 window_chunks: int = 64, position: int = 0, part: slice = slice(None),
                 lane: tuple[int, int] = (0, 1), reads: int = 8, keep=None):
        """`keep`: None (every row), or a boolean array aligned with `acts` (the store's ``keep``)."""
        self.acts, self.batch_size, self.seed, self.reads, self.keep = acts, batch_size, seed, reads, keep
        step = acts.chunks[0]
        # Chunk-aligned pieces of [start_row, stop_row): whole chunks are the unit of reading.
        edges = sorted({start_row, stop_row, *range(-(-start_row // step) * step, stop_row, step)})
        self.pieces = [(a, b) for a, b in zip(edges, edges[1:]) if b > a][lane[0] :: lane[1]]
        self.sizes = dict(zip(self.pieces, _kept(keep, self.pieces, step)))  # rows each piece hands out
        self.rows_per_epoch = sum(self.sizes.values())
        if self.rows_per_epoch < batch_size:
            raise ValueError(f"{self.rows_per_epoch} rows cannot fill one batch of {batch_size}")
        self.window_chunks = window_chunks
        self.position = position
        self.part = part  # a rank's rows of each global batch (compute.part): the batches stay global
        self.key = [] if lane[1] == 1 else [lane[1], lane[0]]  # one stream: the seeds it always had

    def _windows(self, epoch: int) -> list[list[tuple[int, int]]]:
        order = np.random.default_rng([self.seed, epoch, *self.key]).permutation(len(self.pieces))
        pieces = [self.pieces[i] for i in order]
        return [pieces[i : i + self.window_chunks] for i in range(0, len(pieces), self.window_chunks)]

    def _read(self, piece: tuple[int, int]) -> np.ndarray:
        rows = self.acts[piece[0] : piece[1]]
        return rows if self.keep is None else rows[np.asarray(self.keep[piece[0] : piece[1]], dtype=bool)]

    def _window_rows(self, epoch: int, w: int, window: list[tuple[int, int]], pool: Executor) -> np.ndarray:
        rows = np.concatenate(list(pool.map(self._read, window)))
        return rows[np.random.default_rng([self.seed, epoch, w, *self.key]).permutation(len(rows))]

    def _stream(self, pool: Executor) -> Iterator[np.ndarray]:
        """Row blocks from the current position on, forever (epoch after epoch)."""
        epoch, skip = divmod(self.position, self.rows_per_epoch)
        while True:
            for w, window in enumerate(self._windows(epoch)):
                n = sum(self.sizes[piece] for piece in window)
                if skip >= n:
                    skip -= n
                    continue
                yield self._window_rows(epoch, w, window, pool)[skip:]
                skip = 0
            epoch += 1

    def __iter__(self) -> Iterator[torch.Tensor]:
        blocks: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    blocks.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def prefetch():
            try:
                with ThreadPoolExecutor(self.reads, thread_name_prefix="chunk-read") as pool:
                    for block in self._stream(pool):
                        if not put(block):
                            return
            except BaseException as e:  # a bad chunk: handed to the consumer, never swallowed
                put(e)

        thread = threading.Thread(target=prefetch, daemon=True)
        thread.start()
        try:
            pending, have = [], 0
            while True:
                while have < self.batch_size:
                    block = blocks.get()
                    if isinstance(block, BaseException):
                        raise block
                    pending.append(block)
                    have += len(block)
                rows = np.concatenate(pending) if len(pending) > 1 else pending[0]
                batch, rest = rows[: self.batch_size], rows[self.batch_size :]
                pending, have = ([rest], len(rest)) if len(rest) else ([], 0)
                self.position += self.batch_size
                yield torch.from_numpy(batch[self.part])  # as stored: a GPU converts after the copy
        finally:
            stop.set()


def batches(acts: VerifiedArray, start_row: int, stop_row: int, batch_size: int, seed: int, window_chunks: int,
            position: int, lanes: int = 1, rank: int = 0, world_size: int = 1, keep=None) -> Iterator[torch.Tensor]:
    """This rank's rows of every global batch of `batch_size`, from row `position` of the sequence on.

    With `lanes` = 1 the global batch comes from one shuffled stream; every rank reads all of it
    and keeps its part. With `lanes` L > 1 it is the concatenation of L independent streams over
    disjoint chunks (batch_size / L rows each), and rank r of N reads only its L / N lanes. Either
    way the global batches depend on (seed, lanes), never on the number of ranks. Rows where `keep`
    is False are never handed out.
    """
    if lanes == 1:
        part = slice(batch_size * rank // world_size, batch_size * (rank + 1) // world_size)
        return iter(ShuffledReader(acts, start_row, stop_row, batch_size, seed, window_chunks, position, part,
                                   keep=keep))
    readers = [iter(ShuffledReader(acts, start_row, stop_row, batch_size // lanes, seed, window_chunks,
                                   position // lanes, lane=(lane, lanes), keep=keep))
               for lane in range(lanes * rank // world_size, lanes * (rank + 1) // world_size)]
    return (torch.cat([next(r) for r in readers]) for _ in iter(int, 1))


def random_rows(acts: VerifiedArray, start_row: int, stop_row: int, n: int, generator: torch.Generator,
                keep=None) -> torch.Tensor:
    """min(n, rows in range) rows of ``acts[start_row:stop_row]``, from whole chunks drawn at random; only
    rows where `keep` (aligned with `acts`; None: every row) is True.

    Reading a few random chunks costs what it reads; n random rows would touch (and
    decompress) nearly every chunk of the store, and a draw happens at every resampling.
    """
    step = acts.chunks[0]
    first, last = start_row // step, -(-stop_row // step)
    picked, have = [], 0
    for c in (first + torch.randperm(last - first, generator=generator)).tolist():
        a, b = max(c * step, start_row), min((c + 1) * step, stop_row)  # edge chunks are partial
        mask = None if keep is None else np.asarray(keep[a:b], dtype=bool)
        picked.append((a, b, mask))
        have += b - a if mask is None else int(mask.sum())
        if have >= n:
            break
    picked.sort(key=lambda piece: piece[0])
    rows = np.concatenate([acts[a:b] if mask is None else acts[a:b][mask] for a, b, mask in picked])
    return torch.from_numpy(rows[:n].astype(np.float32))


def _kept(keep, pieces: list[tuple[int, int]], step: int) -> list[int]:
    """How many rows of each piece `keep` keeps (all of them when it is None), read in blocks of whole chunks."""
    if keep is None:
        return [b - a for a, b in pieces]
    block, cached, counts = step * max(1, (1 << 22) // step), (None, None), []
    for a, b in pieces:  # chunk-aligned pieces: each lies within one block
        k0 = a // block * block
        if cached[0] != k0:
            cached = (k0, np.asarray(keep[k0 : min(k0 + block, keep.shape[0])], dtype=bool))
        counts.append(int(cached[1][a - k0 : b - k0].sum()))
    return counts
