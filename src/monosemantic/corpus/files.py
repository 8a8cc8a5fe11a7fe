"""Local text files: .txt (one document per file), .jsonl (one per line), .parquet (one per row)."""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from monosemantic.corpus import Document
from monosemantic.errors import UserError
from monosemantic.params import FilesSource
from monosemantic.provenance import file_md5

SUFFIXES = {".txt", ".jsonl", ".parquet"}


def resolve(src: FilesSource, where: str = "corpus.sources") -> list[Path]:
    found: list[Path] = []
    for pattern in src.paths:
        expanded = os.path.expanduser(pattern)  # glob leaves '~' alone: "~/texts/*.txt" would match nothing
        matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
        if not matches:
            raise UserError(f"{where}.paths: {pattern!r} matched no files; fix the glob or add the files")
        for path in matches:
            if path.suffix not in SUFFIXES:
                raise UserError(
                    f"{where}.paths: {path} has suffix {path.suffix!r}; supported: {', '.join(sorted(SUFFIXES))}"
                )
        found.extend(matches)
    return list(dict.fromkeys(found))


def check(src: FilesSource, where: str) -> None:
    """Before any work: every glob matches, and every parquet file has a readable text column."""
    for path in resolve(src, where):
        if path.suffix == ".parquet":
            _parquet_schema(path, src.text_field)


def _decode(data: bytes, path: Path, how: str, line: int | None = None) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        at = f"{path}" + (f" line {line}" if line else "") + f" byte {e.start}"
        if how == "error":
            raise UserError(
                f"{at} is not valid UTF-8; fix the file, or set encoding_errors: replace "
                "(substitute U+FFFD) or skip (drop the document) on that source"
            ) from None
        if how == "skip":
            print(f"warning: skipping {at}: not valid UTF-8", file=sys.stderr)
            return None
        return data.decode("utf-8", errors="replace")


def documents(src: FilesSource, seed: int) -> Iterator[Document]:
    for path in resolve(src):
        if path.suffix == ".txt":
            text = _decode(path.read_bytes(), path, src.encoding_errors)
            if text is not None:
                yield Document(f"files:{path.as_posix()}", "files", text)
        elif path.suffix == ".jsonl":
            with open(path, "rb") as f:
                for n, raw in enumerate(f, 1):
                    line = _decode(raw, path, src.encoding_errors, n)
                    if line is None or not line.strip():
                        continue
                    try:
                        text = json.loads(line)[src.text_field]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise UserError(
                            f"{path} line {n}: not a JSON object with a {src.text_field!r} field; "
                            "fix the line or set text_field on that source"
                        ) from None
                    if not isinstance(text, str):  # str() would store null as the text "None"
                        raise UserError(
                            f"{path} line {n}: {src.text_field!r} is {_json_kind(text)}, not a string; fix or "
                            "drop the line, or set text_field on that source to a field holding text"
                        )
                    yield Document(f"files:{path.as_posix()}#{n}", "files", text)
        else:
            yield from _parquet(path, src.text_field)


def _json_kind(value) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def _parquet_schema(path: Path, field: str) -> None:
    """Fail on a file polars cannot read, or a text column that is missing or not text, naming the fix."""
    import polars as pl

    try:
        schema = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise UserError(f"{path} is not a readable parquet file ({e}); replace it, or remove it from the "
                        "files source's paths") from None
    if field not in schema:
        raise UserError(f"{path}: no column {field!r} (columns: {', '.join(schema) or 'none'}); set text_field "
                        "on that source to the text column")
    if not (schema[field] == pl.String or isinstance(schema[field], (pl.Categorical, pl.Enum))):
        raise UserError(f"{path}: column {field!r} holds {schema[field]}, not text; set text_field on that source "
                        "to a string column, or write the text as strings")


def _parquet(path: Path, field: str) -> Iterator[Document]:
    """One document per row of the text column; a null row is skipped (it holds no document)."""
    import polars as pl

    _parquet_schema(path, field)
    try:
        column = pl.read_parquet(path, columns=[field])[field].cast(pl.String)
    except (pl.exceptions.PolarsError, OSError) as e:  # a footer that reads but pages that do not
        raise UserError(f"{path} is not a readable parquet file ({e}); replace it, or remove it from the "
                        "files source's paths") from None
    for n, text in enumerate(column):
        if text is not None:
            yield Document(f"files:{path.as_posix()}#{n}", "files", text)


def describe(src: FilesSource) -> dict:
    return {
        "kind": "files",
        "files": [{"path": p.as_posix(), "md5": file_md5(p)} for p in resolve(src)],
        "text_field": src.text_field,
        "encoding_errors": src.encoding_errors,
    }
