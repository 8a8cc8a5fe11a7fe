"""tokenizer: train a byte-level BPE on the corpus, or adopt a given tokenizer.json."""

from monosemantic.corpus import read_corpus
from monosemantic.provenance import atomic_output, write_record
from monosemantic.tokenizer import load_tokenizer, train_bpe
from stages._stage import run_stage

OUT = "data/tokenizer.json"


def main() -> None:
    with run_stage("tokenizer", "tokenizer") as s:
        p = s.section
        if p.kind == "file":
            tok = load_tokenizer(p.path, p.separator)
            s.input("tokenizer_file", p.path)
        else:
            s.input("corpus", "data/corpus")
            tok = train_bpe(read_corpus("data/corpus")["text"], p.vocab_size, p.min_frequency, p.separator)
        with atomic_output(OUT, is_dir=False) as tmp:
            tok.save(str(tmp))
        write_record(OUT, s.record(vocab_size=tok.get_vocab_size()))
        print(f"tokenizer: {tok.get_vocab_size()} tokens written to {OUT}")


if __name__ == "__main__":
    main()
