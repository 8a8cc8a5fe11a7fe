"""The activation store in object storage, against a real S3-compatible server: moto's, started on
127.0.0.1 by a fixture (nothing to start by hand, in CI or here).

The library tests write and read stores directly; the end-to-end ones run the tiny pipeline's
cache_activations and train_sae against a bucket and compare with the local run of `repo`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from monosemantic import storage
from monosemantic.activations import Layout, cache_activations, open_store
from monosemantic.errors import UserError
from monosemantic.provenance import hash_path
from tests.conftest import ENV, clone_repo, set_params, sh
from tests.servers import SECRET, free_port, new_bucket, s3_env, start_moto
from tests.test_activations import D, fake_acts, token_rows

def _files(loc: storage.Location) -> dict[str, bytes]:
    return {key: loc.read(key) for key in sorted(loc.files())}


def run(out, tokens, rows, layout, acts_fn=fake_acts, **kw):
    return cache_activations(acts_fn, tokens, rows, out, D, layout, batch_seqs=3, attrs={"splits": {}},
                             fingerprint="fp", **kw)


# ---------------------------------------------------------------- the library
def test_an_s3_store_holds_the_bytes_of_a_local_one(s3, tmp_path):
    tokens, rows, layout = token_rows(40, 6), np.arange(40), Layout(6, 2, 2)
    url = f"{s3}/runs/acts.zarr"
    stats = run(storage.location(url), tokens, rows, layout)
    run(tmp_path / "local.zarr", tokens, rows, layout)
    remote, local = _files(storage.location(url)), _files(storage.LocalLocation(tmp_path / "local.zarr"))
    assert remote == local
    assert stats["manifest"] == {k: {"md5": storage.md5(v), "size": len(v)} for k, v in local.items()}
    assert not storage.location(url + ".partial").files() and not storage.location(url + ".progress").files()
    a, b = open_store(url), open_store(tmp_path / "local.zarr")
    assert a.path == url and (a.acts[:] == b.acts[:]).all() and (a.group["tokens"][:] == b.group["tokens"][:]).all()


def test_a_manifest_opens_its_store_and_refuses_one_rewritten_since(s3, tmp_path):
    """data/activations.zarr holding a manifest: readers follow it to the URL, and a store another run
    wrote there since (same URL, other bytes) is refused, not read."""
    url, layout = f"{s3}/shared/acts.zarr", Layout(6, 2, 2)
    stats = run(storage.location(url), token_rows(12, 6), np.arange(12), layout)
    pointer = tmp_path / "data/activations.zarr"
    pointer.mkdir(parents=True)
    storage.write_manifest(pointer, storage.location(url), stats["manifest"])
    assert open_store(pointer).path == url and open_store(pointer).acts.shape == (72, D)
    run(storage.location(url), token_rows(12, 6, seed=1), np.arange(12), layout)
    with pytest.raises(UserError, match=f"{url} is not the store .*manifest.json describes"):
        open_store(pointer)


def test_the_server_going_down_mid_cache_is_named_and_a_rerun_resumes(s3, tmp_path, monkeypatch):
    """A second server, on its own port, is stopped while shards are being written; the same data
    (moto keeps it in this process) comes back with it, and the re-run finishes the store."""
    port = free_port()
    server = start_moto(port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    tokens, rows, layout = token_rows(40, 6), np.arange(40), Layout(6, 2, 2)
    url, stopped = f"{s3}/down/acts.zarr", []
    progress = storage.location(url + ".progress")

    def stops_the_server(t):
        time.sleep(0.2)  # a model slower than the writer
        if not stopped and len(progress.files()) >= 2:  # some shards written, most not
            server.stop()
            stopped.append(True)
        return fake_acts(t)

    start = time.monotonic()
    try:
        with pytest.raises(storage.StorageError) as e:
            run(storage.location(url), tokens, rows, layout, acts_fn=stops_the_server)
    finally:
        server.stop()
    assert time.monotonic() - start < 120
    message = str(e.value)
    assert f"{url}.p" in message and f"127.0.0.1:{port}" in message and "re-run resumes" in message, message
    assert SECRET not in message and "Traceback" not in message

    server = start_moto(port)  # the same port, the same data
    try:
        assert 2 <= len(progress.files()) < 10  # of 10 shards
        run(storage.location(url), tokens, rows, layout)
        run(tmp_path / "clean.zarr", tokens, rows, layout)
        assert _files(storage.location(url)) == _files(storage.LocalLocation(tmp_path / "clean.zarr"))
    finally:
        server.stop()


def test_a_move_into_place_cut_short_is_finished_by_the_rerun(s3, tmp_path, monkeypatch):
    """Object stores cannot rename: the finished store is copied to its URL. Stopped halfway, the URL
    holds no store (readers say so) and the re-run finishes the copy without recomputing a shard."""
    tokens, rows, layout = token_rows(20, 6), np.arange(20), Layout(6, 2, 2)
    url, real = f"{s3}/moved/acts.zarr", storage.RemoteLocation.replace

    def cut_short(self, final):
        final.remove()
        keys = [k for k in self.files() if k != "zarr.json"][:7]
        self.fs.copy([self._key(k) for k in keys], [final._key(k) for k in keys])
        raise storage.StorageError(f"copying to {final.url} failed: connection reset")

    monkeypatch.setattr(storage.RemoteLocation, "replace", cut_short)
    with pytest.raises(storage.StorageError, match="connection reset"):
        run(storage.location(url), tokens, rows, layout)
    with pytest.raises(UserError, match="not an activation store"):
        open_store(url)
    monkeypatch.setattr(storage.RemoteLocation, "replace", real)
    computed = []
    run(storage.location(url), tokens, rows, layout, acts_fn=lambda t: computed.append(1) or fake_acts(t))
    run(tmp_path / "clean.zarr", tokens, rows, layout)
    assert not computed and _files(storage.location(url)) == _files(storage.LocalLocation(tmp_path / "clean.zarr"))
    assert not storage.location(url + ".partial").files() and not storage.location(url + ".progress").files()


KILLABLE = textwrap.dedent("""
    import sys, time, numpy as np
    sys.path.insert(0, {root!r})
    from tests.test_activations import fake_acts, token_rows, D
    from monosemantic.activations import Layout, cache_activations
    from monosemantic.storage import location
    def slow(t):
        time.sleep(0.05)
        return fake_acts(t)
    cache_activations(slow, token_rows(40, 6), np.arange(40), location({url!r}), D, Layout(6, 2, 2), 3,
                      {{"splits": {{}}}}, "fp")
