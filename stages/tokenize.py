"""tokenize: encode documents, split train/eval by document, pack into ctx-long rows."""

import numpy as np

from monosemantic.corpus import read_corpus
from monosemantic.errors import UserError
from monosemantic.provenance import atomic_output
from monosemantic.tokenizer import load_tokenizer
from monosemantic.tokens import pack, split_documents, write_tokens
from stages._stage import run_stage

OUT = "data/tokens.zarr"


def main() -> None:
    with run_stage("tokenize", "tokenize") as s:
        p, sep = s.section, s.params.tokenizer.separator
        s.input("corpus", "data/corpus")
        s.input("tokenizer", "data/tokenizer.json")
        tok = load_tokenizer("data/tokenizer.json", sep)
        frame = read_corpus("data/corpus")
        docs = [np.array(e.ids, dtype=np.int32) for e in tok.encode_batch_fast(frame["text"].to_list())]
        train_idx, eval_idx = split_documents(len(docs), p.eval_fraction, p.seed)
        sep_id = tok.token_to_id(sep)
        train = pack([docs[i] for i in train_idx], sep_id, p.ctx, p.seed)
        eval_ = pack([docs[i] for i in eval_idx], sep_id, p.ctx, p.seed + 1)
        for name, rows, n in (("train", train, len(train_idx)), ("eval", eval_, len(eval_idx))):
            if len(rows) == 0:
                raise UserError(
                    f"the {name} split ({n} documents) is shorter than one context of {p.ctx} tokens; "
                    "lower tokenize.ctx, change tokenize.eval_fraction or add text to the corpus"
                )
        attrs = {
            "vocab_size": tok.get_vocab_size(), "separator": sep, "separator_id": sep_id,
            "documents": {"train": len(train_idx), "eval": len(eval_idx)},
        }
        with atomic_output(OUT) as tmp:
            write_tokens(tmp, train, eval_, {**attrs, "provenance": s.record()})
        n_tok = int(sum(len(d) for d in docs))
        s.metrics("metrics/tokens.json", {
            "documents": len(docs), "tokens": n_tok, "chars_per_token": frame["text"].str.len_chars().sum() / n_tok,
            "train_sequences": len(train), "eval_sequences": len(eval_), "ctx": p.ctx,
        })


if __name__ == "__main__":
    main()
