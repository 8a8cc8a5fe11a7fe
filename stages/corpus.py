"""corpus: mix the configured sources into parquet shards (doc_id, source, text)."""

from monosemantic.corpus import (
    build_corpus,
    check_sources,
    corpus_stats,
    describe_sources,
    write_corpus,
)
from monosemantic.provenance import atomic_output, write_record
from stages._stage import run_stage

OUT = "data/corpus"


def main() -> None:
    with run_stage("corpus", "corpus") as s:
        check_sources(s.section)
        sources = describe_sources(s.section)
        frame = build_corpus(s.section)
        with atomic_output(OUT) as tmp:
            write_corpus(frame, tmp, s.section.shard_docs)
            write_record(tmp, s.record(sources=sources))
        s.metrics("metrics/corpus.json", corpus_stats(frame))


if __name__ == "__main__":
    main()
