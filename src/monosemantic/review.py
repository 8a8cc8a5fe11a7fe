"""What a pull request changes in the pipeline's params and metrics, as markdown to paste.

Reviewers of this project judge a change by what it did to the numbers. DVC already computes
both diffs (`dvc params diff`, `dvc metrics diff`); this module runs them against one git
revision and puts them under headings, saying "no changes" where DVC prints an empty table,
so that CI and people produce the same comment. The directory and the revision are checked
before DVC runs, so a wrong one fails at once with one line that names the fix.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class ReviewError(Exception):
    """The diff cannot be made here; the message says why and what to do."""


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True)


def resolve(rev: str) -> str:
    """Check that the cwd is a DVC repo root and `rev` a commit; return its short hash."""
    if not Path(".dvc").is_dir():
        raise ReviewError(f"{Path.cwd()} is not a DVC repository root: run from the directory "
                          "that holds .dvc/ (or `dvc init` there first)")
    if shutil.which("git") is None:
        raise ReviewError("git is not on PATH: install git, which DVC needs to read other revisions")
    res = _run(["git", "rev-parse", "--verify", "--quiet", "--short", f"{rev}^{{commit}}"])
    if res.returncode:
        if _run(["git", "rev-parse", "--git-dir"]).returncode:
            raise ReviewError(f"{Path.cwd()} is not in a git repository: DVC compares git revisions, "
                              "so `git init` and commit first")
        raise ReviewError(f"unknown git revision {rev!r}: give a branch, tag or commit that exists "
                          "here (`git fetch` a remote branch first, e.g. origin/main)")
    return res.stdout.strip()


def _dvc_table(args: list[str]) -> str:
    """Run `dvc <args> --md`; return its table, or "no changes" when the table has no rows."""
    res = _run([sys.executable, "-m", "dvc", *args, "--md"])
    if res.returncode:
        raise ReviewError(f"`dvc {' '.join(args)}` failed: {res.stderr.strip() or res.stdout.strip()}")
    table = res.stdout.strip()
    rows = [line for line in table.splitlines() if line.startswith("|")]
    text = table if len(rows) > 2 else "no changes"  # header and separator only: nothing differs
    # DVC's warnings (e.g. metrics it could not load at a revision) belong with the table they qualify.
    notes = [f"> {line}" for line in res.stderr.strip().splitlines()]
    return "\n".join([text, "", *notes]) if notes else text


def diff_markdown(rev: str = "HEAD", show_all: bool = False, targets: list[str] | None = None) -> str:
    """The markdown document: params and metrics of the workspace against `rev`."""
    short = resolve(rev)
    flags = ["--all"] if show_all else []
    metrics_targets = ["--targets", *targets] if targets else []
    with ThreadPoolExecutor(2) as pool:  # each DVC start-up takes a second: run both at once
        params, metrics = pool.map(_dvc_table, [["params", "diff", rev, *flags],
                                                ["metrics", "diff", rev, "--precision", "4", *flags, *metrics_targets]])
    return (f"## Pipeline changes: workspace vs `{rev}` ({short})\n\n"
            f"### Params\n\n{params}\n\n"
            f"### Metrics\n\n{metrics}\n")
