"""The evaluation math: loss recovered, FVU, densities, the splice, feature splitting."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monosemantic.evaluation import density_histogram, density_summary, evaluate_sae, fraction_recovered
from monosemantic.evaluation import splitting
from monosemantic.evaluation.metrics import Reconstruction
from monosemantic.model import Transformer, TransformerConfig
from monosemantic.model.hooks import logits, splice
from monosemantic.report.summary import summary_markdown
from monosemantic.sae.standard import Standard
from tests.test_model import tiny_gpt2


def identity_sae(d: int) -> Standard:
    """Exactly the identity on any input: f = [relu(x), relu(-x)], x̂ = relu(x) − relu(−x)."""
    sae = Standard(d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def zero_sae(d: int) -> Standard:
    sae = identity_sae(d)
    with torch.no_grad():
        sae.W_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def model_and_contexts():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, ctx=12, d_model=16, n_heads=2, d_mlp=32)).eval()
    with torch.no_grad():  # a random model whose MLP matters: scale up its output
        model.mlp.w_out.weight.mul_(20)
        model.unembed.weight.mul_(20)
    # Greedy continuations of random prompts: text this model predicts well, so ablating hurts.
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 50, (10, 1)))
    with torch.no_grad():
        while tokens.shape[1] < 12:
            tokens = torch.cat([tokens, model(tokens)[:, -1:].argmax(-1)], 1)
    return model, tokens.numpy().astype(np.int32)


def test_fraction_recovered_by_hand():
    assert fraction_recovered(2.0, 2.0, 3.0) == 1.0
    assert fraction_recovered(2.0, 3.0, 3.0) == 0.0
    assert fraction_recovered(2.0, 2.5, 3.0) == 0.5
    assert fraction_recovered(2.0, 2.2, 4.0) == pytest.approx(0.9)
    assert math.isnan(fraction_recovered(2.0, 2.5, 2.0))  # ablation costs nothing: undefined


def test_fvu_of_the_mean_predictor_is_one_and_mse_by_hand():
    x = torch.randn(1000, 8) * torch.arange(1, 9) + 5
    rec = Reconstruction(8)
    for chunk in x.split(300):  # streamed in uneven batches
        rec.update(chunk, x.mean(0).expand_as(chunk))
    assert rec.fvu == pytest.approx(1.0, abs=1e-9)
    exact = Reconstruction(8)
    exact.update(x, torch.zeros_like(x))
    assert exact.mse == pytest.approx(float(x.double().pow(2).mean()), rel=1e-9)


def test_density_thresholds_on_constructed_counts():
    counts = torch.tensor([0, 0, 1, 5, 50, 101, 500])
    s = density_summary(counts, 1000, ultralow=1e-6, dense=0.1)
    # 1e-6 cannot be resolved from 1000 tokens: the threshold becomes 1/1000, seen once
    assert s["ultralow_threshold"] == 1e-3
    assert (s["dead_features"], s["ultralow_features"], s["dense_features"]) == (2, 1, 2)
    assert s["dead_fraction"] == pytest.approx(2 / 7) and s["dense_fraction"] == pytest.approx(2 / 7)
    big = density_summary(torch.tensor([0, 5, 10, 11, 10**6]), 10**7, ultralow=1e-6, dense=0.1)
    assert big["ultralow_threshold"] == 1e-6 and big["ultralow_features"] == 2 and big["dense_features"] == 0


def test_density_histogram_counts_alive_features_in_their_bins():
    counts = torch.tensor([0, 1, 10, 100, 100, 1000])
    rows = density_histogram(counts, 1000, bins=3)  # bins over log10 density [-3, 0]
    assert [r["features"] for r in rows] == [1, 1, 3]
    assert [r["log10_density"] for r in rows] == [-2.5, -1.5, -0.5]


def _loss(lg, tokens):
    return float(F.cross_entropy(lg[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()))


def test_identity_sae_leaves_the_model_unchanged(model_and_contexts):
    model, contexts = model_and_contexts
    mean = torch.zeros(32)
    m, _ = evaluate_sae(model, "mlp.act", identity_sae(32), contexts, mean, batch_seqs=4)
    assert m["loss_reconstructed"] == pytest.approx(m["loss_original"], abs=1e-6)
    assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert m["kl_divergence"] == pytest.approx(0.0, abs=1e-6)
    assert m["mse"] == pytest.approx(0.0, abs=1e-10) and m["fvu"] == pytest.approx(0.0, abs=1e-8)
    assert m["n_eval_tokens"] == contexts.size
    with torch.no_grad():
        tokens = torch.from_numpy(contexts).long()
        assert m["loss_original"] == pytest.approx(_loss(model(tokens), tokens), rel=1e-6)


def test_zero_reconstruction_recovers_nothing(model_and_contexts):
    model, contexts = model_and_contexts
    m, _ = evaluate_sae(model, "mlp.act", zero_sae(32), contexts, torch.zeros(32), batch_seqs=3)
    assert m["loss_reconstructed"] == pytest.approx(m["loss_zero_ablation"], abs=1e-6)
    assert m["loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert m["l0"] > 0 and m["loss_zero_ablation"] > m["loss_original"]


def test_ablation_losses_match_an_edited_model(model_and_contexts):
    """Zero ablation = the MLP output weights zeroed; mean ablation = the mean folded into the bias."""
    model, contexts = model_and_contexts
    mean = torch.rand(32)
    m, _ = evaluate_sae(model, "mlp.act", identity_sae(32), contexts, mean, batch_seqs=5)
    tokens = torch.from_numpy(contexts).long()
    zeroed, meaned = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        zeroed.mlp.w_out.weight.zero_()
        meaned.mlp.w_out.bias.add_(meaned.mlp.w_out.weight @ mean)
        meaned.mlp.w_out.weight.zero_()
        assert m["loss_zero_ablation"] == pytest.approx(_loss(zeroed(tokens), tokens), rel=1e-5)
        assert m["loss_mean_ablation"] == pytest.approx(_loss(meaned(tokens), tokens), rel=1e-5)


def test_excluded_positions_are_not_spliced_and_not_counted(model_and_contexts):
    """Positions the cache left out keep their activation in every intervention and count in no statistic."""
    from monosemantic.model.hooks import capture

    model, contexts = model_and_contexts
    keep = np.random.default_rng(3).random(contexts.shape) < 0.6
    tokens, kept = torch.from_numpy(contexts).long(), torch.from_numpy(keep)
    x = capture(model, "mlp.act", tokens)[kept]
    m, _ = evaluate_sae(model, "mlp.act", zero_sae(32), contexts, torch.zeros(32), batch_seqs=4, keep=keep)
    assert (m["n_eval_tokens"], m["n_excluded_tokens"]) == (keep.sum(), (~keep).sum())
    assert m["mse"] == pytest.approx(float(x.pow(2).mean()), rel=1e-5)
    assert m["l0"] == pytest.approx(float((x != 0).sum(1).float().mean()), rel=1e-6)  # f = [relu(x), relu(-x)]
    with torch.no_grad(), splice(model, "mlp.act", lambda a: torch.where(kept[..., None], 0, a)):
        zeroed_where_kept = _loss(logits(model, tokens), tokens)
    for key in ("loss_reconstructed", "loss_zero_ablation", "loss_mean_ablation"):  # the same intervention
        assert m[key] == pytest.approx(zeroed_where_kept, rel=1e-5)
    everywhere, _ = evaluate_sae(model, "mlp.act", zero_sae(32), contexts, torch.zeros(32), batch_seqs=4)
    assert everywhere["loss_zero_ablation"] > m["loss_zero_ablation"] + 1e-3
    assert everywhere["n_eval_tokens"] == contexts.size and everywhere["n_excluded_tokens"] == 0


def test_splice_is_removed_afterwards_and_works_on_hugging_face_models(tmp_path):
    model = tiny_gpt2(tmp_path)  # GELU activations can be negative: the identity SAE handles both signs
    contexts = np.random.default_rng(1).integers(0, 97, (6, 16)).astype(np.int32)
    hook = "transformer.h.1.mlp.act"
    m, _ = evaluate_sae(model, hook, identity_sae(128), contexts, torch.zeros(128), batch_seqs=4)
    assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-5) and m["kl_divergence"] < 1e-6
    tokens = torch.from_numpy(contexts).long()
    with torch.no_grad():
        before = logits(model, tokens)
        with splice(model, hook, torch.zeros_like):
            ablated = logits(model, tokens)
        after = logits(model, tokens)
    assert not torch.allclose(before, ablated)
    torch.testing.assert_close(before, after)


def test_nearest_features_find_permuted_copies():
    small = F.normalize(torch.randn(20, 8), dim=1)
    perm = torch.randperm(20)
    cos, idx = splitting.nearest(small[perm] * 3.0, small, rows=7)  # scale-free, chunked
    assert torch.equal(idx, perm) and torch.allclose(cos, torch.ones(20), atol=1e-6)


def test_a_feature_that_splits_forms_a_family():
    e = torch.eye(6)
    small = e[:3]                                   # features 0, 1, 2
    medium = torch.stack([e[0] + 0.3 * e[3], e[0] - 0.3 * e[3], e[1], e[5]])
    large = torch.stack([e[0] + 0.3 * e[3], e[0] - 0.3 * e[3], e[0] + 0.3 * e[4], e[1], e[2], e[5]])
    table = splitting.nearest_table({3: small, 4: medium, 6: large})
    assert set(zip(table["dict_size"], table["other_size"])) == {(4, 3), (6, 3), (6, 4)}
    fams = splitting.families(table, threshold=0.6)
    top = fams[0]
    assert (top["dict_size"], top["feature"]) == (3, 0)
    assert top["children"]["4"]["features"] == [0, 1] and top["children"]["6"]["features"] == [0, 1, 2]
    assert all(f["feature"] != 2 or "4" not in f["children"] for f in fams)  # e5 is not near feature 2
    summary = splitting.summary(table, fams)
    assert summary["families"] == {"split_into_4": 1, "split_into_6": 1}
    assert summary["6_to_4"]["median_cosine"] == pytest.approx(1.0)


def test_summary_of_a_first_dictionary_not_yet_evaluated_takes_the_thresholds_of_one_that_is():
    """report builds from whatever exists: `dvc repro -s report` after evaluate ran for some dictionaries only."""
    done = {"dict_size": 1024, "n_eval_tokens": 500, "ultralow_threshold": 0.002, "dense_threshold": 0.2, "l0": 5.0}
    text = summary_markdown([{"dict_size": 512, "tokens_seen": 1000}, done])
    assert "On 500 held-out tokens" in text and "density ≤ 0.002" in text and "density > 0.2;" in text


def test_summary_table_has_a_row_per_size():
    base = {"l0": 10.0, "mse": 0.01, "fvu": 0.2, "loss_recovered_mean_ablation": 0.9, "kl_divergence": 0.1,
            "dead_features": 1, "ultralow_features": 2, "dense_features": 0, "resampled_neurons": 3,
            "tokens_seen": 1000, "n_eval_tokens": 500, "ultralow_threshold": 0.002, "dense_threshold": 0.1}
    text = summary_markdown([{**base, "dict_size": 512, "loss_recovered": 0.7},
                             {**base, "dict_size": 4096, "loss_recovered": 0.8, "fvu": math.nan}])
    rows = [line for line in text.splitlines() if line.startswith(("| standard | 512 ", "| standard | 4096 "))]
    assert rows[0].split("|")[6].strip() == "70.0%" and "–" in rows[1]
    assert "rises with dictionary size" in text
