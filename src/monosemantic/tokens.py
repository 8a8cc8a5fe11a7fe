"""Pack documents into fixed-length contexts, split train/eval by document, store as Zarr.

Documents are split before packing, so no document has tokens in both splits; inside a
split, documents are shuffled and concatenated with a separator token, then cut into
``ctx``-token rows (the ragged tail is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import zarr

from monosemantic.errors import UserError


def split_documents(n_docs: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, seeded train/eval document indices; each split gets at least one document."""
    if n_docs < 2:
        raise UserError(f"need at least 2 documents to make a train/eval split, got {n_docs}; add text to the corpus")
    order = np.random.default_rng(seed).permutation(n_docs)
    n_eval = min(max(1, round(n_docs * eval_fraction)), n_docs - 1)
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


def pack(docs: Sequence[np.ndarray], sep_id: int, ctx: int, seed: int) -> np.ndarray:
    """Shuffle `docs`, join them with `sep_id` after each, cut into rows of `ctx` tokens."""
    order = np.random.default_rng(seed).permutation(len(docs))
    pieces = []
    sep = np.array([sep_id], dtype=np.int32)
    for i in order:
        pieces.append(np.asarray(docs[i], dtype=np.int32))
        pieces.append(sep)
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    n_seq = len(flat) // ctx
    return flat[: n_seq * ctx].reshape(n_seq, ctx)


def tokenize_documents(tok, texts: list[str], separator: str, ctx: int, eval_fraction: float, seed: int):
    """Encode `texts` and return ``(train_rows, eval_rows, n_train_docs, n_eval_docs, n_tokens)``."""
    docs = [np.array(e.ids, dtype=np.int32) for e in tok.encode_batch_fast(texts)]
    train_idx, eval_idx = split_documents(len(docs), eval_fraction, seed)
    sep_id = tok.token_to_id(separator)
    train = pack([docs[i] for i in train_idx], sep_id, ctx, seed)
    eval_ = pack([docs[i] for i in eval_idx], sep_id, ctx, seed + 1)
    for name, rows, n in (("train", train, len(train_idx)), ("eval", eval_, len(eval_idx))):
        if len(rows) == 0:
            raise UserError(
                f"the {name} split ({n} documents) is shorter than one context of {ctx} tokens; "
                "lower tokenize.ctx, change tokenize.eval_fraction or add text to the corpus"
            )
    return train, eval_, len(train_idx), len(eval_idx), int(sum(len(d) for d in docs))


@dataclass(frozen=True)
class TokenStore:
    """The packed tokens: rows ``[0, n_train)`` are train, ``[n_train, n_seq)`` are eval."""

    tokens: zarr.Array
    n_train: int
    attrs: dict

    @property
    def n_eval(self) -> int:
        return self.tokens.shape[0] - self.n_train

    @property
    def ctx(self) -> int:
        return self.tokens.shape[1]

    def split(self, name: str) -> np.ndarray:
        rows = slice(0, self.n_train) if name == "train" else slice(self.n_train, None)
        return self.tokens[rows]


def write_tokens(path: Path, train: np.ndarray, eval_: np.ndarray, attrs: dict) -> None:
    ctx = train.shape[1]
    data = np.concatenate([train, eval_])
    rows_per_chunk = max(1, (1 << 20) // (4 * ctx))  # ~1 MB chunks, all in one shard file
    shard_rows = rows_per_chunk * max(1, -(-len(data) // rows_per_chunk))
    group = zarr.open_group(path, mode="w")
    arr = group.create_array(
        "tokens", shape=data.shape, dtype="int32",
        chunks=(rows_per_chunk, ctx), shards=(shard_rows, ctx),
        compressors=zarr.codecs.ZstdCodec(level=3),
    )
    arr[:] = data
    group.attrs.update({**attrs, "ctx": ctx, "split": {"train": [0, len(train)], "eval": [len(train), len(data)]}})


def read_tokens(path: str | Path) -> TokenStore:
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise UserError(f"{path} is not a token store: run the tokenize stage first")
    group = zarr.open_group(path, mode="r")
    attrs = dict(group.attrs)
    return TokenStore(tokens=group["tokens"], n_train=attrs["split"]["train"][1], attrs=attrs)
