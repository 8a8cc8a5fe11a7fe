"""Automated interpretability: the baseline explainer, the streaming scan, proxies, logit effects, scores."""

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from monosemantic.interpret import Baseline
from monosemantic.interpret.logits import logit_effects, top_effects
from monosemantic.interpret.proxies import detector, token_labels
from monosemantic.interpret.sampling import GROUPS, scan
from monosemantic.interpret.scoring import bootstrap_difference, pearson, spearman
from monosemantic.model import Transformer, TransformerConfig
from monosemantic.params import InterpretParams, Proxy

VOCAB = [f"w{i}" for i in range(40)] + ["Alpha", " beta"]
A, B = 40, 41


def windows(rng, n, width=29, plant=0.0):
    tokens = rng.integers(0, 40, size=(n, width))
    if plant:
        for row in tokens:
            for t in np.flatnonzero(rng.random(width - 1) < plant):
                row[t], row[t + 1] = A, B
    return tokens, rng.integers(0, 40, size=n)


def test_baseline_explains_a_planted_bigram_feature():
    """A feature that fires exactly on B right after A: the explanation names both, the score is > 0.9."""
    rng = np.random.default_rng(0)
    base = Baseline(VOCAB)

    def acts(tokens, before):
        prev = np.concatenate([before[:, None], tokens[:, :-1]], 1)
        return ((prev == A) & (tokens == B)) * 10.0

    # B also appears alone and A alone, so neither token by itself explains the feature.
    train, before = windows(rng, 40, plant=0.08)
    train[::3, 5], train[1::3, 9] = B, A
    explanation = base.explain(train, before, acts(train, before))
    assert '"Alpha"' in explanation.text and '" beta"' in explanation.text, explanation.text
    assert "bigram" in explanation.form
    test, test_before = windows(rng, 40, plant=0.05)
    test[::2, 3] = B
    simulated = base.simulate(explanation.form, test, test_before)
    assert pearson(simulated, acts(test, test_before)) > 0.9


def test_baseline_scores_random_activations_near_zero():
    rng = np.random.default_rng(1)
    base = Baseline(VOCAB)
    scores = []
    for _ in range(10):
        train, before = windows(rng, 40)
        explanation = base.explain(train, before, rng.random(train.shape) * 10 * (rng.random(train.shape) < 0.2))
        test, test_before = windows(rng, 40)
        truth = rng.random(test.shape) * (rng.random(test.shape) < 0.2)
        scores.append(pearson(base.simulate(explanation.form, test, test_before), truth))
    assert abs(np.mean(scores)) < 0.05 and max(map(abs, scores)) < 0.2, scores


def test_baseline_token_feature_and_empty_explanations():
    rng = np.random.default_rng(2)
    base = Baseline(VOCAB)
    train, before = windows(rng, 30)
    explanation = base.explain(train, before, (train == 7) * 8.0)
    assert explanation.text.startswith('Fires on the tokens "w7" (8)') and list(explanation.form) == ["token"]
    silent = base.explain(train, before, np.zeros(train.shape))
    assert silent.text.startswith("No token") and base.simulate(silent.form, train, before).max() == 0


def test_scores_match_scipy_and_handle_constants():
    rng = np.random.default_rng(3)
    x, y = rng.random(200), rng.integers(0, 5, 200)  # ties in y
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    assert pearson(np.ones(10), x[:10]) == 0.0  # a flat prediction carries no information


def test_bootstrap_interval_covers_the_difference():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.6, 0.1, 200), rng.normal(0.4, 0.1, 300)
    d = bootstrap_difference(a, b, 1000, seed=0)
    assert d["ci_low"] < d["mean"] < d["ci_high"] and d["ci_low"] > 0.15 and d["ci_high"] < 0.25
    same = bootstrap_difference(a, rng.normal(0.6, 0.1, 300), 1000, seed=0)
    assert same["ci_low"] < 0 < same["ci_high"]


def test_proxy_labels_cover_tokens_overlapping_a_match():
    strings = ["data", ' "', "QUJD", "REVG", "R0hJ", '"', "\n", "ACGT", "ACGTAC", "GTAC"]
    contexts = np.array([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 0, 6]])
    b64 = detector(Proxy(name="b64", regex=r"[A-Za-z0-9]{12,}"))
    dna = detector(Proxy(name="dna", callable="tests.test_interpret:dna_spans"))
    labels = token_labels(contexts, strings, [b64, dna])
    assert labels[:, 0].tolist() == [False, False, True, True, True, False] + [False, True, True, True, True, False]
    assert labels[:, 1].tolist() == [False] * 6 + [False, True, True, True, False, False]


def dna_spans(text):
    import re

    return (m.span() for m in re.finditer("[ACGT]{8,}", text))


def test_bad_proxies_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match="exactly one of regex or callable"):
        Proxy(name="x")
    with pytest.raises(ValueError, match="does not compile"):
        Proxy(name="x", regex="[unclosed")
    from monosemantic.errors import UserError
    with pytest.raises(UserError, match="cannot import 'nowhere.mod:fn'"):
        detector(Proxy(name="x", callable="nowhere.mod:fn"))


def test_logit_effects_follow_the_direct_path():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, ctx=8, d_model=16, n_heads=2, d_mlp=32)).eval()
    effects = logit_effects(model, torch.eye(32)[[3, 5]])
    # By hand, for neuron 3: its output weights, centred and scaled as LayerNorm does, then unembedded.
    r = model.mlp.w_out.weight[:, 3]
    expected = (model.unembed.weight @ ((r - r.mean()) * model.ln_final.weight)).detach()
    torch.testing.assert_close(effects[0], expected)
    up, up_v, down, down_v = top_effects(effects, 4)
    assert up_v[0].tolist() == sorted(effects[0].tolist(), reverse=True)[:4] and down_v[0, 0] == effects[0].min()
    assert expected[up[0, 0]].item() == pytest.approx(expected.max().item())
    assert logit_effects(torch.nn.Linear(2, 2), torch.eye(2)) is None  # not the built-in model: unknown path


