"""Tracking to a shared MLflow server: a real `mlflow server` on 127.0.0.1 (started by the
`mlflow_server` fixture) whose artifacts are proxied to a bucket of moto's S3, as a team would
run it; and a server that is not there, which stops a stage before any work.

The stage runs are of the tiny pipeline's `compare` (seconds of work, an artifact directory and
one dataset input per dictionary).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
import yaml

from monosemantic import storage, tracking
from monosemantic.errors import UserError
from monosemantic.provenance import hash_path, read_json
from tests.conftest import ENV, clone_repo
from tests.servers import SECRET, free_port

COMPARE_OUTS = ("reports/splitting", "plots/splitting", "metrics/splitting.json", "mlflow.db")
UNREACHABLE_LIMIT_S = 30  # a stage that meets no server stops within this (MLflow alone retries for minutes)


def compare(work, env, timeout=600) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "stages.compare"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=timeout)
    return res, time.monotonic() - t0


@pytest.mark.e2e
def test_a_stage_logs_its_run_to_the_shared_server_and_its_artifacts_to_the_bucket(
        repo, mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    work = clone_repo(repo, tmp_path / "r")
    url, artifacts = mlflow_server.url, mlflow_server.artifacts
    env = {**ENV, **mlflow_server.env, "MLFLOW_TRACKING_URI": url}  # the user's AWS credentials too: none may leak
    res, took = compare(work, env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert SECRET not in res.stdout + res.stderr

    record = read_json(work / "reports/splitting/provenance.json")
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    run = client.get_run(record["mlflow_run_id"])
    assert run.info.experiment_id == experiment.experiment_id and run.info.status == "FINISHED"
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")

    expected = tracking.flatten({**record["params"], "compute": record["compute"]})
    assert run.data.params == {k: str(v) for k, v in expected.items()}
    assert run.data.tags[tracking.TAG_STAGE] == "compare"
    assert run.data.tags["git_commit"] == record["code"]["git_commit"]
    assert run.data.tags["git_dirty"] == str(record["code"]["git_dirty"])
    assert {k: v for k, v in run.data.tags.items() if k.startswith("compute.")} == {
        f"compute.{k}": str(v) for k, v in record["compute"].items()}
    metrics = tracking.flatten(read_json(work / "metrics/splitting.json"))
    assert run.data.metrics == pytest.approx({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    assert {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs} == {
        name: i["md5"] for name, i in record["inputs"].items()}
    assert len(record["inputs"]) == 4  # one per dictionary of the tiny run

    # The artifact went through the server into the bucket: the same bytes, under the destination.
    assert {a.path for a in client.list_artifacts(run.info.run_id, "splitting")} >= {
        "splitting/nearest.parquet", "splitting/families", "splitting/provenance.json"}
    for name, value in mlflow_server.env.items():
        monkeypatch.setenv(name, value)
    bucket = storage.RemoteLocation(artifacts)
    prefix = f"{artifacts}/{experiment.experiment_id}/{run.info.run_id}/artifacts/splitting"
    for name in ("nearest.parquet", "families/standard.json", "families/topk.json", "provenance.json"):
        assert bucket.fs.cat_file(f"{prefix}/{name}") == (work / "reports/splitting" / name).read_bytes()

    # No AWS secret in what the server stored (params, tags, inputs: the whole database) or in the record.
    assert SECRET.encode() not in mlflow_server.db.read_bytes()
    assert SECRET not in (work / "reports/splitting/provenance.json").read_text()
    print(f"compare logging to the server took {took:.1f} s")


@pytest.mark.e2e
def test_an_unreachable_server_stops_the_stage_before_any_work(repo, tmp_path):
    """Nothing listens on the port: exit 2 within seconds, the URI named without its password, the
    fix given, no traceback, every output (and the workspace's own MLflow store) as it was."""
    work = clone_repo(repo, tmp_path / "r")
    port, password = free_port(), "pw-" + SECRET
    before = {out: hash_path(work / out) for out in COMPARE_OUTS}
    res, took = compare(work, {**ENV, "MLFLOW_TRACKING_URI": f"http://alice:{password}@127.0.0.1:{port}/"},
                        timeout=120)
    print(f"compare against an unreachable server stopped after {took:.1f} s")
    assert res.returncode == 2, res.stderr[-3000:]
    assert took < UNREACHABLE_LIMIT_S
    assert f"MLflow tracking server at http://127.0.0.1:{port}/ (MLFLOW_TRACKING_URI) is unreachable" in res.stderr
    assert "unset MLFLOW_TRACKING_URI" in res.stderr
    assert password not in res.stdout + res.stderr and "alice" not in res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert {out: hash_path(work / out) for out in COMPARE_OUTS} == before


def test_a_server_that_accepts_but_never_answers_is_given_up_on_within_the_timeout(monkeypatch):
    with socket.socket() as listener:  # the kernel completes the connection; nobody ever reads or writes
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(UserError, match=f"at http://127.0.0.1:{port} .*gave no answer within "
                                            f"{tracking.CHECK_TIMEOUT_S} s") as e:
            tracking.check(f"http://bob:hunter2@127.0.0.1:{port}")
        assert time.monotonic() - t0 < tracking.CHECK_TIMEOUT_S + 5
    assert "hunter2" not in str(e.value) and "bob" not in str(e.value)


def test_a_local_store_is_not_checked(monkeypatch, tmp_path):
    import requests

    def no_request(*args, **kwargs):
        raise AssertionError("a local store needs no request")

    monkeypatch.setattr(requests, "get", no_request)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.check()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    tracking.check()


def test_launch_checks_the_server_before_torchrun_starts_any_process(in_tmp, monkeypatch, capsys):
    from stages import launch
    from tests.conftest import ROOT

    raw = yaml.safe_load((ROOT / "tests/params_tiny.yaml").read_text())
    raw["compute"]["nproc_per_node"] = 2
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert launch.main(["train_sae", "standard-128"]) == 2
    out = capsys.readouterr()
    assert "launching: torchrun" not in out.out
    assert f"error in stage train_sae@standard-128: the MLflow tracking server at http://127.0.0.1:{port}" in out.err
