"""Byte-level BPE (Hugging Face tokenizers): trained on the corpus, or an existing file."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from monosemantic.errors import UserError


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int, separator: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[separator],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path, separator: str | None = None) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer file {path} not found; set tokenizer.path to a tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        raise UserError(f"{path} is not a Hugging Face tokenizers file: {e}") from None
    if separator is not None and tok.token_to_id(separator) is None:
        raise UserError(
            f"{path} has no token {separator!r} to separate documents; set tokenizer.separator "
            "to one of its special tokens (e.g. '<|endoftext|>' or '</s>')"
        )
    return tok


def token_strings(tok: Tokenizer) -> list[str]:
    """Each token id's text, special tokens included (a byte-level piece of a character shows as U+FFFD)."""
    return [tok.decode([i], skip_special_tokens=False) for i in range(tok.get_vocab_size())]


def special_token_ids(tok: Tokenizer) -> list[int]:
    """The ids of the tokenizer's special tokens: those it adds itself (BOS, EOS, separators, padding), not text."""
    return sorted(i for i, token in tok.get_added_tokens_decoder().items() if token.special)
