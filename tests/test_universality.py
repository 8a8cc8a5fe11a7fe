"""Universality: the best-match correlation math, and the universality@<size> stage end to end."""

import json
import math
import re
import sys

import numpy as np
import pytest
import torch
import yaml

from monosemantic.errors import UserError
from monosemantic.evaluation.universality import (
    best_match, features, histogram, hooked_activations, match_table, neurons,
)
from monosemantic.model import Transformer, TransformerConfig, load_model
from monosemantic.params import load_params
from monosemantic.sae.export import load_sae
from monosemantic.sae.standard import Standard
from tests.conftest import ROOT, clone_repo, set_params, sh


def sparse_signals(n: int, width: int, seed: int) -> torch.Tensor:
    """ReLU'd Gaussians: mostly zero, like features and post-ReLU neurons."""
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, width, generator=g) - 0.5)


def test_best_match_equals_numpy_corrcoef_on_a_small_case():
    a, b = sparse_signals(300, 5, 0), sparse_signals(300, 7, 1)
    b[:, 3] += 0.8 * a[:, 1]  # one real relation among chance ones
    m = best_match(neurons(a), neurons(b), token_block=64, unit_block=3)
    c = np.corrcoef(a.numpy().T, b.numpy().T)[:5, 5:]
    np.testing.assert_allclose(m.correlation.numpy(), c.max(1), rtol=0, atol=1e-6)
    assert m.match.tolist() == c.argmax(1).tolist() and m.match[1] == 3


def test_a_permuted_noisy_copy_matches_itself():
    a = sparse_signals(4000, 64, 0)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(2))
    b = a[:, perm] + 0.05 * torch.rand(4000, 64, generator=torch.Generator().manual_seed(3))
    m = best_match(neurons(a), neurons(b))
    assert m.correlation.min() > 0.98
    assert torch.equal(perm[m.match], torch.arange(64))  # each unit finds its own copy


def test_independent_signals_match_poorly():
    m = best_match(neurons(sparse_signals(4000, 64, 0)), neurons(sparse_signals(4000, 64, 1)))
    assert m.summary()["median"] < 0.15 and m.correlation.max() < 0.2


def test_dead_and_constant_units_are_excluded_and_counted():
    a, b = sparse_signals(500, 8, 0), sparse_signals(500, 6, 1)
    a[:, [1, 4]] = 0  # never fire
    a[:, 6] = 2.5  # constant but not zero: no correlation either
    b[:, 2] = 0  # dead in B: never anyone's match
    m = best_match(neurons(a), neurons(b), token_block=128, unit_block=4)
    s = m.summary()
    assert (s["compared"], s["excluded_dead"]) == (5, 3)
    assert m.correlation[[1, 4, 6]].isnan().all() and m.match[[1, 4, 6]].tolist() == [-1, -1, -1]
    assert 2 not in m.match.tolist() and math.isfinite(s["median"]) and math.isfinite(s["mean"])
    rows = histogram({"neurons": m})
    assert len(rows) == 20 and sum(r["neurons"] for r in rows) == 5
    table = match_table({"neurons": m})
    assert table.height == 8 and table["correlation"].is_nan().sum() == 3


def test_all_dead_dictionary_is_a_clear_error():
    with pytest.raises(UserError, match="none of the 4 units of B varies"):
        best_match(neurons(sparse_signals(100, 3, 0)), neurons(torch.zeros(100, 4)))


def test_blocked_features_equal_a_direct_computation():
    torch.manual_seed(0)
    x = sparse_signals(600, 16, 0) * 3
    sae_a, sae_b = Standard(16, 40), Standard(16, 24)
    with torch.no_grad():
        sae_a.b_enc.fill_(-0.3)  # some features never fire
        sae_a.b_enc[:5] = -100.0
    y = x @ torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))[0]
    fa, fb = features(x, sae_a), features(y.relu(), sae_b)
    assert torch.equal(fa.block(x, slice(None)), sae_a.encode(x).detach())
    blocked = best_match(fa, fb, token_block=250, unit_block=16)  # uneven blocks on both sides
    whole = best_match(fa, fb, token_block=10_000, unit_block=10_000)
    torch.testing.assert_close(blocked.correlation, whole.correlation, rtol=0, atol=1e-6, equal_nan=True)
    assert torch.equal(blocked.match, whole.match) and blocked.summary()["excluded_dead"] >= 5
    # Against the definition, with the full feature matrices in memory:
    A, B = sae_a.encode(x).detach().double(), sae_b.encode(y.relu()).detach().double()
    live_a, live_b = A.std(0) > 0, B.std(0) > 0
    c = torch.corrcoef(torch.cat([A[:, live_a], B[:, live_b]], 1).T)[: int(live_a.sum()), int(live_a.sum()):]
    torch.testing.assert_close(blocked.correlation[live_a], c.max(1).values, rtol=0, atol=1e-6)


