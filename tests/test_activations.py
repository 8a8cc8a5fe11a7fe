import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from monosemantic.activations import Layout, StoreError, cache_activations, open_store
from monosemantic.errors import UserError

D = 24


def fake_acts(tokens: torch.Tensor) -> torch.Tensor:
    """Deterministic activations that encode the token and its position, to check alignment."""
    pos = torch.arange(tokens.shape[1]).expand_as(tokens)
    feats = torch.stack([tokens.float() / 7 + k * pos.float() / 13 for k in range(D)], -1)
    return torch.relu(torch.sin(feats))


def token_rows(n_seq, ctx, seed=0):
    return np.random.default_rng(seed).integers(0, 5000, (n_seq, ctx), dtype=np.int32)


def run(out, tokens, rows, layout, **kw):
    return cache_activations(fake_acts, tokens, rows, out, D, layout, batch_seqs=3,
                             attrs={"splits": {}}, fingerprint="fp", **kw)


@given(n_seq=st.integers(1, 40), ctx=st.integers(2, 9), chunk_seqs=st.integers(1, 5), shard_chunks=st.integers(1, 4))
@settings(max_examples=25, deadline=None)
def test_store_holds_aligned_activations(tmp_path_factory, n_seq, ctx, chunk_seqs, shard_chunks):
    out = tmp_path_factory.mktemp("s") / "acts.zarr"
    tokens = token_rows(n_seq + 5, ctx)
    rows = np.arange(5, 5 + n_seq)
    layout = Layout(ctx, chunk_seqs, shard_chunks)
    stats = run(out, tokens, rows, layout)
    store = open_store(out)
    g = store.group
    assert g["acts"].dtype == np.float16 and g["acts"].shape == (n_seq * ctx, D)
    assert (g["tokens"][:] == tokens[rows].ravel()).all()
    assert (g["seq"][:] == np.repeat(rows, ctx)).all()
    assert (g["pos"][:] == np.tile(np.arange(ctx), n_seq)).all()
    expected = fake_acts(torch.from_numpy(tokens[rows]).long()).reshape(-1, D).half().numpy()
    assert (g["acts"][:] == expected).all()
    assert stats["tokens"] == n_seq * ctx
    assert "shards_done" not in g.attrs and "fingerprint" not in g.attrs
    assert not out.with_name(out.name + ".partial").exists()


def test_zarr_token_source_and_file_count(tmp_path):
    tokens = token_rows(300, 8)
    src = zarr.create_array(tmp_path / "tok.zarr", shape=tokens.shape, dtype="int32", chunks=(64, 8))
    src[:] = tokens
    layout = Layout(8, chunk_seqs=4, shard_chunks=5)
    stats = run(tmp_path / "a.zarr", src, np.arange(300), layout)
    n_shards = -(-300 // layout.shard_seqs)
    assert stats["files"] == 5 * n_shards + 6  # one file per shard per array + zarr.json files
    assert (open_store(tmp_path / "a.zarr").group["tokens"][:] == tokens.ravel()).all()


def _files(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_interrupted_run_resumes_to_identical_bytes(tmp_path):
    tokens, rows, layout = token_rows(100, 6), np.arange(100), Layout(6, 3, 2)
    run(tmp_path / "full.zarr", tokens, rows, layout)
    partial = run(tmp_path / "resumed.zarr", tokens, rows, layout, stop_after_shards=7)
    assert partial == {"complete": False, "shards_done": 7}
    assert not (tmp_path / "resumed.zarr").exists()
    run(tmp_path / "resumed.zarr", tokens, rows, layout)
    assert _files(tmp_path / "full.zarr") == _files(tmp_path / "resumed.zarr")


def test_partial_from_other_inputs_is_discarded(tmp_path):
    tokens, rows, layout = token_rows(40, 4), np.arange(40), Layout(4, 2, 2)
    run(tmp_path / "a.zarr", token_rows(40, 4, seed=9), rows, layout, stop_after_shards=3)
    # Same output path, different fingerprint: the stale partial must not be reused.
    cache_activations(fake_acts, tokens, rows, tmp_path / "a.zarr", D, layout, 3, {"splits": {}}, "other")
    run(tmp_path / "b.zarr", tokens, rows, layout)
    assert (open_store(tmp_path / "a.zarr").acts[:] == open_store(tmp_path / "b.zarr").acts[:]).all()


KILLABLE = textwrap.dedent("""
    import sys, time, numpy as np, torch
    sys.path.insert(0, {tests!r})
    from test_activations import fake_acts, token_rows, D
    from monosemantic.activations import Layout, cache_activations
    def slow(t):
        time.sleep(0.05)
        return fake_acts(t)
    cache_activations(slow, token_rows(400, 6), np.arange(400), __import__("pathlib").Path({out!r}),
                      D, Layout(6, 2, 2), 3, {{"splits": {{}}}}, "fp")
""")


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    out = tmp_path / "killed.zarr"
    script = KILLABLE.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    progress = out.with_name(out.name + ".progress")  # one file per finished shard
    deadline = time.time() + 60
    while time.time() < deadline:
        if len(list(progress.glob("[0-9]*"))) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(progress.glob("[0-9]*")))
    assert 3 <= done < 100 and not out.exists()
    tokens, rows, layout = token_rows(400, 6), np.arange(400), Layout(6, 2, 2)
    run(out, tokens, rows, layout)
    run(tmp_path / "clean.zarr", tokens, rows, layout)
    assert _files(out) == _files(tmp_path / "clean.zarr")


def test_corrupted_chunk_fails_loudly(tmp_path):
    out = tmp_path / "a.zarr"
    run(out, token_rows(32, 4), np.arange(32), Layout(4, 2, 2, compressor="none"))
    shard = next(p for p in sorted((out / "acts").rglob("*")) if p.is_file() and p.name != "zarr.json")
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"fails its checksum \(shard file .*acts/c/0/0.*dvc checkout"):
        open_store(out).acts[:]


