"""Which corpus, tokenizer, model and activation store made a dictionary, for the site.

Read from the provenance records the artifacts carry, without re-hashing anything: the site
shows the hashes each stage recorded for its inputs; `monosemantic audit` is what verifies them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monosemantic.provenance import read_record


def lineage(root: Path, starts: list[str]) -> list[dict[str, Any]]:
    """`starts` (paths relative to `root`) and every artifact upstream of them, nearest first."""
    out: dict[str, dict[str, Any]] = {}
    queue: list[tuple[str, str | None, str | None]] = [(s, None, None) for s in starts]
    while queue:
        rel, digest, used_by = queue.pop(0)
        if rel in out:  # a start that another start used: show the hash that user recorded
            if out[rel]["md5"] is None:
                out[rel].update(md5=digest, used_by=used_by)
            continue
        record = read_record(root / rel) or {}
        code = record.get("code") or {}
        out[rel] = {
            "path": rel, "md5": digest, "used_by": used_by, "found": bool(record),
            "stage": record.get("stage"), "mlflow_run_id": record.get("mlflow_run_id"),
            "created_at": record.get("created_at"), "git_commit": code.get("git_commit"),
            "git_dirty": code.get("git_dirty"),
        }
        queue += [(e.get("path"), e.get("md5"), rel) for e in (record.get("inputs") or {}).values() if e.get("path")]
    return list(out.values())
