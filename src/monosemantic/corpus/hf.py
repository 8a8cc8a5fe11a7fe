"""Hugging Face datasets, streamed, for users with hub access (or local data via a builder)."""

from __future__ import annotations

from typing import Iterator

from monosemantic.corpus import Document
from monosemantic.errors import UserError
from monosemantic.params import HFSource


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError(
            "corpus source 'hf' needs the datasets library: pip install 'monosemantic[hf]'"
        ) from None
    return datasets


def check(src: HFSource, where: str) -> None:
    _datasets()


def documents(src: HFSource, seed: int) -> Iterator[Document]:
    datasets = _datasets()
    try:
        stream = datasets.load_dataset(
            src.path, src.name, data_files=src.data_files, split=src.split,
            revision=src.revision, streaming=True,
        )
    except Exception as e:  # the hub, a builder or a missing file: all reach the user the same way
        raise UserError(f"corpus source hf {src.path!r}: could not load the dataset: {e}") from None
    label = src.path if src.name is None else f"{src.path}/{src.name}"
    for n, row in enumerate(stream):
        if src.text_field not in row:
            raise UserError(
                f"corpus source hf {src.path!r}: rows have no {src.text_field!r} field "
                f"(fields: {', '.join(row)}); set text_field"
            )
        yield Document(f"hf:{label}/{src.split}#{n}", "hf", row[src.text_field] or "")


def describe(src: HFSource) -> dict:
    return {
        "kind": "hf",
        "path": src.path,
        "name": src.name,
        "split": src.split,
        "revision": src.revision,
        "data_files": src.data_files,
        "datasets": _datasets().__version__,
    }
