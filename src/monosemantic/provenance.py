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

from monosemantic.errors import UserError

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
    return dir_hash({rel: file_md5(path / rel) for rel in _files(path)})


def dir_hash(md5s: dict[str, str]) -> str:
    """DVC's hash of a directory whose files (relative posix path: md5) are `md5s`."""
    entries = [{"md5": md5, "relpath": rel} for rel, md5 in sorted(md5s.items())]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def _files(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def file_hashes(out: str | Path) -> dict[str, str]:
    """The md5 of each file of an output, by relative path; its own provenance.json excluded."""
    out = Path(out)
    if out.is_file():
        return {out.name: file_md5(out)}
    return {rel: file_md5(out / rel) for rel in _files(out) if rel != PROVENANCE_FILE}


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


def record_path(path: str | Path) -> Path | None:
    """Where an output's provenance record is: ``provenance.json`` in a directory,
    ``<name>.provenance.json`` beside a file, or a Zarr store's ``zarr.json`` attributes."""
    path = Path(path)
    candidates = [path / PROVENANCE_FILE, path / "zarr.json"]
    if path.name:  # "/" has no name to put a record beside
        candidates.insert(1, path.with_name(path.stem + ".provenance.json"))
    return next((c for c in candidates if c.is_file() and c != path), None)


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The provenance record an output carries, or None if it carries none."""
    where = record_path(path)
    if where is None:
        return None
    fix = "restore the output (dvc checkout) or re-run the stage that made it"
    try:
        data = read_json(where)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{where} is not readable JSON ({e}); {fix}") from None
    if where.name == "zarr.json":
        attrs = data.get("attributes", {}) if isinstance(data, dict) else None
        if not isinstance(attrs, dict):
            raise UserError(f"{where}: not Zarr metadata with an attributes object; {fix}")
        data = attrs.get("provenance")
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{where}: the provenance record is a {type(data).__name__}, not a JSON object; {fix}")
    return data


def write_record(out: str | Path, record: dict[str, Any]) -> None:
    """Write `out`'s provenance record with the md5 of each of its files as they are now, so a copy
    of the output can be checked against its own record, away from the workspace that made it.

    A directory's record is its ``provenance.json``; a file's is ``<name>.provenance.json`` beside it.
    """
    out = Path(out)
    where = out / PROVENANCE_FILE if out.is_dir() else out.with_name(out.stem + ".provenance.json")
    write_json(where, {**record, "files": file_hashes(out)})


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
