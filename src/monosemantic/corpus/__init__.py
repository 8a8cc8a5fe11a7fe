"""Build the training corpus from mixed sources, each capped by its share of the budget.

Every source yields ``Document``s in a deterministic order and describes itself for the
provenance record (files by hash, builtin by Python version, hf by name/revision, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import polars as pl
from tqdm import tqdm

from monosemantic.errors import UserError
from monosemantic.params import CorpusParams


class Document(NamedTuple):
    doc_id: str
    source: str
    text: str


def _module(kind: str):
    from monosemantic.corpus import builtin, files, hf, synthetic

    return {"builtin": builtin, "files": files, "hf": hf, "synthetic": synthetic}[kind]


def check_sources(params: CorpusParams) -> None:
    """Fail before any work on a source that cannot be read (missing files, no datasets lib)."""
    for i, src in enumerate(params.sources):
        check = getattr(_module(src.kind), "check", None)
        if check is not None:
            check(src, where=f"corpus.sources.{i}")


def describe_sources(params: CorpusParams) -> list[dict]:
    """Each source as provenance records it; the seed is the one `build_corpus` gives it."""
    return [{**_module(src.kind).describe(src), "seed": params.seed + i} for i, src in enumerate(params.sources)]


def budgets(params: CorpusParams) -> list[int]:
    total = sum(s.weight for s in params.sources)
    return [int(params.max_chars * s.weight / total) for s in params.sources]


def take(docs: Iterable[Document], budget: int) -> Iterator[Document]:
    """Documents until `budget` characters; the one that crosses it is truncated."""
    used = 0
    for doc in docs:
        if used >= budget:
            return
        if not doc.text.strip():
            continue
        text = doc.text[: budget - used]
        used += len(text)
        yield doc._replace(text=text)


def build_corpus(params: CorpusParams) -> pl.DataFrame:
    rows: list[Document] = []
    with tqdm(total=params.max_chars, unit="char", unit_scale=True, desc="corpus") as bar:
        for i, (src, budget) in enumerate(zip(params.sources, budgets(params))):
            docs = _module(src.kind).documents(src, seed=params.seed + i)
            for doc in take(docs, budget):
                rows.append(doc)
                bar.update(len(doc.text))
    if not rows:
        raise UserError(
            "the corpus is empty: no source produced any text; check corpus.sources "
            "(paths that match only empty files, an empty dataset split, a text_field that is blank)"
        )
    frame = pl.DataFrame(rows, schema={"doc_id": pl.String, "source": pl.String, "text": pl.String}, orient="row")
    dupes = frame["doc_id"].is_duplicated()
    if dupes.any():
        # The same document from two sources (e.g. builtin listed twice) keeps distinct ids.
        frame = frame.with_columns(
            pl.when(dupes)
            .then(pl.col("doc_id") + "#" + pl.int_range(pl.len()).over("doc_id").cast(pl.String))
            .otherwise(pl.col("doc_id"))
        )
    return frame


def write_corpus(frame: pl.DataFrame, out_dir: Path, shard_docs: int) -> list[Path]:
    paths = []
    for k, start in enumerate(range(0, frame.height, shard_docs)):
        path = out_dir / f"part-{k:05d}.parquet"
        frame.slice(start, shard_docs).write_parquet(path, compression="zstd")
        paths.append(path)
    return paths


def read_corpus(path: str | Path) -> pl.DataFrame:
    path = Path(path)
    parts = sorted(path.glob("part-*.parquet"))
    if not parts:
        raise UserError(f"{path} holds no corpus shards (part-*.parquet): run the corpus stage first")
    return pl.concat([pl.read_parquet(p) for p in parts])


def corpus_stats(frame: pl.DataFrame) -> dict:
    chars = frame["text"].str.len_chars()
    total = int(chars.sum())
    by_source = (
        frame.with_columns(chars.alias("chars"))
        .group_by("source")
        .agg(pl.len().alias("documents"), pl.col("chars").sum())
        .sort("source")
    )
    return {
        "documents": frame.height,
        "characters": total,
        "sources": {
            r["source"]: {"documents": r["documents"], "characters": r["chars"], "share": r["chars"] / total}
            for r in by_source.iter_rows(named=True)
        },
    }
