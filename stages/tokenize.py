"""tokenize: encode documents, split train/eval by document, pack into ctx-long rows."""

from monosemantic.corpus import read_corpus
from monosemantic.provenance import atomic_output
from monosemantic.tokenizer import load_tokenizer
from monosemantic.tokens import tokenize_documents, write_tokens
from stages._stage import run_stage

OUT = "data/tokens.zarr"


def main() -> None:
    with run_stage("tokenize", "tokenize", also=("tokenizer",)) as s:
        p, sep = s.section, s.params.tokenizer.separator
        s.input("corpus", "data/corpus")
        s.input("tokenizer", "data/tokenizer.json")
        tok = load_tokenizer("data/tokenizer.json", sep)
        frame = read_corpus("data/corpus")
        train, eval_, n_train_docs, n_eval_docs, n_tok = tokenize_documents(
            tok, frame["text"].to_list(), sep, p.ctx, p.eval_fraction, p.seed
        )
        attrs = {
            "vocab_size": tok.get_vocab_size(), "separator": sep, "separator_id": tok.token_to_id(sep),
            "documents": {"train": n_train_docs, "eval": n_eval_docs},
        }
        with atomic_output(OUT) as tmp:
            write_tokens(tmp, train, eval_, {**attrs, "provenance": s.record()})
        s.metrics("metrics/tokens.json", {
            "documents": frame.height, "tokens": n_tok, "chars_per_token": frame["text"].str.len_chars().sum() / n_tok,
            "train_sequences": len(train), "eval_sequences": len(eval_), "ctx": p.ctx,
        })


if __name__ == "__main__":
    main()
