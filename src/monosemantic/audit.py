"""Which data produced an artifact, and does the record still hold?

The lineage is read from the provenance records the artifacts carry (each names its inputs
by path and content hash, and the md5 of each of its own files). Every link is checked: an
artifact's files against its own record, the child's recorded hash of its input against the
input's files and against dvc.lock, and the params each stage recorded against today's
params.yaml. Hashes DVC has already verified (``dvc status`` reports the output unchanged)
are taken from dvc.lock instead of re-reading gigabytes.

The verdict is one of three: verified (every check made, none failed), unverifiable (none
failed, but some could not be made, e.g. a dictionary copied out of its workspace), failed.
Records are read by path, so a recorded input path that leaves the workspace is never read.
An activation store kept in object storage is represented in the workspace by its manifest
(data/activations.zarr/manifest.json, which DVC tracks): each file at the store's URL is checked
against the md5 the manifest holds for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monosemantic import storage
from monosemantic.errors import UserError
from monosemantic.provenance import PROVENANCE_FILE, dir_hash, file_hashes, file_md5, hash_path, read_record, record_path
from monosemantic.tracking import flatten

EXIT_CODES = {"verified": 0, "failed": 1, "unverifiable": 3}  # 2: the audit could not run (UserError)
IN_WORKSPACE = "audit it inside the workspace that made it (its dvc.yaml, dvc.lock and params.yaml)"


@dataclass
class Problem:
    path: str
    kind: str
    detail: str
    expected: str | None = None
    actual: str | None = None
    file: str | None = None  # the file that failed, when it is one file of the artifact or a corpus source file


@dataclass
class Gap:
    """A check that could not be made, and how to make it."""

    path: str
    detail: str
    fix: str


@dataclass
class Artifact:
    path: str
    md5: str | None
    record: dict[str, Any] | None
    inputs: list[str] = field(default_factory=list)


@dataclass
class Report:
    target: str
    workspace: str | None
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    unchecked: list[Gap] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.problems:
            return "failed"
        return "unverifiable" if self.unchecked else "verified"

    @property
    def ok(self) -> bool:
        return self.verdict == "verified"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "verdict": self.verdict, "ok": self.ok}, indent=2, default=str)


def find_workspace(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if (parent / "dvc.yaml").is_file():
            return parent
    return None


class Workspace:
    """dvc.lock, params.yaml and DVC's own verdict on which outputs changed."""

    def __init__(self, root: Path):
        self.root = root
        self.lock_md5 = _read_lock(root / "dvc.lock")
        self.params = _read_params(root / "params.yaml")
        self.written = _written_keys(root / "params.yaml") if self.params is not None else set()
        # Paths today's params.yaml names (tokenizer.path, ...): the user's own files, which may be anywhere.
        self.declared = {os.path.normpath(v) for v in flatten(self.params or {}).values() if isinstance(v, str)}
        self.modified = self._dvc_modified()

    def _dvc_modified(self) -> set[str] | None:
        """Outputs DVC reports as changed; None if DVC cannot say (then we hash ourselves)."""
        if shutil.which("dvc") is None or not self.lock_md5:
            return None
        res = subprocess.run(["dvc", "status", "--json"], cwd=self.root, capture_output=True, text=True)
        try:
            status = json.loads(res.stdout or "{}") if not res.returncode else None
        except json.JSONDecodeError:
            return None
        if not isinstance(status, dict):
            return None
        changed = set()
        for entries in status.values():
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict):
                    changed.update(entry.get("changed outs", {}))
        return changed

    def locate(self, recorded: str) -> str | None:
        """A recorded path relative to the root; None if it leaves the workspace (absolute, .., symlink)."""
        path = Path(os.path.normpath(self.root / recorded))
        if path == self.root or not path.is_relative_to(self.root) or not path.resolve().is_relative_to(self.root):
            return None
        return path.relative_to(self.root).as_posix()

    def current_hash(self, rel: str) -> str | None:
        if self.modified is not None and rel in self.lock_md5 and rel not in self.modified:
            if (self.root / rel).exists():
                return self.lock_md5[rel]  # DVC verified it against its state: no re-read
        return _hash(self.root / rel)


