"""Automated interpretability: the baseline explainer, the streaming scan, the held-out scoring set, proxies,
logit effects, scores."""

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from monosemantic.errors import UserError
from monosemantic.interpret import Baseline
from monosemantic.interpret.dictionary import _fuzz_set
from monosemantic.interpret.logits import logit_effects, top_effects
from monosemantic.interpret.proxies import detector, token_labels
from monosemantic.interpret.sampling import GROUPS, context_sides, scan
from monosemantic.interpret.scoring import bootstrap_difference, classification, pearson, quantise, spearman
from monosemantic.model import Transformer, TransformerConfig
from monosemantic.params import InterpretParams, Proxy

VOCAB = [f"w{i}" for i in range(40)] + ["Alpha", " beta", "<|endoftext|>"]
A, B, SEP = 40, 41, 42


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


def _identity(x, units):
    return x if units is None else x[:, units]


def _interval(cmax, peak, n):
    """The interval of a context maximum, in float32 as the scan computes it."""
    step = np.float32(peak) / np.float32(n)
    return np.clip(np.ceil(np.float32(cmax) / step), 1, n).astype(int)


@settings(max_examples=25, deadline=None)
@given(n_ctx=st.integers(4, 30), ctx=st.integers(6, 16), d=st.integers(1, 6), density=st.floats(0.05, 0.9),
       batch=st.integers(6, 200), seed=st.integers(0, 1000), dropped=st.sampled_from([0.0, 0.3]))
