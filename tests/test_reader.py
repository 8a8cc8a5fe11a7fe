import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from monosemantic.activations.reader import ShuffledReader


def store(tmp_path, n, chunk):
    """Rows that spell their own index exactly in float16 (hi, lo)."""
    arr = zarr.create_array(tmp_path / "a.zarr", shape=(n, 2), chunks=(chunk, 2), dtype="float16")
    idx = np.arange(n)
    arr[:] = np.stack([idx // 1000, idx % 1000], 1).astype(np.float16)
    return arr


def ids(batch):
    b = batch.numpy().astype(np.int64)
    return b[:, 0] * 1000 + b[:, 1]


@given(n=st.integers(40, 300), chunk=st.integers(1, 32), start=st.integers(0, 30),
       batch=st.integers(1, 40), window=st.integers(1, 6), seed=st.integers(0, 5), reads=st.sampled_from([1, 3, 8]))
@settings(max_examples=40, deadline=None)
def test_an_epoch_covers_each_row_once_and_restarts_exactly(tmp_path_factory, n, chunk, start, batch, window, seed,
                                                             reads):
    arr = store(tmp_path_factory.mktemp("r"), n, chunk)
    stop = n - 3
    rows = stop - start
    if rows < batch:
        with pytest.raises(ValueError):
            ShuffledReader(arr, start, stop, batch, seed, window)
        return
    reader = ShuffledReader(arr, start, stop, batch, seed, window, reads=reads)
    n_batches = 2 * rows // batch + 1  # more than an epoch, across an epoch boundary
    got = [ids(b) for b in itertools.islice(iter(reader), n_batches)]
    stream = np.concatenate(got)
    assert sorted(stream[:rows]) == list(range(start, stop))  # the first epoch: each row once
    for k in (0, 1, n_batches // 2):  # a reader restarted at batch k continues identically, however it reads
        again = ShuffledReader(arr, start, stop, batch, seed, window, position=k * batch, reads=1)
        tail = [ids(b) for b in itertools.islice(iter(again), n_batches - k)]
        assert all((x == y).all() for x, y in zip(tail, got[k:]))


def test_batches_mix_contexts_and_depend_on_the_seed(tmp_path):
    ctx, n = 16, 16 * 200
    arr = store(tmp_path, n, chunk=ctx * 4)
    first = ids(next(iter(ShuffledReader(arr, 0, n, 256, seed=0))))
    contexts = first // ctx
    assert len(set(contexts)) > 100  # 256 tokens from well over 100 of the 200 contexts
    assert (np.diff(first) != 1).mean() > 0.95  # not in order
    other = ids(next(iter(ShuffledReader(arr, 0, n, 256, seed=1))))
    assert not (first == other).all()


def test_memory_is_bounded_by_the_window(tmp_path):
    arr = store(tmp_path, 4000, chunk=10)
    reader = ShuffledReader(arr, 0, 4000, 50, seed=0, window_chunks=4)
    with ThreadPoolExecutor(2) as pool:
        blocks = list(itertools.islice(reader._stream(pool), 20))
    assert max(len(b) for b in blocks) == 40  # 4 chunks of 10 rows at a time


def test_a_window_s_chunks_are_read_concurrently(tmp_path):
    """Against a store where each read waits (a remote one's round trip), the reader keeps `reads`
    requests in flight: one at a time, a window of 8 chunks would take 8 round trips."""
    arr = store(tmp_path, 800, chunk=10)

    class Slow:
        chunks, shape, in_flight, most = arr.chunks, arr.shape, 0, 0
        lock = threading.Lock()

        def __getitem__(self, rows):
            with self.lock:
                Slow.in_flight += 1
                Slow.most = max(Slow.most, Slow.in_flight)
            time.sleep(0.05)
            with self.lock:
                Slow.in_flight -= 1
            return arr[rows]

    batch = next(iter(ShuffledReader(Slow(), 0, 800, 80, seed=0, window_chunks=8, reads=4)))
    assert Slow.most == 4
    assert sorted(ids(batch)) == sorted(ids(next(iter(ShuffledReader(arr, 0, 800, 80, seed=0, window_chunks=8)))))


@given(start=st.integers(0, 50), length=st.integers(1, 200), n=st.integers(1, 300), chunk=st.integers(1, 40))
@settings(max_examples=30, deadline=None)
def test_random_rows_come_from_the_range_in_whole_random_chunks(tmp_path_factory, start, length, n, chunk):
    import torch

    from monosemantic.activations.reader import random_rows

    arr = store(tmp_path_factory.mktemp("r"), 260, chunk)
    got = ids(random_rows(arr, start, start + length, n, torch.Generator().manual_seed(0)))
    assert len(got) == min(n, length)
    assert ((got >= start) & (got < start + length)).all() and len(set(got)) == len(got)
    again = ids(random_rows(arr, start, start + length, n, torch.Generator().manual_seed(0)))
    assert (got == again).all()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad_chunk", [0, 5])  # read first by the consumer's first block, or later
def test_a_bad_chunk_stops_the_reader_instead_of_hanging_it(tmp_path, bad_chunk):
    from monosemantic.activations import StoreError
    from monosemantic.activations.store import VerifiedArray

    arr = zarr.create_array(tmp_path / "a.zarr", shape=(800, 2), chunks=(100, 2), dtype="float16",
                            compressors=[zarr.codecs.Crc32cCodec()])
    arr[:] = np.ones((800, 2), np.float16)
    chunk = tmp_path / f"a.zarr/c/{bad_chunk}/0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    reader = ShuffledReader(VerifiedArray(arr, tmp_path / "a.zarr", ""), 0, 800, 50, seed=0, window_chunks=2)
    with pytest.raises(StoreError, match="checksum"):
        for _ in itertools.islice(iter(reader), 100):  # more than an epoch
            pass


@given(lanes=st.sampled_from([1, 2, 4]), world=st.sampled_from([1, 2, 4]), start=st.integers(0, 3),
       position=st.integers(0, 30))
@settings(max_examples=20, deadline=None)
def test_ranks_read_disjoint_parts_of_the_same_global_batches(tmp_path_factory, lanes, world, start, position):
    """Whatever the number of ranks, their parts put together are the global batches of one process."""
    from monosemantic.activations.reader import batches

    if lanes > 1 and lanes % world:
        return  # params.py refuses it
    arr = store(tmp_path_factory.mktemp("r"), 640, 16)
    position *= 16

    def global_batches(rank, n):
        return [ids(b) for b in itertools.islice(batches(arr, start, 600, 16, 0, 3, position, lanes, rank, n), 50)]

    alone = global_batches(0, 1)
    parts = [global_batches(r, world) for r in range(world)]
    together = [np.concatenate([p[i] for p in parts]) for i in range(50)]
    if lanes == 1:
        assert all((a == b).all() for a, b in zip(alone, together))
    else:  # the same rows in each batch (lane order within a rank's part is its own)
        assert all(sorted(a) == sorted(b) for a, b in zip(alone, together))
    if lanes > 1:  # each rank reads only its own lanes' chunks (chunk i belongs to lane i mod lanes)
        chunk_lane = lambda rows: set(((rows // 16) - start // 16) % lanes)  # noqa: E731
        for r, part in enumerate(parts):
            mine = set(range(lanes * r // world, lanes * (r + 1) // world))
            assert chunk_lane(np.concatenate(part)) <= mine


@given(n=st.integers(40, 300), chunk=st.integers(1, 32), start=st.integers(0, 30), batch=st.integers(1, 30),
       window=st.integers(1, 6), seed=st.integers(0, 5), dropped=st.floats(0, 0.6), mask_seed=st.integers(0, 99),
       lanes=st.sampled_from([1, 2]))
@settings(max_examples=40, deadline=None)
def test_excluded_rows_never_appear_and_a_restart_continues_identically(
        tmp_path_factory, n, chunk, start, batch, window, seed, dropped, mask_seed, lanes):
    from monosemantic.activations.reader import batches

    arr = store(tmp_path_factory.mktemp("r"), n, chunk)
    keep = np.random.default_rng(mask_seed).random(n) >= dropped
    stop = n - 3
    kept = np.flatnonzero(keep[start:stop]) + start
    batch *= lanes
    if lanes == 1:
        if len(kept) < batch:
            with pytest.raises(ValueError, match="cannot fill one batch"):
                ShuffledReader(arr, start, stop, batch, seed, window, keep=keep)
            return
    else:
        lane_rows = [int(keep[a:b].sum()) for a, b in ShuffledReader(arr, start, stop, 1, seed, window).pieces]
        if min(sum(lane_rows[lane::2]) for lane in range(2)) < batch // 2:  # a lane cannot fill its share
            with pytest.raises(ValueError, match="cannot fill one batch"):
                batches(arr, start, stop, batch, seed, window, 0, lanes, keep=keep)
            return
    n_batches = 2 * len(kept) // batch + 1  # more than an epoch, across an epoch boundary
    got = [ids(b) for b in itertools.islice(batches(arr, start, stop, batch, seed, window, 0, lanes, keep=keep),
                                            n_batches)]
    stream = np.concatenate(got)
    assert keep[stream].all()  # an excluded row never appears
    if lanes == 1:
        assert sorted(stream[: len(kept)]) == kept.tolist()  # the first epoch: each kept row once
    for k in (1, n_batches // 2):
        again = batches(arr, start, stop, batch, seed, window, k * batch, lanes, keep=keep)
        tail = [ids(b) for b in itertools.islice(again, n_batches - k)]
        assert all((x == y).all() for x, y in zip(tail, got[k:]))


def test_a_keep_flag_that_keeps_every_row_changes_nothing(tmp_path):
    arr = store(tmp_path, 500, 16)
    plain = [ids(b) for b in itertools.islice(iter(ShuffledReader(arr, 3, 490, 37, seed=2, window_chunks=3)), 30)]
    flagged = ShuffledReader(arr, 3, 490, 37, seed=2, window_chunks=3, keep=np.ones(500, dtype=bool))
    assert all((a == b).all() for a, b in zip(plain, (ids(b) for b in itertools.islice(iter(flagged), 30))))


@given(start=st.integers(0, 50), length=st.integers(1, 200), n=st.integers(1, 300), chunk=st.integers(1, 40),
       mask_seed=st.integers(0, 99))
@settings(max_examples=30, deadline=None)
def test_random_rows_skip_excluded_rows(tmp_path_factory, start, length, n, chunk, mask_seed):
    import torch

    from monosemantic.activations.reader import random_rows

    arr = store(tmp_path_factory.mktemp("r"), 260, chunk)
    keep = np.random.default_rng(mask_seed).random(260) < 0.7
    got = ids(random_rows(arr, start, start + length, n, torch.Generator().manual_seed(0), keep=keep))
    assert len(got) == min(n, int(keep[start : start + length].sum()))
    assert keep[got].all() and ((got >= start) & (got < start + length)).all() and len(set(got)) == len(got)