def test_hooked_activations_cover_every_token_in_order():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, ctx=8, d_model=16, n_heads=2, d_mlp=32)).eval()
    contexts = np.random.default_rng(0).integers(0, 50, (5, 8))
    x = hooked_activations(model, "mlp.act", contexts, batch_seqs=2)
    assert x.shape == (40, 32) and x.dtype == torch.float32
    with torch.no_grad():
        h = model.embed(torch.from_numpy(contexts[3:4])) + model.pos(torch.arange(8))
        h = h + model.attn(model.ln_attn(h))
        expected = model.mlp.act(model.mlp.w_in(model.ln_mlp(h)))[0]
    torch.testing.assert_close(x[24:32], expected)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["model"].update(source="hf", hf={"name_or_path": "gpt2"}), "needs model.source 'builtin'"),
    (lambda r: r["universality"].update(dict_sizes=[100]), "universality.dict_sizes [100] must be among"),
    (lambda r: r["universality"].update(dict_sizes=[128, 256]), "universality.dict_sizes: got [128, 256]"),
    (lambda r: r["universality"].update(seed=r["model"].get("seed", 0)), "equals model.seed"),
])
def test_params_refuse_what_the_stage_cannot_do(tmp_path, mutate, message):
    raw = yaml.safe_load((ROOT / "tests/params_tiny.yaml").read_text())
    raw["universality"]["dict_sizes"] = [128]
    mutate(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=re.escape(message)):
        load_params(tmp_path / "params.yaml")


@pytest.mark.e2e
def test_universality_stage_end_to_end(repo, tmp_path):
    work = clone_repo(repo, tmp_path / "r")
    size = min(yaml.safe_load((work / "params.yaml").read_text())["sae"]["dict_sizes"])

    res = sh(sys.executable, "-m", "stages.universality", str(size), cwd=work, check=False)
    assert res.returncode == 2 and "is not in universality.dict_sizes []" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (work / "checkpoints/universality").exists()

    set_params(work, lambda r: r["universality"].update(dict_sizes=[size]))
    stage = f"universality@{size}"
    sh("dvc", "repro", stage, cwd=work)
    m = json.loads((work / f"metrics/universality/{size}.json").read_text())
    for key in ("feature_median", "feature_mean", "neuron_median", "neuron_mean"):
        assert -1 <= m[key] <= 1 and math.isfinite(m[key]), (key, m)
    assert m["dict_size"] == size and m["n_tokens"] == 4000 // 32 * 32
    assert m["features_compared"] + m["features_excluded_dead"] == size and m["features_compared"] > 0
    assert m["neurons_compared"] + m["neurons_excluded_dead"] == 128
    # Two comparably trained models, not the same one twice.
    assert abs(m["model_b_eval_loss"] - m["model_a_eval_loss"]) < 0.5
    out = work / f"models/universality/{size}"
    model_a, model_b = load_model(work / "models/transformer"), load_model(out / "model")
    assert not torch.equal(model_a.mlp.w_in.weight, model_b.mlp.w_in.weight)
    assert load_sae(out / "sae").d_sae == size and (out / "provenance.json").exists()
    assert not (work / f"checkpoints/universality/{size}").exists()
    for kind in ("features", "neurons"):
        rows = (work / f"plots/universality/{size}/{kind}.csv").read_text().splitlines()
        assert rows[0] == "correlation,units" and len(rows) == 21
        assert sum(int(r.split(",")[1]) for r in rows[1:]) == m[f"{kind}_compared"]

    assert "Running stage" not in sh("dvc", "repro", stage, cwd=work).stdout
    status = sh("dvc", "status", stage, cwd=work).stdout
    assert "up to date" in status, status