def test_resumed_run_reports_the_mean_norm_of_an_uninterrupted_one(tmp_path):
    tokens, rows, layout = token_rows(60, 6), np.arange(60), Layout(6, 3, 2)
    full = run(tmp_path / "full.zarr", tokens, rows, layout)
    run(tmp_path / "resumed.zarr", tokens, rows, layout, stop_after_shards=4)
    resumed = run(tmp_path / "resumed.zarr", tokens, rows, layout)
    assert resumed["mean_norm"] == full["mean_norm"]  # to the last digit


@pytest.mark.parametrize("value, message", [(float("nan"), "non-finite"), (1e5, "float16")])
def test_the_writer_refuses_what_float16_cannot_hold(tmp_path, value, message):
    def bad(t):
        out = fake_acts(t)
        out[-1, -1, 0] = value
        return out

    with pytest.raises(UserError, match=message):
        cache_activations(bad, token_rows(12, 4), np.arange(12), tmp_path / "a.zarr", D, Layout(4, 2, 2), 3,
                          {"splits": {}, "hook": "mlp.act"}, "fp")
    assert not (tmp_path / "a.zarr").exists()


def test_a_missing_shard_or_a_non_finite_value_is_named(tmp_path):
    out = tmp_path / "a.zarr"
    run(out, token_rows(32, 4), np.arange(32), Layout(4, 2, 2))
    acts = zarr.open_array(out / "acts", mode="r+")
    acts[21:23] = np.nan  # written by zarr: valid checksums
    with pytest.raises(StoreError, match=r"non-finite activation at row 21 \(shard file .*acts/c/1/0"):
        open_store(out).acts[16:32]
    assert open_store(out).acts[0:16].shape == (16, D)  # the rest still reads
    (out / "seq/c/2").unlink()
    with pytest.raises(StoreError, match=r"seq/c/2 is missing.*dvc checkout"):
        open_store(out)


def test_nothing_to_cache_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no sequences"):
        run(tmp_path / "a.zarr", token_rows(4, 4), np.arange(0), Layout(4))
    with pytest.raises(UserError, match="not an activation store"):
        open_store(tmp_path / "missing.zarr")


@pytest.mark.parametrize("compressor", ["none", "lz4", "zstd"])
@pytest.mark.parametrize("n_seq", [12, 7])  # whole shards, and a last shard with a padded chunk
def test_our_shard_files_are_the_bytes_zarr_python_writes(tmp_path, compressor, n_seq):
    from monosemantic.activations.store import _create

    layout = Layout(4, chunk_seqs=2, shard_chunks=3, compressor=compressor)
    tokens, rows = token_rows(n_seq, 4), np.arange(n_seq)
    ours = tmp_path / "ours.zarr"
    run(ours, tokens, rows, layout)
    reference = _create(tmp_path / "ref.zarr", n_seq * 4, D, layout, {})
    acts = fake_acts(torch.from_numpy(tokens).long()).reshape(-1, D).half().numpy()
    reference["acts"][:] = acts
    reference["tokens"][:] = tokens.ravel()
    ours_files, ref_files = _files(ours), _files(tmp_path / "ref.zarr")
    shards = [k for k in ref_files if k.name != "zarr.json"]
    assert shards and all(ours_files[k] == ref_files[k] for k in shards if k.parts[0] in ("acts", "tokens"))
    assert (open_store(ours).acts[:] == acts).all()


def test_rank_0_waiting_for_shards_that_never_come_ends_in_an_error(tmp_path):
    """A rank on another node died unseen: rank 0's wait for its shards stops, naming them."""
    from monosemantic.activations.store import _Progress, _wait_for

    progress = _Progress(tmp_path / "a.zarr")
    progress.reset()
    progress.add(0, 1.0, {})
    with pytest.raises(UserError, match=r"still missing: \[1, 2\]"):
        _wait_for(progress, 3, True, stall_s=0.5, poll_s=0.05)