def test_scan_statistics_and_windows_match_brute_force(n_ctx, ctx, d, density, batch, seed, dropped):
    """With positions left out by the cache (`keep`), the same holds with their activations absent."""
    rng = np.random.default_rng(seed)
    acts = (rng.random((n_ctx * ctx, d)) * (rng.random((n_ctx * ctx, d)) < density)).astype(np.float16)
    tokens = rng.integers(0, 30, n_ctx * ctx).astype(np.int32)
    labels = np.stack([tokens < 10, tokens % 2 == 0], 1)
    sides = rng.integers(-1, 2, n_ctx).astype(np.int8)
    pad = np.zeros((7, d), dtype=np.float16)  # rows before the scanned ones: read from first_row on
    p = _params(batch_tokens=batch, seed=seed)
    keep = rng.random(n_ctx * ctx) >= dropped
    s = scan(np.concatenate([pad, acts]), 7, tokens, ctx, sides, _identity, d,
             lambda active, *_: np.flatnonzero(active.min(0) >= 1), labels, p, keep if dropped else None)
    a = np.where(keep[:, None], acts.astype(np.float32), 0)
    assert s.n_tokens == keep.sum()
    np.testing.assert_allclose(s.density, (a > 0).sum(0) / keep.sum())
    np.testing.assert_allclose(s.max, a.max(0))
    np.testing.assert_allclose(s.mean, a.sum(0) / keep.sum(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(s.true_positives, ((a > 0)[:, :, None] & labels[:, None, :]).sum(0))
    np.testing.assert_array_equal(s.label_counts, (labels & keep[:, None]).sum(0))
    per_ctx = a.reshape(n_ctx, ctx, d).max(1)
    np.testing.assert_array_equal(s.active_contexts, [((per_ctx > 0) & (sides == k)[:, None]).sum(0) for k in (0, 1)])
    ex = s.examples
    chosen = ex.group != GROUPS.index("random")  # top, interval and token examples: never a left-out position
    assert keep[(ex.context * ctx + ex.start + ex.center)[chosen]].all()
    # Every window holds the true activations of its unit over its tokens, from a context of its side.
    for e in range(len(ex.unit)):
        rows = ex.context[e] * ctx + ex.start[e] + np.arange(ex.tokens.shape[1])
        np.testing.assert_array_equal(ex.acts[e], a[rows, ex.unit[e]])
        np.testing.assert_array_equal(ex.tokens[e], tokens[rows])
        assert ex.before[e] == (tokens[rows[0] - 1] if ex.start[e] > 0 else -1)
        assert sides[ex.context[e]] == ex.split[e]
    for u in s.interpreted:
        mine = ex.unit == u
        assert s.histograms[list(s.interpreted).index(u)].sum() == (a[:, u] > 0).sum()
        for side in (0, 1):
            here = mine & (ex.split == side)
            # "top" examples are the contexts with the largest maxima on their side, centred on the max.
            top = here & (ex.group == GROUPS.index("top"))
            got = np.sort(per_ctx[ex.context[top], u])[::-1]
            best = np.sort(per_ctx[(sides == side) & (per_ctx[:, u] > 0), u])[::-1][:3]
            np.testing.assert_array_equal(got, best)
            np.testing.assert_array_equal(np.sort(ex.acts[top, ex.center[top]])[::-1], got)
            # Every interval gets its examples where it has contexts the unit does not already show.
            shown = set(ex.context[here & np.isin(ex.group, [GROUPS.index("top"), GROUPS.index("token")])])
            free = [c for c in np.flatnonzero((sides == side) & (per_ctx[:, u] > 0)) if c not in shown]
            free_interval = _interval(per_ctx[free, u], s.max[u], 3)
            picked = here & (ex.group == GROUPS.index("interval"))
            assert set(ex.context[picked]) <= set(free)
            for b in (1, 2, 3):
                in_b = picked & (ex.interval == b)
                assert in_b.sum() == min(1, (free_interval == b).sum())
                np.testing.assert_array_equal(_interval(per_ctx[ex.context[in_b], u], s.max[u], 3), b)
                np.testing.assert_array_equal(ex.acts[in_b, ex.center[in_b]], per_ctx[ex.context[in_b], u])
            assert (ex.group[here] == GROUPS.index("random")).sum() == min(2, (sides == side).sum())


def test_intervals_cover_a_skewed_unit():
    """Most contexts of a skewed unit peak low and a few high: every interval with contexts still gets
    its examples, on each side (from one uniform pool, the upper intervals came out empty)."""
    rng = np.random.default_rng(5)
    n_ctx, ctx = 400, 8
    high = [1.0, 0.95, 0.85, 0.75, 0.66, 0.65, 0.55]  # the first is the top example; intervals 6-10
    peaks = rng.uniform(0.01, 0.09, n_ctx)
    peaks[: 2 * len(high)] = np.repeat(high, 2)
    acts = np.zeros((n_ctx, ctx, 1), dtype=np.float32)
    acts[np.arange(n_ctx), rng.integers(0, ctx, n_ctx), 0] = peaks
    sides = (np.arange(n_ctx) % 2).astype(np.int8)
    p = _params(top_examples=1, intervals=10, interval_examples=2, top_tokens=0)
    s = scan(acts.reshape(-1, 1), 0, rng.integers(0, 30, n_ctx * ctx).astype(np.int32), ctx, sides, _identity, 1,
             lambda active, *_: np.array([0]), np.zeros((n_ctx * ctx, 0), dtype=bool), p)
    ex = s.examples
    for side in (0, 1):
        got = np.bincount(ex.interval[(ex.split == side) & (ex.group == GROUPS.index("interval"))], minlength=11)[1:]
        np.testing.assert_array_equal(got, [2, 0, 0, 0, 0, 1, 2, 1, 1, 1])


def _documents(tokens, sep):
    """Each token's document, the slow way."""
    out, doc = [], 0
    for t in tokens:
        out.append(doc)
        doc += t == sep
    return np.array(out)


def test_documents_never_land_on_both_sides():
    """Documents much longer than a context (a code file, a base64 blob) and much shorter ones: every
    context used on a side holds only that side's documents."""
    rng = np.random.default_rng(6)
    lengths = np.where(rng.random(300) < 0.2, rng.integers(100, 400, 300), rng.integers(1, 12, 300))
    tokens = np.concatenate([np.r_[rng.integers(0, 40, n), SEP] for n in lengths]).astype(np.int32)
    ctx = 16
    n_ctx = len(tokens) // ctx
    tokens = tokens[: n_ctx * ctx]
    p = _params(split_block_contexts=4, min_contexts=2, batch_tokens=2048)
    sides, n_docs = context_sides(tokens, ctx, SEP, p)
    doc = _documents(tokens, SEP).reshape(n_ctx, ctx)
    assert n_docs == doc.max() + 1
    acts = (rng.random((n_ctx * ctx, 3)) < 0.1).astype(np.float32)
    s = scan(acts, 0, tokens, ctx, sides, _identity, 3, lambda active, *_: np.arange(3),
             np.zeros((len(tokens), 0), dtype=bool), p)
    ex = s.examples
    seen = [set(doc[ex.context[ex.split == side]].ravel()) for side in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    every = [set(doc[sides == side].ravel()) for side in (0, 1)]
    assert not every[0] & every[1]
    # A side changes at most once a block, and only the context holding the change is lost.
    assert (sides == -1).sum() <= n_ctx / p.split_block_contexts + 1 and 0.3 < (sides == 1).mean() < 0.7
    with pytest.raises(UserError, match="one document"):
        context_sides(np.zeros(64, dtype=np.int32), ctx, SEP, p)


def test_classification_scores_match_their_definitions():
    rng = np.random.default_rng(7)
    truth, score = rng.random(200) < 0.3, rng.integers(0, 4, 200).astype(float)  # ties in the score
    r = classification(truth, score >= 2, score)
    assert r["auc"] == pytest.approx(stats.mannwhitneyu(score[truth], score[~truth]).statistic
                                     / (truth.sum() * (~truth).sum()))
    yes = score >= 2
    tp, fp, fn, tn = (truth & yes).sum(), (~truth & yes).sum(), (truth & ~yes).sum(), (~truth & ~yes).sum()
    assert r["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert classification(truth, truth, truth.astype(float)) == {"balanced_accuracy": 1.0, "f1": 1.0, "auc": 1.0}
    assert classification(np.ones(5, bool), np.ones(5, bool), np.ones(5))["auc"] is None  # one class only
    np.testing.assert_array_equal(quantise(np.array([0, 0.04, 0.05, 0.5, 1.0, 1.2]), 1.0), [0, 0, 0, 5, 10, 10])


class _FlakyBackend(Baseline):
    """The baseline, except that the first explanation fails as an LLM call can."""

    def explain_all(self, jobs):
        return ["no reply within 60s, after 5 attempts"] + super().explain_all(jobs[1:])


def _toy_run(seed: int, n_ctx: int = 60, ctx: int = 16, d: int = 8):
    """Tokens with separators, sparse random activations of `d` neurons, and a small model of that width."""
    torch.manual_seed(0)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 42, n_ctx * ctx).astype(np.int32)
    tokens[rng.random(len(tokens)) < 0.03] = SEP
    acts = (rng.random((n_ctx * ctx, d)) * (rng.random((n_ctx * ctx, d)) < 0.3)).astype(np.float16)
    model = Transformer(TransformerConfig(vocab_size=len(VOCAB), ctx=ctx, d_model=16, n_heads=2, d_mlp=d)).eval()
    return tokens, acts, model, ctx, d


def test_interpret_dictionary_records_a_failed_explanation_and_scores_the_rest():
    from monosemantic.interpret import interpret_dictionary
    from monosemantic.sae.standard import Standard

    tokens, acts, model, ctx, d = _toy_run(seed=0)
    acts[:, 0] = (tokens == A) * 3.0  # neuron 0 fires on "Alpha", only
    sae = Standard(d, 12)
    p = _params(features=5, min_contexts=2, split_block_contexts=2)
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
    assert neuron0["detection_balanced_accuracy"] > 0.8 and neuron0["fuzzing_balanced_accuracy"] > 0.8
    assert neuron0["score_token_pearson"] is not None  # the top tokens in other contexts are scored too
    assert r.metrics["features"]["failed"] == 1 and r.metrics["features"]["interpreted"] == 5
    assert r.metrics["proxies"]["alpha"]["neuron"] == 0 and neuron0["chosen_for"] == ["sample", "proxy:alpha"]
    best = r.features.filter((pl.col("kind") == "feature") & (pl.col("index") == r.metrics["proxies"]["alpha"]["feature"]))
    assert best["interpreted"].all() and "proxy:alpha" in best["chosen_for"][0]
    for kind in ("features", "neurons"):
        assert {"mean_spearman", "mean_detection_balanced_accuracy", "mean_detection_f1", "mean_detection_auc",
                "mean_fuzzing_balanced_accuracy", "mean_fuzzing_f1", "mean_fuzzing_auc"} <= set(r.metrics[kind])
    assert r.metrics["split"]["documents"] == (tokens == SEP).sum() + 1
    held = r.examples.filter(pl.col("split") == "heldout")
    assert set(held["group"]) == {"top", "interval", "random", "token"}
    with pytest.raises(UserError, match="separator"):
        interpret_dictionary(acts, 0, tokens, ctx, sae, model, VOCAB[:-1] + ["x"], {}, Baseline(VOCAB), p)


def test_named_units_get_pages_but_stay_out_of_the_sample_scores():
    """A feature named by splitting (or as a proxy's best) is explained and scored like the sample's, but the
    headline means average the random sample only: units picked for being good at something would raise them."""
    from monosemantic.interpret import interpret_dictionary
    from monosemantic.sae.standard import Standard

    tokens, acts, model, ctx, d = _toy_run(seed=1)
    sae = Standard(d, 40)
    p = _params(features=3, min_contexts=2, split_block_contexts=2, neurons=False)
    dead = 39
    sae.W_enc.data[:, dead] = -1.0  # never fires: a named unit too rare to explain still gets its page
    sae.b_enc.data[dead] = -10.0
    plain = interpret_dictionary(acts, 0, tokens, ctx, sae, model, VOCAB, {}, Baseline(VOCAB), p)
    sample = plain.features.filter(pl.col("interpreted"))["index"].to_list()
    extra = int(plain.features.filter(pl.col("explanation_error").is_null() & ~pl.col("interpreted"))["index"][0])
    r = interpret_dictionary(acts, 0, tokens, ctx, sae, model, VOCAB, {}, Baseline(VOCAB), p,
                             named={extra: "splitting", dead: "splitting", sample[0]: "splitting"})
    f = r.features.filter(pl.col("interpreted"))
    assert f["index"].to_list() == sorted({*sample, extra, dead})
    why = dict(zip(f["index"], f["chosen_for"].to_list()))
    assert why[extra] == ["splitting"] and why[sample[0]] == ["sample", "splitting"] and why[sample[1]] == ["sample"]
    row = f.filter(pl.col("index") == extra).row(0, named=True)
    assert row["explanation"] and row["score_pearson"] is not None and row["control_of"] in sample
    assert "too rare" in f.filter(pl.col("index") == dead)["explanation_error"][0]
    assert set(r.examples["index"]) == {*sample, extra, dead}
    # Pearson on the true activations; Spearman, beside it, on them quantised to 0-10 as the simulator predicts.
    held = r.examples.filter((pl.col("index") == extra) & (pl.col("split") == "heldout"))
    sim, true = np.concatenate(held["simulated"].to_list()), np.concatenate(held["acts"].to_list())
    assert row["score_pearson"] == pytest.approx(pearson(sim, true))
    assert row["score_spearman"] == pytest.approx(spearman(sim, quantise(true, row["max_activation"])))
    assert row["score_spearman"] != pytest.approx(spearman(sim, true))
    m = r.metrics["features"]
    in_sample = f.filter(pl.col("chosen_for").list.contains("sample"))["score_pearson"]
    assert m["sampled"] == m["scored"] == 3 and m["interpreted"] == 5
    assert m["mean_pearson"] == pytest.approx(in_sample.mean()) != pytest.approx(f["score_pearson"].mean())


def _planted(rng, n, token, width=29):
    """Windows of random tokens, `token` planted in about half; the unit fires on it (8 of 10)."""
    tokens, before = windows(rng, n, width)
    tokens[rng.random(n) < 0.5, rng.integers(0, width)] = token
    return tokens, before, (tokens == token) * 8.0


def test_detection_and_fuzzing_score_a_right_explanation_high_and_a_wrong_one_at_chance():
    rng = np.random.default_rng(8)
    base = Baseline(VOCAB)
    right = base.explain(*_planted(rng, 60, A))
    wrong = base.explain(*_planted(rng, 60, 7))  # an explanation of another unit
    tokens, before, acts = _planted(rng, 400, A)
    truth10 = quantise(acts, 8.0)
    rows, marked, correct = _fuzz_set(truth10, rng)
    assert 0.4 < correct.mean() < 0.6 and (marked.sum(1) == (truth10[rows] >= 1).sum(1)).all()
    scores = {}
    for name, e in (("right", right), ("wrong", wrong)):
        [detection] = base.detect_all([(e, tokens, before)])
        [fuzzing] = base.fuzz_all([(e, tokens[rows], before[rows], marked)])
        scores[name] = (classification(truth10.max(1) >= 1, *detection), classification(correct, *fuzzing))
    for task in scores["right"]:
        assert task["balanced_accuracy"] > 0.95 and task["f1"] > 0.95 and task["auc"] > 0.95, scores
    for task in scores["wrong"]:
        assert abs(task["balanced_accuracy"] - 0.5) < 0.1 and abs(task["auc"] - 0.5) < 0.1, scores


def test_baseline_scores_do_not_depend_on_window_order():
    rng = np.random.default_rng(9)
    base = Baseline(VOCAB)
    explanation = base.explain(*_planted(rng, 60, A))
    tokens, before, acts = _planted(rng, 50, A)
    order = rng.permutation(50)
    sim = base.simulate(explanation.form, tokens, before)
    shuffled = base.simulate(explanation.form, tokens[order], before[order])
    assert pearson(shuffled, acts[order]) == pytest.approx(pearson(sim, acts))
    assert spearman(shuffled, acts[order]) == pytest.approx(spearman(sim, acts))
    [plain, permuted] = base.detect_all([(explanation, tokens, before), (explanation, tokens[order], before[order])])
    np.testing.assert_array_equal(permuted[1], plain[1][order])


def test_a_neuron_gets_the_same_examples_and_scores_whichever_dictionary():
    """Each unit's random draws are its own: the neurons beside a 12-feature L1 dictionary and a 40-feature
    TopK one get the same windows, explanations and scores, so every dictionary's features-vs-neurons
    comparison has one baseline (and an LLM answers the second dictionary's neurons from its cache). Batches
    of 8192 tokens and widths that are no multiple of 32: float32 column sums would round differently."""
    from monosemantic.interpret import interpret_dictionary
    from monosemantic.sae.standard import Standard
    from monosemantic.sae.topk import TopK

    tokens, acts, model, ctx, d = _toy_run(seed=2, n_ctx=600, d=32)
    p = _params(features=4, min_contexts=2, split_block_contexts=2, batch_tokens=8192)
    runs = [interpret_dictionary(acts, 0, tokens, ctx, sae, model, VOCAB, {}, Baseline(VOCAB), p)
            for sae in (Standard(d, 12), TopK(d, 40, k=3))]
    neurons = [(r.features.filter(pl.col("kind") == "neuron"), r.examples.filter(pl.col("kind") == "neuron"))
               for r in runs]
    assert neurons[0][0]["interpreted"].sum() == d and neurons[0][1].height > 10 * d
    for a, b in zip(*neurons):
        assert a.equals(b, null_equal=True)
    assert runs[0].metrics["neurons"] == runs[1].metrics["neurons"]
    features = [r.features.filter(pl.col("kind") == "feature") for r in runs]
    assert features[0].height == 12 and features[1].height == 40


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), c0=st.integers(0, 10**6), n=st.integers(1, 40), keys=st.lists(
    st.integers(0, 2**40), min_size=1, max_size=30, unique=True))
def test_interval_draws_depend_on_their_coordinates_alone(seed, c0, n, keys):
    """A unit's draw for a context is the same whichever contexts and units share its batch."""
    from monosemantic.interpret.sampling import _uniform

    contexts, keys = np.arange(c0, c0 + n), np.array(keys)
    full = _uniform(seed, contexts, keys)
    assert full.dtype == np.float32 and ((full >= 0) & (full < 1)).all()
    np.testing.assert_array_equal(_uniform(seed, contexts[n // 2 :], keys[::-1]), full[n // 2 :, ::-1])


def test_interval_draws_are_uniform_and_unrelated_across_neighbours():
    from monosemantic.interpret.sampling import _uniform

    u = _uniform(0, np.arange(4000), np.arange(64)).astype(np.float64)
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.01    # neighbouring units
    assert abs(np.corrcoef(u[:-1].ravel(), u[1:].ravel())[0, 1]) < 0.01          # neighbouring contexts
    assert not np.array_equal(_uniform(1, np.arange(10), np.arange(4)), _uniform(0, np.arange(10), np.arange(4)))
