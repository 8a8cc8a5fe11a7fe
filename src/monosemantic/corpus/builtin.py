"""Real text that ships with the Python interpreter: the offline default corpus.

- docs: the bundled documentation topics (``pydoc_data.topics``), English prose;
- docstrings: module, class and function docstrings of the standard library, English prose;
- code: the standard library's own source.
"""

from __future__ import annotations

import ast
import hashlib
import platform
import random
import sysconfig
from pathlib import Path
from typing import Iterator

from monosemantic.corpus import Document
from monosemantic.params import BuiltinSource

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
    )


def _rel(path: Path) -> str:
    return path.relative_to(sysconfig.get_paths()["stdlib"]).as_posix()


def _docs() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f"builtin:docs/{name}", "builtin/docs", topics[name].strip())


def _docstrings(files: list[Path]) -> Iterator[Document]:
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [tree] + [
            n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        texts = [d.strip() for n in nodes if (d := ast.get_docstring(n))]
        text = "\n\n".join(t for t in texts if len(t) > 40)
        if text:
            yield Document(f"builtin:docstrings/{_rel(path)}", "builtin/docstrings", text)


def _code(files: list[Path]) -> Iterator[Document]:
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        yield Document(f"builtin:code/{_rel(path)}", "builtin/code", text)


def documents(src: BuiltinSource, seed: int) -> Iterator[Document]:
    # A seeded shuffle of the file list, so a size cap takes a sample of the whole library
    # rather than the modules that sort first.
    files = stdlib_files()
    random.Random(seed).shuffle(files)
    parts = {"docs": _docs, "docstrings": lambda: _docstrings(files), "code": lambda: _code(files)}
    for part in src.parts:
        yield from parts[part]()


def describe(src: BuiltinSource) -> dict:
    files = stdlib_files()
    listing = hashlib.md5("\n".join(_rel(p) for p in files).encode()).hexdigest()
    return {
        "kind": "builtin",
        "parts": list(src.parts),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "stdlib_files": len(files),
        "stdlib_listing_md5": listing,
    }
