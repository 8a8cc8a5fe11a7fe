"""Which data produced an artifact, and does the record still hold?

The lineage is read from the provenance records the artifacts carry (each names its inputs
by path and content hash). Every link is checked three ways: the child's recorded hash of
its input against the input's files, against dvc.lock, and the params each stage recorded
against today's params.yaml. Hashes DVC has already verified (``dvc status`` reports the
output unchanged) are taken from dvc.lock instead of re-reading gigabytes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monosemantic.provenance import hash_path, read_record
from monosemantic.tracking import flatten


@dataclass
class Problem:
    path: str
    kind: str
    detail: str
    expected: str | None = None
    actual: str | None = None


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
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok}, indent=2, default=str)


def find_workspace(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if (parent / "dvc.yaml").is_file():
            return parent
    return None


class Workspace:
    """dvc.lock, params.yaml and DVC's own verdict on which outputs changed."""

    def __init__(self, root: Path):
        self.root = root
        lock_path = root / "dvc.lock"
        lock = yaml.safe_load(lock_path.read_text()) if lock_path.exists() else {}
        self.lock_md5 = {o["path"]: o["md5"] for st in lock.get("stages", {}).values() for o in st.get("outs", [])}
        params_path = root / "params.yaml"
        self.params = yaml.safe_load(params_path.read_text()) if params_path.exists() else None
        self.modified = self._dvc_modified()

    def _dvc_modified(self) -> set[str] | None:
        """Outputs DVC reports as changed; None if DVC cannot say (then we hash ourselves)."""
        if shutil.which("dvc") is None or not self.lock_md5:
            return None
        res = subprocess.run(["dvc", "status", "--json"], cwd=self.root, capture_output=True, text=True)
        if res.returncode:
            return None
        changed = set()
        for entries in (json.loads(res.stdout or "{}") or {}).values():
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict):
                    changed.update(entry.get("changed outs", {}))
        return changed

    def current_hash(self, rel: str) -> str | None:
        path = self.root / rel
        if not path.exists():
            return None
        if self.modified is not None and rel in self.lock_md5 and rel not in self.modified:
            return self.lock_md5[rel]  # DVC verified it against its state: no re-read
        return hash_path(path)


def audit(target: str | Path) -> Report:
    target = Path(target).resolve()
    root = find_workspace(target)
    report = Report(target=str(target), workspace=str(root) if root else None)
    if root is None:
        return _audit_detached(target, report)
    ws = Workspace(root)
    if not ws.lock_md5:
        report.unchecked.append("dvc.lock: none in the workspace (run dvc repro), so no lock comparison")
    _visit(ws, target.relative_to(root).as_posix(), None, None, report)
    return report


def _visit(ws: Workspace, rel: str, expected: str | None, child: str | None, report: Report) -> None:
    if rel in report.artifacts:
        return
    path = ws.root / rel
    record = read_record(path)
    actual = ws.current_hash(rel)
    report.artifacts[rel] = Artifact(rel, actual, record, [i["path"] for i in (record or {}).get("inputs", {}).values()])
    if actual is None:
        report.problems.append(Problem(rel, "missing", "the artifact is not in the workspace (dvc checkout?)", expected))
    lock = ws.lock_md5.get(rel)
    if expected is not None and actual is not None and expected != actual:
        report.problems.append(Problem(rel, "changed", f"differs from what {child} was made from", expected, actual))
    if expected is not None and lock is not None and expected != lock:
        report.problems.append(Problem(rel, "lock mismatch", f"{child}'s record disagrees with dvc.lock", expected, lock))
    if lock is not None and actual is not None and actual != lock:
        report.problems.append(Problem(rel, "changed", "files differ from dvc.lock (edited after dvc repro?)", lock, actual))
    if record is None:
        report.problems.append(Problem(rel, "no record", "no provenance record: it was not made by a monosemantic stage"))
        return
    _check_params(ws, rel, record, report)
    for entry in record.get("inputs", {}).values():
        _visit(ws, entry["path"], entry["md5"], rel, report)


def _check_params(ws: Workspace, rel: str, record: dict, report: Report) -> None:
    if ws.params is None:
        report.unchecked.append(f"{rel}: params (no params.yaml)")
        return
    from monosemantic.params import Params

    try:  # compare like with like: the schema's defaults filled in on both sides
        today = Params.model_validate(ws.params).model_dump(mode="json")
    except Exception as e:
        report.problems.append(Problem("params.yaml", "invalid", str(e).splitlines()[0]))
        return
    for section, used in record.get("params", {}).items():
        now = today
        for key in section.split("."):  # sections may be nested, e.g. "sae.train"
            now = now.get(key, {})
        now = flatten(now)
        for key, value in flatten(used).items():
            if now.get(key) != value:
                report.problems.append(Problem(
                    rel, "stale", f"params.yaml {section}.{key} changed since it was made",
                    json.dumps(value), json.dumps(now.get(key)),
                ))


def _audit_detached(target: Path, report: Report) -> Report:
    """A copied artifact: its own record still tells the lineage; the rest cannot be checked."""
    record = read_record(target)
    if record is None:
        report.problems.append(Problem(str(target), "no record", "no provenance record found"))
        return report
    report.artifacts[str(target)] = Artifact(
        str(target), hash_path(target), record, [i["path"] for i in record.get("inputs", {}).values()]
    )
    for name, entry in record.get("inputs", {}).items():
        report.artifacts[entry["path"]] = Artifact(entry["path"], entry["md5"], None)
    report.unchecked += [
        "no workspace (dvc.yaml) above this path: input files, their own records, dvc.lock and "
        "params.yaml could not be checked; the recorded input hashes are listed as recorded",
    ]
    return report


def render(report: Report) -> str:
    """The lineage as an indented tree, then the verdict."""
    lines: list[str] = []
    bad = {p.path for p in report.problems}

    def walk(rel: str, depth: int, seen: set[str]) -> None:
        art = report.artifacts.get(rel)
        pad = "  " * depth + ("└─ " if depth else "")
        mark = "✗" if rel in bad else "✓"
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
        for child in art.inputs:
            walk(child, depth + 1, seen)

    if report.artifacts:
        walk(next(iter(report.artifacts)), 0, set())
    for p in report.problems:
        both = f"  recorded {p.expected}  found {p.actual}" if p.expected or p.actual else ""
        lines.append(f"PROBLEM {p.kind}: {p.path}: {p.detail}{both}")
    for u in report.unchecked:
        lines.append(f"not checked: {u}")
    lines.append("audit passed: every recorded hash and parameter matches" if report.ok
                 else f"audit FAILED: {len(report.problems)} problem(s)")
    return "\n".join(lines)
