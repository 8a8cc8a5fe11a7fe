import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monosemantic.errors import UserError
from monosemantic.tokenizer import load_tokenizer, train_bpe
from monosemantic.tokens import pack, read_tokens, split_documents, write_tokens

SEP = 0
docs_strategy = st.lists(
    st.lists(st.integers(1, 500), min_size=0, max_size=40).map(lambda x: np.array(x, np.int32)),
    min_size=0, max_size=25,
)


@given(st.integers(2, 500), st.floats(0.01, 0.99), st.integers(0, 2**31))
def test_split_is_a_disjoint_cover_with_both_sides_nonempty(n, frac, seed):
    train, eval_ = split_documents(n, frac, seed)
    assert len(train) and len(eval_)
    assert not set(train) & set(eval_)
    assert sorted([*train, *eval_]) == list(range(n))
    again = split_documents(n, frac, seed)
    assert (again[0] == train).all() and (again[1] == eval_).all()


def test_split_needs_two_documents():
    with pytest.raises(UserError, match="at least 2 documents"):
        split_documents(1, 0.1, 0)


@given(docs_strategy, st.integers(2, 17), st.integers(0, 1000))
def test_pack_is_the_separated_concatenation_cut_into_rows(docs, ctx, seed):
    rows = pack(docs, SEP, ctx, seed)
    stream = np.concatenate([np.append(d, SEP) for d in docs]) if docs else np.zeros(0, np.int32)
    assert rows.dtype == np.int32 and rows.shape == (len(stream) // ctx, ctx)
    # Same multiset of tokens as the stream's first n_seq*ctx tokens, each doc intact and in order.
    order = np.random.default_rng(seed).permutation(len(docs))
    expected = np.concatenate([np.append(docs[i], SEP) for i in order]) if docs else stream
    assert (rows.ravel() == expected[: rows.size]).all()


@given(docs_strategy.filter(lambda d: len(d) >= 2), st.integers(2, 9), st.integers(0, 100))
@settings(max_examples=50)
def test_no_document_reaches_both_splits(docs, ctx, seed):
    # Give every document unique token ids, then check which split each id lands in.
    tagged = [np.full(max(len(d), 1), 1000 + i, np.int32) for i, d in enumerate(docs)]
    train_idx, eval_idx = split_documents(len(tagged), 0.3, seed)
    train = pack([tagged[i] for i in train_idx], SEP, ctx, seed)
    eval_ = pack([tagged[i] for i in eval_idx], SEP, ctx, seed)
    in_train, in_eval = set(train.ravel()) - {SEP}, set(eval_.ravel()) - {SEP}
    assert not in_train & in_eval
    assert in_train <= {1000 + i for i in train_idx} and in_eval <= {1000 + i for i in eval_idx}


@given(st.integers(1, 40), st.integers(1, 10), st.integers(2, 24))
@settings(max_examples=20, deadline=None)
def test_token_store_round_trip(n_train, n_eval, ctx):
    import tempfile
    from pathlib import Path

    rng = np.random.default_rng(0)
    train = rng.integers(0, 1000, (n_train, ctx), dtype=np.int32)
    eval_ = rng.integers(0, 1000, (n_eval, ctx), dtype=np.int32)
    with tempfile.TemporaryDirectory() as d:
        write_tokens(Path(d) / "t.zarr", train, eval_, {"vocab_size": 1000})
        store = read_tokens(Path(d) / "t.zarr")
        assert (store.split("train") == train).all() and (store.split("eval") == eval_).all()
        assert store.ctx == ctx and store.attrs["vocab_size"] == 1000 and store.tokens.dtype == np.int32


def test_bpe_round_trips_text_and_keeps_the_separator(tmp_path):
    texts = ["def f(x):\n    return x + 1\n", "The quick brown fox jumps over the lazy dog. " * 20] * 20
    tok = train_bpe(texts, vocab_size=300, min_frequency=2, separator="<|endoftext|>")
    path = tmp_path / "tok.json"
    tok.save(str(path))
    again = load_tokenizer(path, "<|endoftext|>")
    text = "def g(y):\n    return y * 2  # café ✓"
    assert again.decode(again.encode(text).ids) == text
    assert again.token_to_id("<|endoftext|>") is not None and again.get_vocab_size() <= 300


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    tok = train_bpe(["abc abc abc"] * 5, 260, 1, "<sep>")
    tok.save(str(tmp_path / "t.json"))
    with pytest.raises(UserError, match="no token '</s>'"):
        load_tokenizer(tmp_path / "t.json", "</s>")
