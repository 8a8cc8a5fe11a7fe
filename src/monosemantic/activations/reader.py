"""Shuffled batches from the activation store, with bounded memory and an exact restart.

Per epoch the store's chunks (whole sequences) are visited in a seeded random order, in
windows of ``window_chunks`` chunks; each window's rows are shuffled together, so a batch mixes
tokens from hundreds of contexts rather than arriving in context order. A background thread
reads the next window while the current one is consumed, its chunks by ``reads`` concurrent
requests: from object storage a chunk is a round trip, and one at a time would leave the
trainer waiting on latency rather than bandwidth. The position is the number of rows
handed out; every window's order is a function of (seed, epoch, window), so a reader built
with the same arguments and `start` continues exactly where a previous one stopped. Under
data parallelism every rank walks the same global batches: reading all of each and keeping its
part, or, with lanes, reading only its own streams (`batches`).
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
                 lane: tuple[int, int] = (0, 1), reads: int = 8):
        self.acts, self.batch_size, self.seed, self.reads = acts, batch_size, seed, reads
        step = acts.chunks[0]
        # Chunk-aligned pieces of [start_row, stop_row): whole chunks are the unit of reading.
        edges = sorted({start_row, stop_row, *range(-(-start_row // step) * step, stop_row, step)})
        self.pieces = [(a, b) for a, b in zip(edges, edges[1:]) if b > a][lane[0] :: lane[1]]
        self.rows_per_epoch = sum(b - a for a, b in self.pieces)
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

    def _window_rows(self, epoch: int, w: int, window: list[tuple[int, int]], pool: Executor) -> np.ndarray:
        rows = np.concatenate(list(pool.map(lambda piece: self.acts[piece[0]:piece[1]], window)))
        return rows[np.random.default_rng([self.seed, epoch, w, *self.key]).permutation(len(rows))]

    def _stream(self, pool: Executor) -> Iterator[np.ndarray]:
        """Row blocks from the current position on, forever (epoch after epoch)."""
        epoch, skip = divmod(self.position, self.rows_per_epoch)
        while True:
            for w, window in enumerate(self._windows(epoch)):
                n = sum(b - a for a, b in window)
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
                yield torch.from_numpy(batch[self.part].astype(np.float32))
        finally:
            stop.set()


def batches(acts: VerifiedArray, start_row: int, stop_row: int, batch_size: int, seed: int, window_chunks: int,
            position: int, lanes: int = 1, rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
    """This rank's rows of every global batch of `batch_size`, from row `position` of the sequence on.

    With `lanes` = 1 the global batch comes from one shuffled stream; every rank reads all of it
    and keeps its part. With `lanes` L > 1 it is the concatenation of L independent streams over
    disjoint chunks (batch_size / L rows each), and rank r of N reads only its L / N lanes. Either
    way the global batches depend on (seed, lanes), never on the number of ranks.
    """
    if lanes == 1:
        part = slice(batch_size * rank // world_size, batch_size * (rank + 1) // world_size)
        return iter(ShuffledReader(acts, start_row, stop_row, batch_size, seed, window_chunks, position, part))
    readers = [iter(ShuffledReader(acts, start_row, stop_row, batch_size // lanes, seed, window_chunks,
                                   position // lanes, lane=(lane, lanes)))
               for lane in range(lanes * rank // world_size, lanes * (rank + 1) // world_size)]
    return (torch.cat([next(r) for r in readers]) for _ in iter(int, 1))


def random_rows(acts: VerifiedArray, start_row: int, stop_row: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """min(n, rows in range) rows of ``acts[start_row:stop_row]``, from whole chunks drawn at random.

    Reading a few random chunks costs what it reads; n random rows would touch (and
    decompress) nearly every chunk of the store, and a draw happens at every resampling.
    """
    step, want = acts.chunks[0], min(n, stop_row - start_row)
    first, last = start_row // step, -(-stop_row // step)
    picked, have = [], 0
    for c in (first + torch.randperm(last - first, generator=generator)).tolist():
        a, b = max(c * step, start_row), min((c + 1) * step, stop_row)  # edge chunks are partial
        picked.append((a, b))
        have += b - a
        if have >= want:
            break
    rows = np.concatenate([acts[a:b] for a, b in sorted(picked)])
    return torch.from_numpy(rows[:want].astype(np.float32))