def _read_lock(path: Path) -> dict[str, str]:
    """dvc.lock's md5 of each output, by path."""
    if not path.exists():
        return {}
    fix = "restore it (git checkout dvc.lock) or re-create it with dvc repro"
    try:
        lock = yaml.safe_load(path.read_text()) or {}
        md5 = {o["path"]: o["md5"] for st in lock.get("stages", {}).values() for o in st.get("outs", [])}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({' '.join(str(e).split())}); {fix}") from None
    except (AttributeError, KeyError, TypeError):
        raise UserError(f"{path} is not a DVC lock file (stages: {{name: {{outs: [{{path, md5}}]}}}}); {fix}") from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in md5.items()):
        raise UserError(f"{path}: an output's path or md5 is not a string; {fix}")
    return md5


def _read_params(path: Path) -> dict[str, Any] | None:
    """Today's params, with the schema's defaults filled in, to compare like with like. Without the memory
    check: auditing reads a workspace, so a machine smaller than the one that trained it must do."""
    if not path.exists():
        return None
    from monosemantic.params import load_params

    return load_params(path, check_resources=False).model_dump(mode="json")


def _written_keys(path: Path) -> set[str]:
    """The flattened keys params.yaml spells out, as DVC compares them; a schema default it omits is not a change."""
    try:
        return set(flatten(yaml.safe_load(path.read_text()) or {}))
    except (OSError, yaml.YAMLError):
        return set()


def _hash(path: Path) -> str | None:
    """The content hash, or None if there is no file or directory there to read."""
    if not (path.is_file() or path.is_dir()):
        return None
    try:
        return hash_path(path)
    except OSError:
        return None


def _is_entry(e: Any) -> bool:
    return isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("md5"), str)


def _is_source(s: Any) -> bool:
    files = s.get("files") if isinstance(s, dict) else None
    return isinstance(s, dict) and (s.get("kind") != "files" or isinstance(files, list) and all(map(_is_entry, files)))


_FIELDS = {  # field: (required, valid, what it must be)
    "stage": (True, lambda v: isinstance(v, str), "a string"),
    "inputs": (True, lambda v: isinstance(v, dict) and all(map(_is_entry, v.values())),
               "an object of {path, md5} strings"),
    "params": (True, lambda v: isinstance(v, dict) and all(isinstance(s, dict) or "." in k for k, s in v.items()),
               "an object of params sections (a dotted key, e.g. sae.dict_sizes, may hold a list or a value)"),
    "files": (False, lambda v: isinstance(v, dict) and all(isinstance(m, str) for m in v.values()),
              "an object of relative path: md5"),
    "sources": (False, lambda v: isinstance(v, list) and all(map(_is_source, v)),
                "a list of sources, a files source with a list of {path, md5}"),
    "code": (False, lambda v: isinstance(v, dict), "an object"),
}


def load_record(path: Path) -> dict[str, Any] | None:
    """The record `path` carries, checked field by field: a damaged one is named, not a traceback."""
    record = read_record(path)
    if record is None:
        return None
    for name, (required, valid, what) in _FIELDS.items():
        if (name in record or required) and not valid(record.get(name)):
            raise UserError(f"{record_path(path)}: field {name!r} is missing or not {what}; the record is damaged: "
                            "restore the output (dvc checkout) or re-run the stage that made it")
    return record


def audit(target: str | Path) -> Report:
    target = Path(target).resolve()
    record = load_record(target)
    if record is None:  # before anything is hashed: `audit /` must not read the disk
        raise UserError(f"{target} is not a monosemantic artifact: it carries no provenance record "
                        f"({PROVENANCE_FILE}, <name>.provenance.json beside it, or a Zarr store's provenance "
                        "attribute); audit a stage output such as models/sae/<architecture>-<size>")
    root = find_workspace(target)
    report = Report(target=str(target), workspace=str(root) if root else None)
    if root is None:
        return _audit_detached(target, record, report)
    ws = Workspace(root)
    if not ws.lock_md5:
        report.unchecked.append(Gap("dvc.lock", "none in the workspace, so no artifact was compared with it",
                                    "run dvc repro"))
    _visit(ws, target.relative_to(root).as_posix(), None, None, report)
    return report