""")


def test_sigkill_while_caching_to_s3_then_resume_gives_the_same_bytes(s3, tmp_path):
    url = f"{s3}/killed/acts.zarr"
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE.format(root=root, url=url)], stderr=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
    progress = storage.location(url + ".progress")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(progress.files()) < 3:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(progress.files())
    assert 3 <= done < 10 and not storage.location(url).files()  # of 10 shards; the store itself not yet there
    tokens, rows, layout = token_rows(40, 6), np.arange(40), Layout(6, 2, 2)
    run(storage.location(url), tokens, rows, layout)
    run(tmp_path / "clean.zarr", tokens, rows, layout)
    assert _files(storage.location(url)) == _files(storage.LocalLocation(tmp_path / "clean.zarr"))


def test_store_urls_are_checked_and_never_repeated_with_credentials(tmp_path):
    from monosemantic.params import load_params

    raw = yaml.safe_load((Path(__file__).parent / "params_tiny.yaml").read_text())
    for value, message in [(f"s3://AKIA:{SECRET}@bucket/acts.zarr", "holds credentials"),
                           (f"s3://bucket/acts.zarr?token={SECRET}", "query"),
                           ("ftp://bucket/acts.zarr", "unsupported URL scheme"),
                           ("s3://bucket", "path inside the bucket"),
                           ("/elsewhere/acts.zarr", "data/activations.zarr")]:
        raw["activations"]["store"] = value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        with pytest.raises(UserError, match="activations.store") as e:
            load_params(tmp_path / "params.yaml")
        assert message in str(e.value) and SECRET not in str(e.value)
    raw["activations"]["store"] = "s3://bucket/prefix/acts.zarr/"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load_params(tmp_path / "params.yaml").activations.store == "s3://bucket/prefix/acts.zarr"


@pytest.mark.parametrize("error, fix", [
    ("unreachable", "re-run resumes"), ("missing chunk 403", "bucket exists"), ("403", "credentials were refused"),
    ("denied", "credentials were refused"), ("no bucket", "bucket exists"), ("bucket named 403", "bucket exists"),
    ("denied in a body", "credentials were refused"), ("403 bytes read", "re-run resumes")])
def test_a_storage_error_is_told_by_its_kind_never_by_the_numbers_in_its_urls(monkeypatch, error, fix):
    """Port 34033, chunk c/403/0 and a bucket monosemantic-403 hold "403"; only the server's answer (its code
    or status, else its words) may say the credentials were refused."""
    import botocore.exceptions as boto

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:34033")
    key = "acts/c/403/0"
    e = {"unreachable": boto.EndpointConnectionError(endpoint_url=f"http://127.0.0.1:34033/b/acts.zarr/{key}"),
         "missing chunk 403": FileNotFoundError(f"b/acts.zarr/{key}"),
         "403": boto.ClientError({"Error": {"Code": "403", "Message": ""}}, "HeadObject"),  # HEAD: no body
         "denied": PermissionError("Access Denied"),
         "no bucket": boto.ClientError({"Error": {"Code": "NoSuchBucket", "Message": "gone"}}, "PutObject"),
         "bucket named 403": OSError("NoSuchBucket: monosemantic-403"),
         "denied in a body": OSError("<Error><Code>AccessDenied</Code></Error>"),
         "403 bytes read": OSError("IncompleteRead(403 bytes read, 1021 more expected)")}[error]
    message = storage.location("s3://b/acts.zarr").explain(e, "writing", key)
    assert message.startswith("writing s3://b/acts.zarr/acts/c/403/0 (endpoint http://127.0.0.1:34033)"), message
    assert fix in message, message
    assert ("credentials were refused" in message) == (fix == "credentials were refused"), message


# ---------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def s3_run(repo, s3_server, tmp_path_factory):
    """The tiny pipeline's activations cached to a bucket, and one dictionary trained from them."""
    work = clone_repo(repo, tmp_path_factory.mktemp("s3") / "r")
    env = {**ENV, **s3_env(s3_server, work)}
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        env.pop(name, None)
    saved = {k: os.environ.get(k) for k in env if k.startswith("AWS_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})  # for this process's reads
    try:
        url = f"{new_bucket()}/tiny/activations.zarr"
        set_params(work, lambda r: r["activations"].update(store=url))
        res = subprocess.run(["dvc", "repro", "train_sae@standard-128"], cwd=work, env=env, capture_output=True,
                             text=True, timeout=1200)
        assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        (work / "repro-s3.log").write_text(res.stdout + res.stderr)
        yield work, url, env
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


e2e = pytest.mark.e2e  # the tests below use the tiny pipeline


@e2e
def test_cache_to_s3_and_train_from_it_as_from_a_local_store(repo, s3_run):
    work, url, env = s3_run
    # The bucket holds the local run's bytes: every shard, every array's metadata.
    remote, local = _files(storage.location(url)), _files(storage.LocalLocation(repo / "data/activations.zarr"))
    assert remote.keys() == local.keys()
    assert {k for k in remote if remote[k] != local[k]} == {"zarr.json"}  # the root: its provenance record
    # The workspace holds the manifest, which DVC tracks and train_sae was made from.
    stub = work / "data/activations.zarr"
    assert sorted(p.name for p in stub.iterdir()) == ["manifest.json", "provenance.json"]
    manifest = json.loads((stub / "manifest.json").read_text())
    assert manifest["url"] == url
    assert manifest["files"] == {k: {"md5": storage.md5(v), "size": len(v)} for k, v in remote.items()}
    record = json.loads((stub / "provenance.json").read_text())
    assert record["store"] == url and record["files"] == {"manifest.json": hash_path(stub / "manifest.json")}
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert lock["cache_activations"]["outs"][0] == {**lock["cache_activations"]["outs"][0],
                                                   "path": "data/activations.zarr", "md5": hash_path(stub)}
    sae_record = json.loads((work / "models/sae/standard-128/provenance.json").read_text())
    assert sae_record["inputs"]["activations"]["md5"] == hash_path(stub)
    # Trained from the bucket, the dictionary is the local run's.
    for name in ("sae_weights.safetensors", "cfg.json"):
        assert (work / "models/sae/standard-128" / name).read_bytes() == \
               (repo / "models/sae/standard-128" / name).read_bytes(), name
    status = sh("dvc", "status", "cache_activations", "train_sae@standard-128", cwd=work).stdout
    assert "changed" not in status, status
    _assert_secret_nowhere(work)


@e2e
def test_two_processes_cache_to_s3_the_bytes_of_one(repo, s3_run, tmp_path):
    """torchrun's ranks each write their own shards into the bucket; rank 0 finishes the store."""
    from tests.test_distributed import processes

    env = s3_run[2]
    work = clone_repo(repo, tmp_path / "r")
    url = s3_run[1].replace("/tiny/", "/two-ranks/")
    set_params(work, lambda r: r["activations"].update(store=url))
    set_params(work, processes(2))
    res = subprocess.run([sys.executable, "-m", "stages.launch", "cache_activations"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert "launching: torchrun" in res.stdout
    remote, local = _files(storage.location(url)), _files(storage.LocalLocation(repo / "data/activations.zarr"))
    assert remote.keys() == local.keys()
    assert {k for k in remote if remote[k] != local[k]} == {"zarr.json"}  # its provenance: world size 2
    manifest = json.loads((work / "data/activations.zarr/manifest.json").read_text())
    assert manifest["url"] == url and set(manifest["files"]) == set(remote)
    assert not storage.location(url + ".partial").files() and not storage.location(url + ".progress").files()
    _assert_secret_nowhere(work)


@e2e
def test_audit_verifies_the_remote_store_and_names_a_changed_shard(s3_run):
    work, url, env = s3_run
    audit = [str(Path(sys.executable).parent / "monosemantic"), "audit", "models/sae/standard-128"]
    res = subprocess.run(audit, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert f"store {url}" in res.stdout
    store = storage.location(url)
    shard = "acts/c/3/0"
    original = store.read(shard)
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0xFF
    store.write(shard, [bytes(changed)])
    try:
        res = subprocess.run(audit, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    finally:
        store.write(shard, [original])
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    problems = [line for line in res.stdout.splitlines() if line.startswith("PROBLEM")]
    assert problems == [f"PROBLEM changed: data/activations.zarr: {url}/{shard} differs from the md5 its manifest "
                        f"holds  recorded {storage.md5(original)}  found {storage.md5(bytes(changed))}"], res.stdout


@e2e
def test_wrong_credentials_are_named_with_the_url_never_the_secret(s3_run, s3_server, tmp_path):
    import boto3

    work = clone_repo(s3_run[0], tmp_path / "r")
    iam = boto3.client("iam", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="x",
                       aws_secret_access_key="x")
    user = f"u{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key_id = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    env = {**s3_run[2], "AWS_ACCESS_KEY_ID": key_id}  # a real key id, and a secret that is not its own
    url = s3_run[1].replace("/tiny/", "/refused/")
    set_params(work, lambda r: r["activations"].update(store=url))
    _authenticate(s3_server, True)
    try:
        cache = subprocess.run([sys.executable, "-m", "stages.cache_activations"], cwd=work, env=env,
                               capture_output=True, text=True, timeout=300)
        audit = subprocess.run([str(Path(sys.executable).parent / "monosemantic"), "audit", "data/activations.zarr"],
                               cwd=s3_run[0], env=env, capture_output=True, text=True, timeout=300)
    finally:
        _authenticate(s3_server, False)
    assert cache.returncode == 2 and "Traceback" not in cache.stderr, cache.stderr[-3000:]
    assert url in cache.stderr and "credentials were refused" in cache.stderr, cache.stderr[-3000:]
    assert audit.returncode == 3 and s3_run[1] in audit.stdout and "could not be read" in audit.stdout, audit.stdout
    for out in (cache.stdout, cache.stderr, audit.stdout, audit.stderr):
        assert SECRET not in out
    _assert_secret_nowhere(work)


def _authenticate(server: str, on: bool) -> None:
    """moto checks signatures and access keys only when asked to (from the next request on)."""
    request = urllib.request.Request(f"{server}/moto-api/reset-auth", b"0" if on else b"inf", method="POST",
                                     headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).read()


def _assert_secret_nowhere(work: Path) -> None:
    """Not in params, dvc.lock, provenance, metrics, logs or MLflow's store: nowhere in the workspace."""
    for f in [p for p in work.rglob("*") if p.is_file() and ".git" not in p.parts]:
        assert SECRET.encode() not in f.read_bytes(), f
