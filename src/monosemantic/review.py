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


# ---------------------------------------------------------------- a revision's results, kept in the DVC remote
# DVC's run cache would restore unchanged stages by itself, but it skips stages with `persist`
# outputs, which every stage here has (outputs survive a failed or resumed run). So a run's
# results are kept explicitly: `dvc push` sends the cached outputs, and one archive per key holds
# what git would otherwise have to: dvc.lock, the outputs DVC does not cache (metrics, plots) and
# the .gitignore files DVC wrote beside its outputs (a directory dependency's hash includes them).
RESULTS = "monosemantic-results"


def _dvc(*args: str) -> str:
    res = _run([sys.executable, "-m", "dvc", *args])
    if res.returncode:
        raise ReviewError(f"`dvc {' '.join(args)}` failed: {res.stderr.strip()[-2000:] or res.stdout.strip()[-2000:]}")
    return res.stdout


def _results(remote: str | None):
    """The archive folder of `remote` (default: DVC's default remote): a Location beside DVC's files."""
    from monosemantic import storage

    if remote:
        name = remote
    else:  # with no default, DVC prints "No default remote set" and exits 1: that is no name
        res = _run([sys.executable, "-m", "dvc", "remote", "default"])
        name = "" if res.returncode else res.stdout.strip()
    if not name:
        raise ReviewError("no default DVC remote is set: `dvc remote add -d NAME URL` first (README: A DVC remote), "
                          "or pass --remote NAME")
    url = _run([sys.executable, "-m", "dvc", "config", f"remote.{name}.url"]).stdout.strip()
    if not url:
        raise ReviewError(f"DVC remote {name!r} is not configured: `dvc remote list` shows those that are")
    base = f"{url.rstrip('/')}/{RESULTS}" if storage.is_url(url) else Path(url) / RESULTS
    return storage.location(base), name


def _workspace_files() -> list[str]:
    """What a run leaves for git, not DVC's cache: the outputs with `cache: false` (DVC verifies them
    but never pushes them) and the .gitignore files DVC writes beside the cached ones."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        outs = [out for stage in repo.index.stages for out in stage.outs]
    uncached = {out.def_path for out in outs if not out.use_cache}
    ignores = {str(Path(out.def_path).parent / ".gitignore") for out in outs if out.use_cache}
    return sorted(p for p in uncached | ignores if Path(p).exists())


def store_results(key: str, remote: str | None = None) -> int:
    """Push the workspace's outputs to the DVC remote and archive dvc.lock with the uncached outputs
    and DVC's .gitignore files under `key`; returns the number of paths archived."""
    import io
    import tarfile

    if not Path("dvc.lock").exists():
        raise ReviewError("no dvc.lock here: run `dvc repro` first; there are no results to store")
    loc, name = _results(remote)
    _dvc("push", "-q", "-r", name)
    buf, n = io.BytesIO(), 0
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in ["dvc.lock", *_workspace_files()]:
            tar.add(path)
            n += 1
    with loc.errors("writing", f"{key}.tar.gz"):
        loc.write(f"{key}.tar.gz", [buf.getvalue()])
    return n


def fetch_results(key: str, remote: str | None = None) -> bool:
    """Restore the results archived under `key`: dvc.lock, the uncached outputs, and (`dvc pull`)
    every cached one, then check that `dvc status` finds nothing to run. False, with nothing
    written, when the remote holds no results for `key`."""
    import io
    import tarfile

    loc, name = _results(remote)
    with loc.errors("reading", f"{key}.tar.gz"):
        if not loc.exists(f"{key}.tar.gz"):
            return False
        data = loc.read(f"{key}.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(".", filter="data")  # no absolute paths, no escapes from the workspace
    _dvc("pull", "-q", "-r", name)
    changed = _dvc("status", "--json").strip()
    if changed not in ("", "{}"):
        raise ReviewError(f"results {key!r} were restored but `dvc status` still finds stages to run: "
                          f"{changed[:500]}; this workspace's dvc.yaml or params differ from the stored run's")
    return True
