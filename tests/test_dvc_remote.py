"""A DVC remote on an S3-compatible server (moto's, on 127.0.0.1): what one person pushes after a
run, a fresh clone pulls whole, with nothing to recompute and an audit that passes."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ENV, clone_repo, sh
from tests.servers import SECRET, new_bucket, s3_env

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def _outs(work: Path) -> list[str]:
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    return sorted({o["path"] for stage in lock.values() for o in stage.get("outs", [])})


def _same(a: Path, b: Path) -> bool:
    if a.is_file():
        return b.is_file() and filecmp.cmp(a, b, shallow=False)
    cmp = filecmp.dircmp(a, b)
    return (not cmp.left_only and not cmp.right_only and not cmp.diff_files and not cmp.funny_files
            and all(_same(a / d, b / d) for d in cmp.common_dirs)
            and all(filecmp.cmp(a / f, b / f, shallow=False) for f in cmp.same_files))


@pytest.fixture(scope="module")
def pushed(repo, s3_server, tmp_path_factory):
    """The tiny run with an S3 remote in its committed .dvc/config (as the README sets one up) and
    its dvc.lock committed, pushed once for the module's tests: (workspace, remote URL, environment)."""
    tmp = tmp_path_factory.mktemp("remote")
    env = {**ENV, **s3_env(s3_server, tmp)}
    saved = {k: os.environ.get(k) for k in env if k.startswith("AWS_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})  # for new_bucket, in this process
    try:
        url = f"{new_bucket()}/dvcstore"
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    work = clone_repo(repo, tmp / "origin")
    run(env, "dvc", "remote", "add", "-d", "shared", url, cwd=work)
    run(env, "dvc", "remote", "modify", "shared", "endpointurl", s3_server, cwd=work)
    sh("git", "add", "-A", cwd=work)
    sh("git", "commit", "-qm", "tiny run, with its dvc.lock and metrics", cwd=work)
    assert "pushed" in run(env, "dvc", "push", cwd=work)
    return work, url, env


def run(env, *cmd, cwd, check=0, timeout=600):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == check, f"{' '.join(cmd)}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


def test_push_then_pull_in_a_fresh_clone_restores_every_output(pushed, tmp_path):
    work, url, env = pushed
    fresh = tmp_path / "fresh"
    sh("git", "clone", "-q", str(work), str(fresh), cwd=tmp_path)
    outs = _outs(fresh)
    assert "models/sae/standard-128" in outs and not (fresh / "models/sae/standard-128").exists()
    run(env, "dvc", "pull", cwd=fresh)
    for out in outs:  # every output, byte for byte
        assert (fresh / out).exists() and _same(work / out, fresh / out), out
    repro = run(env, "dvc", "repro", cwd=fresh, timeout=900)
    assert "Running stage" not in repro and "up to date" in repro, repro
    audit = run(env, str(BIN / "monosemantic"), "audit", "models/sae/standard-128", cwd=fresh)
    assert "PROBLEM" not in audit, audit
    for f in [p for p in fresh.rglob("*") if p.is_file() and ".git" not in p.parts]:
        assert SECRET.encode() not in f.read_bytes(), f  # credentials stayed in the environment


def test_a_run_s_results_come_back_from_the_remote_instead_of_a_rerun(repo, pushed, tmp_path):
    """What the pull-request workflow does for the base branch when a remote is configured: the
    first run stores its results under a key; a later checkout of the same commit fetches them,
    and `dvc repro` runs nothing. A key never stored changes nothing."""
    work, url, env = pushed
    fresh = tmp_path / "fresh"
    sh("git", "clone", "-q", str(repo), str(fresh), cwd=tmp_path)  # the tiny run's commit: no dvc.lock, no outputs
    run(env, "dvc", "remote", "add", "--local", "-d", "ci", url, cwd=fresh)  # as the workflow adds it from a secret
    run(env, "dvc", "remote", "modify", "--local", "ci", "endpointurl", env["AWS_ENDPOINT_URL"], cwd=fresh)
    cli = str(BIN / "monosemantic")
    assert "stored results 'tiny-1'" in run(env, cli, "results", "store", "tiny-1", cwd=work)

    missing = run(env, cli, "results", "fetch", "tiny-2", cwd=fresh, check=1)
    assert "no results 'tiny-2'" in missing and not (fresh / "dvc.lock").exists()
    run(env, cli, "results", "fetch", "tiny-1", cwd=fresh)
    for out in _outs(work):
        assert _same(work / out, fresh / out), out
    repro = run(env, "dvc", "repro", cwd=fresh, timeout=900)
    assert "Running stage" not in repro and "up to date" in repro, repro
    sh("git", "add", "-A", cwd=fresh)  # the workflow's next step diffs against it as a revision
    sh("git", "commit", "-qm", "tiny run of the base, from the remote", cwd=fresh)
    assert "no changes" in run(env, cli, "diff", "HEAD", cwd=fresh)


def test_a_remote_without_the_object_is_named_by_pull(pushed, tmp_path):
    """Pulling what nobody pushed fails with DVC's own message naming the missing output, and
    `dvc status` then knows the stages must run: nothing is silently taken as up to date."""
    work, url, env = pushed
    fresh = tmp_path / "fresh"
    sh("git", "clone", "-q", str(work), str(fresh), cwd=tmp_path)
    run(env, "dvc", "remote", "modify", "--local", "shared", "url", f"{url}-empty", cwd=fresh)  # nothing pushed there
    res = subprocess.run(["dvc", "pull"], cwd=fresh, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and "models/sae/standard-128" in res.stdout + res.stderr, res.stdout + res.stderr
    status = run(env, "dvc", "status", cwd=fresh)
    assert "deleted" in status or "changed" in status, status
