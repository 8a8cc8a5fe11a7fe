import json

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monosemantic.corpus import (
    Document,
    budgets,
    build_corpus,
    builtin,
    check_sources,
    corpus_stats,
    synthetic,
    take,
)
from monosemantic.errors import UserError
from monosemantic.params import CorpusParams


def corpus_params(*sources, max_chars=50_000, files_root="texts"):
    return CorpusParams.model_validate({"sources": list(sources), "max_chars": max_chars, "files_root": str(files_root)})


def test_builtin_is_real_prose_and_code_in_a_deterministic_order():
    p = corpus_params({"kind": "builtin"}, max_chars=400_000)
    a, b = build_corpus(p), build_corpus(p)
    assert a.equals(b)
    sources = set(a["source"])
    assert {"builtin/docs"} <= sources
    docs = " ".join(a.filter(pl.col("source") == "builtin/docs")["text"])
    assert " the " in docs and "statement" in docs
    info = builtin.describe(p.sources[0])
    assert info["python"].count(".") == 2 and info["stdlib_files"] > 100


def test_builtin_code_part_is_python_source():
    frame = build_corpus(corpus_params({"kind": "builtin", "parts": ["code"]}, max_chars=200_000))
    assert (frame["source"] == "builtin/code").all()
    assert any("def " in t for t in frame["text"])


def test_weights_share_the_budget_and_stats_add_up():
    p = corpus_params({"kind": "builtin", "parts": ["code"], "weight": 3},
                      {"kind": "synthetic", "weight": 1}, max_chars=40_000)
    assert budgets(p) == [30_000, 10_000]
    stats = corpus_stats(build_corpus(p))
    assert stats["characters"] == 40_000
    code = stats["sources"]["builtin/code"]["characters"]
    assert code == 30_000 and abs(sum(s["share"] for s in stats["sources"].values()) - 1) < 1e-9


@given(st.lists(st.text(min_size=0, max_size=50), max_size=30), st.integers(0, 400))
def test_take_never_exceeds_budget_and_keeps_order(texts, budget):
    docs = [Document(str(i), "s", t) for i, t in enumerate(texts)]
    taken = list(take(docs, budget))
    assert sum(len(d.text) for d in taken) <= budget
    ids = [int(d.doc_id) for d in taken]
    assert ids == sorted(ids)
    for d in taken[:-1]:
        assert d.text == texts[int(d.doc_id)]  # only the last document may be truncated


def test_synthetic_is_seeded_and_recognisable():
    src = corpus_params({"kind": "synthetic"}).sources[0]
    first = [d for _, d in zip(range(30), synthetic.documents(src, seed=3))]
    again = [d for _, d in zip(range(30), synthetic.documents(src, seed=3))]
    other = [d for _, d in zip(range(30), synthetic.documents(src, seed=4))]
    assert first == again and first != other
    dna = [d.text for d in first if d.source == "synthetic/dna"]
    assert all(set("".join(t.splitlines()[1:])) <= set("ACGT") for t in dna)


def test_files_source_reads_txt_jsonl_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("plain text document")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "first"}) + "\n\n" + json.dumps({"body": "second"}) + "\n")
    pl.DataFrame({"body": ["from parquet", None]}).write_parquet(tmp_path / "c.parquet")
    p = corpus_params({"kind": "files", "paths": [str(tmp_path / "*.txt"), str(tmp_path / "*.jsonl"),
                                                  str(tmp_path / "*.parquet")], "text_field": "body"}, files_root=tmp_path)
    check_sources(p)
    frame = build_corpus(p)
    assert frame["text"].to_list() == ["plain text document", "first", "second", "from parquet"]
    assert frame["doc_id"].n_unique() == 4


def test_files_missing_glob_fails_before_work(tmp_path):
    p = corpus_params({"kind": "files", "paths": [str(tmp_path / "nothing/*.txt")]}, files_root=tmp_path)
    msg = str(pytest.raises(UserError, check_sources, p).value)
    assert "corpus.sources.0.paths" in msg and "matched no files" in msg


def test_files_non_utf8_errors_by_default_and_can_replace_or_skip(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait")
    (tmp_path / "good.txt").write_text("fine")
    src = {"kind": "files", "paths": [str(tmp_path / "*.txt")]}
    msg = str(pytest.raises(UserError, build_corpus, corpus_params(src, files_root=tmp_path)).value)
    assert "bad.txt" in msg and "not valid UTF-8" in msg and "encoding_errors" in msg
    replaced = build_corpus(corpus_params({**src, "encoding_errors": "replace"}, files_root=tmp_path))
    assert "caf\ufffd au lait" in replaced["text"].to_list()
    skipped = build_corpus(corpus_params({**src, "encoding_errors": "skip"}, files_root=tmp_path))
    assert skipped["text"].to_list() == ["fine"]


def test_jsonl_without_the_field_names_the_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"text": "ok"}\n{"other": 1}\n')
    p = corpus_params({"kind": "files", "paths": [str(tmp_path / "x.jsonl")]}, files_root=tmp_path)
    assert "x.jsonl line 2" in str(pytest.raises(UserError, build_corpus, p).value)


