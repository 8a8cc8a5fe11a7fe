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


def test_a_resumed_store_carries_the_record_of_the_run_that_finished_it(tmp_path):
    """The killed run's record would point the audit and the site at a KILLED run without metrics."""
    tokens, rows, layout = token_rows(40, 4), np.arange(40), Layout(4, 2, 2)
    for run_id, stop in (("killed", 3), ("finished", None)):
        cache_activations(fake_acts, tokens, rows, tmp_path / "a.zarr", D, layout, 3,
                          {"splits": {}, "provenance": {"mlflow_run_id": run_id}}, "fp", stop_after_shards=stop)
    assert open_store(tmp_path / "a.zarr").group.attrs["provenance"] == {"mlflow_run_id": "finished"}


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


@pytest.mark.parametrize("value, message", [
    (float("nan"), "activations at hook 'mlp.act' hold 1 non-finite values"),
    (1e5, r"activation at hook 'mlp.act' is 1e\+05, beyond float16's range \(65504\).*set activations.dtype: "
          r"bfloat16 .* or float32"),
])
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
    reference["keep"][:] = np.ones(n_seq * 4, dtype=bool)
    ours_files, ref_files = _files(ours), _files(tmp_path / "ref.zarr")
    shards = [k for k in ref_files if k.name != "zarr.json"]
    assert shards and all(ours_files[k] == ref_files[k] for k in shards if k.parts[0] in ("acts", "tokens", "keep"))
    assert (open_store(ours).acts[:] == acts).all()


def test_rank_0_waiting_for_shards_that_never_come_ends_in_an_error(tmp_path):
    """A rank on another node died unseen: rank 0's wait for its shards stops, naming them."""
    from monosemantic.activations.store import _Progress, _wait_for

    progress = _Progress(tmp_path / "a.zarr")
    progress.reset()
    progress.add(0, 1.0, {})
    with pytest.raises(UserError, match=r"still missing: \[1, 2\]"):
        _wait_for(progress, 3, True, stall_s=0.5, poll_s=0.05)


# ---------------------------------------------------------------- left-out positions and the store's dtype
def sinks(tokens: torch.Tensor) -> torch.Tensor:
    """fake_acts with an attention sink: position 0 of every context has 100 times the norm."""
    out = fake_acts(tokens) + 0.1
    out[:, 0] *= 100
    return out


def test_special_tokens_and_norm_outliers_are_left_out_and_counted(tmp_path):
    from monosemantic.activations.exclude import Exclusion

    ctx, n_seq, special = 6, 40, (3, 7)
    tokens = token_rows(n_seq, ctx) % 50
    splits = {"train": [0, 30 * ctx], "eval": [30 * ctx, n_seq * ctx]}
    stats = cache_activations(sinks, tokens, np.arange(n_seq), tmp_path / "a.zarr", D, Layout(ctx, 2, 3), 3,
                              {"splits": splits}, "fp", exclude=Exclusion(special, norm_factor=10.0, median_tokens=60))
    store = open_store(tmp_path / "a.zarr")
    flat = tokens.ravel()
    is_special, is_sink = np.isin(flat, special), np.arange(len(flat)) % ctx == 0
    assert is_special.sum() > 0
    np.testing.assert_array_equal(store.keep[:], ~(is_special | is_sink))
    expected = {"tokens": int((is_special | is_sink).sum()), "special_tokens": int(is_special.sum()),
                "norm_outliers": n_seq, "train": int((is_special | is_sink)[: 30 * ctx].sum()),
                "eval": int((is_special | is_sink)[30 * ctx :].sum())}
    assert store.excluded == expected and {k: stats["excluded"][k] for k in expected} == expected
    rule = store.group.attrs["exclude"]
    norms = np.linalg.norm(sinks(torch.from_numpy(tokens[:10]).long()).half().float().numpy(), axis=-1).ravel()
    assert rule["median_norm"] == stats["excluded"]["median_norm"] == pytest.approx(
        np.median(norms[~np.isin(tokens[:10].ravel(), special)]), rel=1e-6)  # the first 60 tokens'
    assert rule["special_token_ids"] == list(special) and rule["norm_factor"] == 10.0


def test_a_store_that_leaves_nothing_out_has_no_keep_to_read(tmp_path):
    stats = run(tmp_path / "a.zarr", token_rows(8, 4), np.arange(8), Layout(4, 2, 2))
    store = open_store(tmp_path / "a.zarr")
    assert store.keep is None and store.group["keep"][:].all()
    assert stats["excluded"] == {"tokens": 0, "special_tokens": 0, "norm_outliers": 0, "median_norm": None}


def test_a_resumed_run_leaves_out_the_same_positions(tmp_path):
    from monosemantic.activations.exclude import Exclusion

    tokens, rows, layout = token_rows(60, 6) % 50, np.arange(60), Layout(6, 3, 2)
    rule = Exclusion((3,), norm_factor=10.0, median_tokens=100)
    full = cache_activations(sinks, tokens, rows, tmp_path / "full.zarr", D, layout, 3, {"splits": {}}, "fp",
                             exclude=rule)
    cache_activations(sinks, tokens, rows, tmp_path / "resumed.zarr", D, layout, 3, {"splits": {}}, "fp",
                      stop_after_shards=3, exclude=rule)
    resumed = cache_activations(sinks, tokens, rows, tmp_path / "resumed.zarr", D, layout, 3, {"splits": {}}, "fp",
                                exclude=rule)
    assert resumed["excluded"] == full["excluded"] and full["excluded"]["norm_outliers"] == 60
    assert _files(tmp_path / "full.zarr") == _files(tmp_path / "resumed.zarr")


def test_a_zero_median_norm_is_a_clear_error(tmp_path):
    from monosemantic.activations.exclude import Exclusion

    with pytest.raises(UserError, match="median activation norm .* is 0.0.*activations.exclude.norm_factor"):
        cache_activations(lambda t: torch.zeros(*t.shape, D), token_rows(8, 4), np.arange(8), tmp_path / "a.zarr", D,
                          Layout(4, 2, 2), 3, {"splits": {}}, "fp", exclude=Exclusion(norm_factor=10.0))


@pytest.mark.parametrize("dtype, zarr_dtype, rtol", [("float32", np.float32, 0), ("bfloat16", np.uint16, 2**-8)])
def test_float32_and_bfloat16_stores_hold_what_float16_cannot(tmp_path, dtype, zarr_dtype, rtol):
    def big(t):
        return fake_acts(t) * 1e5 + 1  # far beyond float16's 65504

    tokens = token_rows(12, 4)
    stats = cache_activations(big, tokens, np.arange(12), tmp_path / "a.zarr", D, Layout(4, 2, 2, dtype=dtype), 3,
                              {"splits": {}, "hook": "mlp.act"}, "fp")
    store = open_store(tmp_path / "a.zarr")
    assert store.group["acts"].dtype == zarr_dtype and store.group["acts"].attrs["dtype"] == dtype
    got = store.acts[:]
    assert got.dtype == np.float32 and store.acts.dtype == np.float32
    expected = big(torch.from_numpy(tokens).long()).reshape(-1, D).numpy()
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=0)
    if dtype == "bfloat16":  # round to nearest: exactly torch's bfloat16
        np.testing.assert_array_equal(got, torch.from_numpy(expected).bfloat16().float().numpy())
    assert stats["acts_bytes_raw"] == 12 * 4 * D * np.dtype(zarr_dtype).itemsize and stats["dtype"] == dtype
