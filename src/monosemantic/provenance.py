"""Content hashes, code versions and the provenance record every output carries.

Hashes use DVC's scheme (md5 of a file; for a directory, md5 of the sorted JSON list of
``{"md5", "relpath"}`` entries plus ``.dir``) so a record can be checked directly against
dvc.lock, without this library importing DVC.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

PROVENANCE_FILE = "provenance.json"


def file_md5(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def hash_path(path: str | Path) -> str:
    """DVC-compatible content hash of a file or directory."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        raise FileNotFoundError(f"cannot hash {path}: it does not exist")
    entries = [
        {"md5": file_md5(p), "relpath": p.relative_to(path).as_posix()}
        for p in sorted(path.rglob("*"))
        if p.is_file()
    ]
    entries.sort(key=lambda e: e["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(listing).hexdigest() + ".dir"


def code_version(root: str | Path = ".") -> dict[str, Any]:
    """The git commit the code ran at, and whether the working tree differed from it."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    # Only code counts as "dirty": DVC outputs and lock files change during a repro.
    status = git("status", "--porcelain", "--untracked-files=no", "--", "src", "stages", "dvc.yaml")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def environment() -> dict[str, str]:
    import torch

    from monosemantic import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monosemantic": __version__,
    }


def make_record(
    stage: str,
    params: dict[str, Any],
    inputs: dict[str, dict[str, str]],
    mlflow_run_id: str | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "stage": stage,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "params": params,
        "code": code_version(),
        "environment": environment(),
        "mlflow_run_id": mlflow_run_id,
        **(extra or {}),
    }


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The provenance record an output carries: ``provenance.json`` in a directory, the
    ``provenance`` attribute of a Zarr store, or ``<name>.provenance.json`` beside a file."""
    path = Path(path)
    for candidate in (path / PROVENANCE_FILE, path.with_name(path.stem + ".provenance.json")):
        if candidate.is_file() and candidate != path:
            return read_json(candidate)
    if (path / "zarr.json").is_file():
        return read_json(path / "zarr.json").get("attributes", {}).get("provenance")
    return None


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def replace_path(new: Path, final: Path) -> None:
    """Put `new` where `final` is, so that a reader never sees a half-written output."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old)
    else:
        os.replace(new, final)


@contextlib.contextmanager
def atomic_output(final: str | Path, is_dir: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write into; it replaces `final` only if the block succeeds.

    A failure (bad input found late, Ctrl-C) leaves the previous output untouched.
    """
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    _remove(tmp)
    if is_dir:
        tmp.mkdir(parents=True)
    else:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    replace_path(tmp, final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