def _params(**kw):
    return InterpretParams(**{"batch_tokens": 64, "top_examples": 3, "intervals": 3, "interval_examples": 1,
                              "random_examples": 2, "top_tokens": 2, "token_contexts": 1, "window_before": 3,
                              "window_after": 2, "histogram_bins": 5, "min_contexts": 1, **kw})


@settings(max_examples=25)
@given(n_ctx=st.integers(4, 30), ctx=st.integers(6, 16), d=st.integers(1, 6), density=st.floats(0.05, 0.9),
       batch=st.integers(6, 200), seed=st.integers(0, 1000))
def test_scan_statistics_and_windows_match_brute_force(n_ctx, ctx, d, density, batch, seed):
    rng = np.random.default_rng(seed)
    acts = (rng.random((n_ctx * ctx, d)) * (rng.random((n_ctx * ctx, d)) < density)).astype(np.float16)
    tokens = rng.integers(0, 30, n_ctx * ctx).astype(np.int32)
    labels = np.stack([tokens < 10, tokens % 2 == 0], 1)
    pad = np.zeros((7, d), dtype=np.float16)  # rows before the scanned ones: read from first_row on
    p = _params(batch_tokens=batch, seed=seed)
    s = scan(np.concatenate([pad, acts]), 7, tokens, ctx, lambda x, u: x if u is None else x[:, u], d,
             lambda active: np.flatnonzero(active.min(0) >= 1), labels, p)
    a = acts.astype(np.float32)
    np.testing.assert_allclose(s.density, (a > 0).mean(0))
    np.testing.assert_allclose(s.max, a.max(0))
    np.testing.assert_allclose(s.mean, a.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(s.true_positives, ((a > 0)[:, :, None] & labels[:, None, :]).sum(0))
    ex = s.examples
    # Every window holds the true activations of its unit over its tokens.
    for e in range(len(ex.unit)):
        rows = ex.context[e] * ctx + ex.start[e] + np.arange(ex.tokens.shape[1])
        np.testing.assert_array_equal(ex.acts[e], a[rows, ex.unit[e]])
        np.testing.assert_array_equal(ex.tokens[e], tokens[rows])
        assert ex.before[e] == (tokens[rows[0] - 1] if ex.start[e] > 0 else -1)
    for u in s.interpreted:
        mine = ex.unit == u
        train, held = set(ex.context[mine & (ex.split == 0)]), set(ex.context[mine & (ex.split == 1)])
        assert not train & held  # explainer and scoring examples never share a context
        # "top" examples are the contexts with the largest maxima on their side, centred on the max.
        per_ctx = a[:, u].reshape(n_ctx, ctx).max(1)
        top = mine & (ex.group == GROUPS.index("top")) & (ex.split == 0)
        got = np.sort(per_ctx[ex.context[top]])[::-1]
        assert (got > 0).all() and len(got) <= 3
        centre = ex.acts[top, ex.center[top]] if top.any() else np.zeros(0)
        np.testing.assert_array_equal(np.sort(centre)[::-1], got)
        assert s.histograms[list(s.interpreted).index(u)].sum() == (a[:, u] > 0).sum()


class _FlakyBackend(Baseline):
    """The baseline, except that the first explanation fails as an LLM call can."""

    def explain_all(self, jobs):
        return ["no reply within 60s, after 5 attempts"] + super().explain_all(jobs[1:])


def test_interpret_dictionary_records_a_failed_explanation_and_scores_the_rest():
    from monosemantic.interpret import interpret_dictionary
    from monosemantic.sae.standard import Standard

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n_ctx, ctx, d = 60, 16, 8
    tokens = rng.integers(0, 42, n_ctx * ctx).astype(np.int32)
    acts = (rng.random((n_ctx * ctx, d)) * (rng.random((n_ctx * ctx, d)) < 0.3)).astype(np.float16)
    acts[tokens == A, 0] = 3.0  # neuron 0 fires on "Alpha"
    model = Transformer(TransformerConfig(vocab_size=42, ctx=ctx, d_model=16, n_heads=2, d_mlp=d)).eval()
    sae = Standard(d, 12)
    p = _params(features=5, min_contexts=2)
    alpha = {"alpha": detector(Proxy(name="alpha", regex="Alpha"))}
    r = interpret_dictionary(acts, 0, tokens, ctx, sae, model, VOCAB, alpha, _FlakyBackend(VOCAB), p)
    done = r.features.filter(pl.col("interpreted"))
    first = done.row(0, named=True)
    assert first["explanation"] is None and first["score_pearson"] is None and "no reply" in first["explanation_error"]
    rest = done.slice(1)
    assert rest["score_pearson"].null_count() == 0 and rest["control_pearson"].null_count() <= 1
    neuron0 = r.features.filter((pl.col("kind") == "neuron") & (pl.col("index") == 0)).row(0, named=True)
    assert neuron0["best_proxy"] == "alpha" and neuron0["best_proxy_recall"] == 1.0
    assert '"Alpha"' in neuron0["explanation"] and neuron0["score_pearson"] > 0.5
    assert r.metrics["features"]["failed"] == 1 and r.metrics["features"]["interpreted"] == 5
    assert r.metrics["proxies"]["alpha"]["neuron"] == 0