def _visit(ws: Workspace, rel: str, expected: str | None, child: str | None, report: Report) -> None:
    if rel in report.artifacts:
        return
    path = ws.root / rel
    record = load_record(path)
    actual = ws.current_hash(rel)
    report.artifacts[rel] = Artifact(rel, actual, record, [i["path"] for i in (record or {}).get("inputs", {}).values()])
    user_file = child is not None and record is None and rel in ws.declared
    vouched = _check_hash(ws, rel, actual, expected, child, user_file, report)
    if record is None:
        if not user_file:
            report.problems.append(Problem(rel, "no record", "no provenance record: it was not made by a monosemantic stage"))
        return
    if actual is not None:
        _check_files(path, rel, record, actual, vouched, report)
        _check_remote(path, rel, report)
    _check_sources(ws.root, rel, record, report)
    _check_params(ws, rel, record, report)
    for entry in record["inputs"].values():
        inner = ws.locate(entry["path"])
        if inner is not None:
            _visit(ws, inner, entry["md5"], rel, report)
        elif os.path.normpath(entry["path"]) in ws.declared:
            _visit_user_file(ws.root / entry["path"], entry["path"], entry["md5"], rel, report)
        else:
            report.problems.append(Problem(entry["path"], "escapes", f"path escapes the workspace: {rel}'s record "
                                           "names an input outside it, which the audit does not read"))


def _check_hash(ws: Workspace, rel: str, actual: str | None, expected: str | None, child: str | None,
                user_file: bool, report: Report) -> bool:
    """The artifact's hash against what its child recorded and dvc.lock; True if one of them vouches for it."""
    lock = ws.lock_md5.get(rel)
    if actual is None:
        report.problems.append(Problem(rel, "missing", "the artifact is not in the workspace or cannot be read "
                                                       "(dvc checkout?)", expected))
    if expected is not None and actual is not None and expected != actual:
        report.problems.append(Problem(rel, "changed", f"differs from what {child} was made from", expected, actual))
    if expected is not None and lock is not None and expected != lock:
        report.problems.append(Problem(rel, "lock mismatch", f"{child}'s record disagrees with dvc.lock", expected, lock))
    if lock is not None and actual is not None and actual != lock:
        report.problems.append(Problem(rel, "changed", "files differ from dvc.lock (edited after dvc repro?)", lock, actual))
    if ws.lock_md5 and lock is None and not user_file:
        report.unchecked.append(Gap(rel, "not an output in dvc.lock, so DVC does not vouch for it or its record",
                                    "make it with dvc repro, or " + IN_WORKSPACE))
    return actual is not None and actual in (lock, expected)


def _visit_user_file(path: Path, recorded: str, expected: str, child: str, report: Report) -> None:
    """An input params.yaml names outside the workspace (e.g. tokenizer.path): its hash is all there is to check."""
    actual = _hash(path)
    report.artifacts[recorded] = Artifact(recorded, actual, None)
    if actual is None:
        report.problems.append(Problem(recorded, "missing", f"the file {child} was made from is gone", expected))
    elif actual != expected:
        report.problems.append(Problem(recorded, "changed", f"differs from what {child} was made from", expected, actual))


def _check_files(path: Path, rel: str, record: dict, actual: str, vouched: bool, report: Report) -> None:
    """Each file of the artifact against the md5 its record holds for it, so a copy can check itself."""
    recorded = record.get("files")
    if recorded is None:
        if not vouched:
            report.unchecked.append(Gap(rel, "its record holds no file hashes (a Zarr store's never does; other "
                                             "records made before they were added), so its files were not checked",
                                        IN_WORKSPACE if report.workspace is None
                                        else f"re-run the stage that made it (dvc repro -f -s {record['stage']})"))
        return
    if actual == _implied_hash(path, recorded):
        return  # one comparison covers every file, with the hash DVC may already have verified
    found = file_hashes(path)
    for name in sorted(recorded.keys() | found.keys()):
        if name not in found:
            detail = f"{name} is in its record but not in it"
            report.problems.append(Problem(rel, "missing", detail, recorded[name], None, name))
        elif name not in recorded:
            detail = f"{name} is in it but not in its record (added after the stage wrote it)"
            report.problems.append(Problem(rel, "unrecorded file", detail, None, found[name], name))
        elif recorded[name] != found[name]:
            detail = f"{name} differs from the md5 its record holds"
            report.problems.append(Problem(rel, "changed", detail, recorded[name], found[name], name))


