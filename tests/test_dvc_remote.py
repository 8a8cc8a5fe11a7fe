"""A DVC remote on an S3-compatible server (moto's, on 127.0.0.1): what one person pushes after a
run, a fresh clone pulls whole, with nothing to recompute and an audit that passes."""

from __future__ import annotations

import filecmp
import json
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


@pytest.fixture
def remote(s3, s3_server, tmp_path):
    """A bucket for the DVC remote, and the environment a user's shell would have (credentials only there)."""
    return f"{s3}/dvcstore", {**ENV, **s3_env(s3_server, tmp_path)}, s3_server


def test_push_then_pull_in_a_fresh_clone_restores_every_output(repo, remote, tmp_path):
    url, env, endpoint = remote
    work = clone_repo(repo, tmp_path / "origin")

    def run(*cmd, cwd=work, timeout=600):
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        return res.stdout + res.stderr

    # As the README says: the remote's URL and endpoint in .dvc/config (committed), credentials in the environment.
    run("dvc", "remote", "add", "-d", "shared", url)
    run("dvc", "remote", "modify", "shared", "endpointurl", endpoint)
    sh("git", "add", "-A", cwd=work)
    sh("git", "commit", "-qm", "tiny run, with its dvc.lock and metrics", cwd=work)
    pushed = run("dvc", "push")
    assert "pushed" in pushed, pushed

    fresh = tmp_path / "fresh"
    sh("git", "clone", "-q", str(work), str(fresh), cwd=tmp_path)
    outs = _outs(fresh)
    assert "models/sae/standard-128" in outs and not (fresh / "models/sae/standard-128").exists()
    run("dvc", "pull", cwd=fresh)
    for out in outs:  # every output, byte for byte
        assert (fresh / out).exists() and _same(work / out, fresh / out), out
    status = run("dvc", "status", "--json", cwd=fresh)
    assert json.loads(status.strip().splitlines()[-1]) == {}, status
    repro = run("dvc", "repro", cwd=fresh, timeout=900)
    assert "Running stage" not in repro and "up to date" in repro, repro
    audit = run(str(BIN / "monosemantic"), "audit", "models/sae/standard-128", cwd=fresh)
    assert "PROBLEM" not in audit, audit
    for f in [p for p in fresh.rglob("*") if p.is_file() and ".git" not in p.parts]:
        assert SECRET.encode() not in f.read_bytes(), f  # credentials stayed in the environment
    assert SECRET not in (fresh / ".dvc/config").read_text()


def test_a_remote_without_the_object_is_named_by_pull(repo, remote, tmp_path):
    """Pulling what nobody pushed fails with DVC's own message naming the missing output, and
    `dvc repro` then knows the stages must run: nothing is silently taken as up to date."""
    url, env, endpoint = remote
    work = clone_repo(repo, tmp_path / "origin")
    for cmd in (("dvc", "remote", "add", "-d", "shared", f"{new_bucket()}/empty"),
                ("dvc", "remote", "modify", "shared", "endpointurl", endpoint)):
        subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True, timeout=120)
    sh("git", "add", "-A", cwd=work)
    sh("git", "commit", "-qm", "tiny run", cwd=work)
    fresh = tmp_path / "fresh"
    sh("git", "clone", "-q", str(work), str(fresh), cwd=tmp_path)
    res = subprocess.run(["dvc", "pull"], cwd=fresh, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and "models/sae/standard-128" in res.stdout + res.stderr, res.stdout + res.stderr
    status = subprocess.run(["dvc", "status"], cwd=fresh, env=env, capture_output=True, text=True, timeout=300)
    assert "deleted" in status.stdout or "changed" in status.stdout, status.stdout


def test_a_run_s_results_come_back_from_the_remote_instead_of_a_rerun(repo, remote, tmp_path):
    """What the pull-request workflow does for the base branch when a remote is configured: the
    first run stores its results under a key; a later checkout of the same commit fetches them,
    and `dvc repro` runs nothing. A key never stored changes nothing."""
    url, env, endpoint = remote
    work = clone_repo(repo, tmp_path / "base")  # the tiny run, dvc.lock uncommitted as CI leaves it
    fresh = tmp_path / "fresh"
    sh("git", "clone", "-q", str(repo), str(fresh), cwd=tmp_path)  # the same commit, no outputs

    def run(*cmd, cwd, check=0, timeout=600):
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == check, f"{' '.join(cmd)}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        return res.stdout + res.stderr

    for where in (work, fresh):  # local config, as the workflow adds it from a secret
        run("dvc", "remote", "add", "--local", "-d", "ci", url, cwd=where)
        run("dvc", "remote", "modify", "--local", "ci", "endpointurl", endpoint, cwd=where)
    cli = str(BIN / "monosemantic")
    assert "stored results 'tiny-1'" in run(cli, "results", "store", "tiny-1", cwd=work)

    missing = run(cli, "results", "fetch", "tiny-2", cwd=fresh, check=1)
    assert "no results 'tiny-2'" in missing and not (fresh / "dvc.lock").exists()
    run(cli, "results", "fetch", "tiny-1", cwd=fresh)
    for out in _outs(work):
        assert _same(work / out, fresh / out), out
    repro = run("dvc", "repro", cwd=fresh, timeout=900)
    assert "Running stage" not in repro and "up to date" in repro, repro
    metrics = run("dvc", "metrics", "show", "--json", cwd=fresh)
    assert "loss_recovered" in metrics
    sh("git", "add", "-A", cwd=fresh)  # and the diff of the next step reads it as a revision
    sh("git", "commit", "-qm", "tiny run of the base, from the remote", cwd=fresh)
    assert "no changes" in run(cli, "diff", "HEAD", cwd=fresh)
