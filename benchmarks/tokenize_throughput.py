"""Tokenize-stage throughput next to the tokenizers library's own batch encode of the same texts.

Both are timed in this run on the same corpus; the stage does encode + split + pack + Zarr write.
Prints name=value lines. Target: ratio >= 0.8.
"""

import argparse
import tempfile
import time
from pathlib import Path

from monosemantic.corpus import build_corpus
from monosemantic.params import CorpusParams
from monosemantic.tokenizer import train_bpe
from monosemantic.tokens import tokenize_documents, write_tokens

SEP = "<|endoftext|>"


def best_of(n, fn):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chars", type=int, default=6_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    corpus = build_corpus(CorpusParams.model_validate({"max_chars": args.chars, "sources": [
        {"kind": "builtin", "parts": ["docs", "docstrings"], "weight": 3},
        {"kind": "builtin", "parts": ["code"], "weight": 6}, {"kind": "synthetic", "weight": 1}]}))
    texts = corpus["text"].to_list()
    tok = train_bpe(texts[::4], 4096, 2, SEP)

    baseline = best_of(args.repeats, lambda: tok.encode_batch_fast(texts))
    with tempfile.TemporaryDirectory() as d:
        def ours():
            train, eval_, *_ = tokenize_documents(tok, texts, SEP, 128, 0.05, 0)
            write_tokens(Path(d) / "t.zarr", train, eval_, {})
        ours_t = best_of(args.repeats, ours)
    n_tokens = tokenize_documents(tok, texts, SEP, 128, 0.05, 0)[4]
    print(f"chars={sum(map(len, texts))}")
    print(f"tokens={n_tokens}")
    print(f"tokenizers_encode_batch_tokens_per_s={n_tokens / baseline:.0f}")
    print(f"tokenize_stage_tokens_per_s={n_tokens / ours_t:.0f}")
    print(f"ratio={baseline / ours_t:.3f}")


if __name__ == "__main__":
    main()