def _check_remote(path: Path, rel: str, report: Report) -> None:
    """A store in object storage: every file at its URL against the md5 its manifest holds, naming the
    file that differs. An object whose ETag is that md5 (S3 computes it for a single-part upload) is
    not downloaded; any other is read and hashed. A store that cannot be reached is unverifiable."""
    manifest = storage.read_manifest(path) if path.is_dir() else None
    if manifest is None:
        return
    store, recorded = storage.RemoteLocation(manifest["url"]), manifest["files"]
    try:
        found = store.files()
        if not found:
            report.problems.append(Problem(rel, "missing", f"its store {store.url} is empty or gone (rebuild it with "
                                                           "dvc repro -f cache_activations)", None, None, store.url))
            return
        for key in sorted(recorded.keys() | found.keys()):
            where = store.display(key)
            if key not in found:
                report.problems.append(Problem(rel, "missing", f"{where} is in its manifest but not in the store",
                                               recorded[key]["md5"], None, key))
            elif key not in recorded:
                report.problems.append(Problem(rel, "unrecorded file", f"{where} is in the store but not in its "
                                               "manifest (added after the stage wrote it)", None, None, key))
            elif (md5 := store.md5_of(key, recorded[key]["md5"])) != recorded[key]["md5"]:
                report.problems.append(Problem(rel, "changed", f"{where} differs from the md5 its manifest holds",
                                               recorded[key]["md5"], md5, key))
    except storage.StorageError as e:
        report.unchecked.append(Gap(rel, f"its store could not be read: {e}",
                                    "make the store reachable (its credentials and endpoint in the environment)"))


def _implied_hash(path: Path, recorded: dict[str, str]) -> str | None:
    """The artifact's content hash as its record implies it: a file's md5, or DVC's hash of a directory."""
    if path.is_file():
        return recorded.get(path.name) if len(recorded) == 1 else None
    own = path / PROVENANCE_FILE
    return dir_hash({**recorded, PROVENANCE_FILE: file_md5(own)}) if own.is_file() else None


def _check_sources(root: Path | None, rel: str, record: dict, report: Report) -> None:
    """A files source's inputs, hashed where they are: the user's own files, which may live anywhere."""
    unreachable = []
    for src in record.get("sources", []):
        for entry in src["files"] if src.get("kind") == "files" else []:
            path = Path(entry["path"])
            if root is None and not (path.is_absolute() and path.exists()):
                unreachable.append(entry["path"])
                continue
            path = path if root is None else root / path
            actual = file_md5(path) if path.is_file() else None  # never a directory tree or a device
            if actual is None:
                detail = f"source file {entry['path']} is gone or not a file (restore it, or re-run the corpus stage)"
                report.problems.append(Problem(rel, "missing", detail, entry["md5"], None, entry["path"]))
            elif actual != entry["md5"]:
                detail = f"source file {entry['path']} changed since {rel} was made (re-run the corpus stage)"
                report.problems.append(Problem(rel, "changed", detail, entry["md5"], actual, entry["path"]))
    if unreachable:
        report.unchecked.append(Gap(rel, f"{len(unreachable)} files-source file(s) not on this machine or relative "
                                         f"to an unknown workspace, e.g. {unreachable[0]}", IN_WORKSPACE))


def _check_params(ws: Workspace, rel: str, record: dict, report: Report) -> None:
    if ws.params is None:
        report.unchecked.append(Gap(rel, "its params (no params.yaml in the workspace)", "restore params.yaml"))
        return
    for section, used in record["params"].items():
        now: Any = ws.params
        for key in section.split("."):  # sections may be nested, e.g. "sae.train"
            now = now.get(key) if isinstance(now, dict) else None
        if not isinstance(used, dict):  # a key's value, e.g. sae.dict_sizes
            if now != used:
                report.problems.append(Problem(rel, "stale", f"params.yaml {section} changed since it was made",
                                               json.dumps(used), json.dumps(now)))
            continue
        now = flatten(now) if isinstance(now, dict) else {}
        used = flatten(used)
        for key, value in used.items():
            if now.get(key) != value:
                report.problems.append(Problem(
                    rel, "stale", f"params.yaml {section}.{key} changed since it was made",
                    json.dumps(value), json.dumps(now.get(key)),
                ))
        added = [k for k in now.keys() - used.keys() if f"{section}.{k}" in ws.written]  # an item appended to a list
        for key in sorted(added):
            report.problems.append(Problem(rel, "stale", f"params.yaml {section}.{key} was added since it was made",
                                           None, json.dumps(now[key])))


