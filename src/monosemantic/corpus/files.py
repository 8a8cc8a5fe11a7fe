"""Local text files: .txt (one document per file), .jsonl (one per line), .parquet (one per row)."""

from __future__ import annotations

import glob
import json
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
        matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
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
    resolve(src, where)


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
                    yield Document(f"files:{path.as_posix()}#{n}", "files", str(text))
        else:
            import polars as pl

            frame = pl.read_parquet(path)
            if src.text_field not in frame.columns:
                raise UserError(
                    f"{path}: no column {src.text_field!r} (columns: {', '.join(frame.columns)}); set text_field"
                )
            for n, text in enumerate(frame[src.text_field]):
                if text is not None:
                    yield Document(f"files:{path.as_posix()}#{n}", "files", text)


def describe(src: FilesSource) -> dict:
    return {
        "kind": "files",
        "files": [{"path": p.as_posix(), "md5": file_md5(p)} for p in resolve(src)],
        "text_field": src.text_field,
        "encoding_errors": src.encoding_errors,
    }