@pytest.mark.parametrize("value, kind", [(None, "null"), (42, "a number"), ({"a": 1}, "an object"),
                                         (["x"], "an array"), (True, "a boolean")])
def test_jsonl_text_that_is_not_a_string_names_the_file_line_and_fix(tmp_path, value, kind):
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": value}) + "\n")
    p = corpus_params({"kind": "files", "paths": [str(tmp_path / "x.jsonl")]}, files_root=tmp_path)
    msg = str(pytest.raises(UserError, build_corpus, p).value)  # was: stored as the text "None", "42", ...
    assert "x.jsonl line 2" in msg and f"'text' is {kind}, not a string" in msg and "text_field" in msg


@pytest.mark.parametrize("content, expected", [
    (b"", "not a readable parquet file"),
    (b"PAR1 this is not parquet at all", "not a readable parquet file"),
    (None, "column 'text' holds Int64, not text"),
])
def test_bad_parquet_is_a_clear_error_before_work(tmp_path, content, expected):
    path = tmp_path / "d.parquet"
    if content is None:
        pl.DataFrame({"text": [1, 2]}).write_parquet(path)
    else:
        path.write_bytes(content)
    p = corpus_params({"kind": "files", "paths": [str(path)]}, files_root=tmp_path)
    for step in (check_sources, build_corpus):  # a polars error or an AttributeError traceback before
        msg = str(pytest.raises(UserError, step, p).value)
        assert str(path) in msg and expected in msg and ("replace it" in msg or "set text_field" in msg)


def test_tilde_in_a_glob_is_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "texts/deep").mkdir(parents=True)
    (tmp_path / "texts/deep/a.jsonl").write_text(json.dumps({"text": "from home"}) + "\n")
    p = corpus_params({"kind": "files", "paths": ["~/texts/**/*.jsonl"]}, files_root=tmp_path / "texts")
    check_sources(p)  # was: "matched no files"
    assert build_corpus(p)["text"].to_list() == ["from home"]


def test_files_outside_files_root_are_refused_naming_the_root_to_set(tmp_path):
    """DVC watches corpus.files_root: a source outside it would change without rerunning corpus."""
    from pydantic import ValidationError

    src = {"kind": "files", "paths": [str(tmp_path / "a/*.txt"), str(tmp_path / "b/**/*.jsonl")]}
    msg = str(pytest.raises(ValidationError, corpus_params, src, files_root=tmp_path / "a").value)
    assert "corpus.sources.0.paths.1" in msg and "outside corpus.files_root" in msg
    assert "corpus.sources.0.paths.0" not in msg and f"files_root: {tmp_path}" in msg
    corpus_params(src, files_root=tmp_path)  # the common parent holds both
    for root, expected in (("~/texts", "DVC does not expand '~'"), ("/", "not '/'"), ("texts/*", "no wildcards")):
        assert expected in str(pytest.raises(ValidationError, corpus_params, {"kind": "builtin"},
                                             files_root=root).value)


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    p = corpus_params({"kind": "files", "paths": [str(tmp_path / "*.txt")]}, files_root=tmp_path)
    assert "corpus is empty" in str(pytest.raises(UserError, build_corpus, p).value)


def test_hf_source_streams_local_parquet_through_datasets(tmp_path):
    pl.DataFrame({"text": [f"hf document {i}" for i in range(5)]}).write_parquet(tmp_path / "d.parquet")
    p = corpus_params({"kind": "hf", "path": "parquet", "data_files": [str(tmp_path / "d.parquet")]})
    frame = build_corpus(p)
    assert frame["text"].to_list() == [f"hf document {i}" for i in range(5)]
    assert (frame["source"] == "hf").all()


def test_hf_source_missing_field(tmp_path):
    pl.DataFrame({"body": ["x"]}).write_parquet(tmp_path / "d.parquet")
    p = corpus_params({"kind": "hf", "path": "parquet", "data_files": [str(tmp_path / "d.parquet")]})
    assert "no 'text' field" in str(pytest.raises(UserError, build_corpus, p).value)