def _audit_detached(target: Path, record: dict, report: Report) -> Report:
    """A copied artifact: its own files are checked against its record; its inputs and params cannot be."""
    key = str(target)
    actual = _hash(target)
    report.artifacts[key] = Artifact(key, actual, record, [i["path"] for i in record["inputs"].values()])
    if actual is None:
        report.problems.append(Problem(key, "unreadable", "its files cannot be read (permissions?)"))
    else:
        _check_files(target, key, record, actual, False, report)
        _check_remote(target, key, report)
    _check_sources(None, key, record, report)
    for entry in record["inputs"].values():
        report.artifacts.setdefault(entry["path"], Artifact(entry["path"], entry["md5"], None))
        report.unchecked.append(Gap(entry["path"], f"input of {target.name}, listed as its record holds it: with "
                                                   "no workspace (dvc.yaml) above the copy, it was not checked",
                                    IN_WORKSPACE))
    report.unchecked.append(Gap(key, "its params (no workspace, so no params.yaml)", IN_WORKSPACE))
    return report


def render(report: Report) -> str:
    """The lineage as an indented tree, then the verdict."""
    lines: list[str] = []
    bad = {p.path for p in report.problems}
    unsure = {g.path for g in report.unchecked}

    def walk(rel: str, depth: int, seen: set[str]) -> None:
        art = report.artifacts.get(rel)
        pad = "  " * depth + ("└─ " if depth else "")
        mark = "✗" if rel in bad else "?" if rel in unsure else "✓"
        if art is None:
            return
        rec = art.record or {}
        lines.append(f"{pad}{mark} {rel}  [{rec.get('stage', '?')}]  md5 {art.md5 or '?'}")
        if rel in seen:
            return
        seen.add(rel)
        body = "  " * depth + ("   " if depth else "") + "   "
        if rec:
            code = rec.get("code", {})
            dirty = " (dirty)" if code.get("git_dirty") else ""
            lines.append(f"{body}made {rec.get('created_at')}  code {str(code.get('git_commit'))[:10]}{dirty}  "
                         f"mlflow run {rec.get('mlflow_run_id')}")
            for section, values in rec.get("params", {}).items():
                lines.append(f"{body}params {section}: {json.dumps(values, sort_keys=True)[:160]}")
            for src in rec.get("sources", []):
                lines.append(f"{body}source {json.dumps(src, sort_keys=True)[:200]}")
            if rec.get("store"):
                lines.append(f"{body}store {rec['store']} (its files checked against {rel}/{storage.MANIFEST})")
        for child in art.inputs:
            walk(child, depth + 1, seen)

    if report.artifacts:
        walk(next(iter(report.artifacts)), 0, set())
    for p in report.problems:
        both = f"  recorded {p.expected}  found {p.actual}" if p.expected or p.actual else ""
        lines.append(f"PROBLEM {p.kind}: {p.path}: {p.detail}{both}")
    for g in report.unchecked:
        lines.append(f"not checked: {g.path}: {g.detail}; to check it, {g.fix}")
    lines.append(verdict_line(report))
    return "\n".join(lines)


def verdict_line(report: Report) -> str:
    if report.verdict == "failed":
        return f"audit FAILED: {len(report.problems)} problem(s)"
    if report.verdict == "verified":
        return "audit passed: verified: every file hash, input hash and parameter in the lineage matches its record"
    paths = list(dict.fromkeys(g.path for g in report.unchecked))
    fixes = "; ".join(dict.fromkeys(g.fix for g in report.unchecked))
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return (f"audit UNVERIFIABLE: no check failed, but {len(report.unchecked)} could not be made "
            f"({shown}); to verify, {fixes}")
