"""Data parallelism with torchrun on this machine's CPU (gloo): 2 processes, and 2 nodes on loopback.

Each test starts from a copy of the finished one-process tiny run (the `repo` fixture) and runs
one stage again through `stages.launch` with `compute` asking for more processes; the outputs are
compared with the one-process ones.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import zarr

from monosemantic.model import load_model
from monosemantic.provenance import hash_path
from monosemantic.sae.export import load_sae
from tests.conftest import ENV, clone_repo, set_params, sh

pytestmark = pytest.mark.e2e
LAUNCH = [sys.executable, "-m", "stages.launch"]
# Measured on this machine: 2 ranks vs 1 differ by float32 reduction order only. After the tiny
# run's 120 steps (two resamplings) the dictionaries agree to ~1e-6; the bound leaves room.
SAE_TOLERANCE = 1e-4
MODEL_TOLERANCE = 1e-4  # the subject model after 5 steps (AdamW); see its test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes(n: int, nodes: int = 1, port: int | None = None):
    def mutate(r):
        r["compute"].update(nproc_per_node=n, nnodes=nodes, device="cpu", threads=1, timeout_s=120,
                            rdzv_endpoint=f"127.0.0.1:{port or free_port()}")
    return mutate


def launch(work: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return sh(*LAUNCH, *args, cwd=work, timeout=timeout)


def shard_files(store: Path) -> dict[str, bytes]:
    """Every file of the store but the group's zarr.json (whose provenance records the world size)."""
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.relative_to(store).as_posix() != "zarr.json"}


def test_two_processes_cache_the_same_bytes(repo, tmp_path):
    work = clone_repo(repo, tmp_path / "r")
    set_params(work, processes(2))
    res = launch(work, "cache_activations")
    assert "launching: torchrun" in res.stdout
    store = work / "data/activations.zarr"
    assert shard_files(store) == shard_files(repo / "data/activations.zarr")
    record = zarr.open_group(store, mode="r").attrs["provenance"]
    assert record["compute"] == {"device": "cpu", "precision": "fp32", "world_size": 2}
    one = json.loads((repo / "metrics/activations.json").read_text())
    two = json.loads((work / "metrics/activations.json").read_text())
    assert two["mean_norm"] == one["mean_norm"] and two["tokens"] == one["tokens"]
    assert not list(work.glob("data/activations.zarr.*"))  # no partial or progress left behind


def test_two_processes_train_the_same_dictionary(repo, tmp_path):
    work = clone_repo(repo, tmp_path / "r")
    set_params(work, processes(2))
    launch(work, "train_sae", "standard-128")
    one, two = load_sae(repo / "models/sae/standard-128"), load_sae(work / "models/sae/standard-128")
    diff = max((a - b).abs().max().item() for a, b in zip(one.state_dict().values(), two.state_dict().values()))
    assert diff < SAE_TOLERANCE, diff
    rec_one = json.loads((repo / "models/sae/standard-128/provenance.json").read_text())
    rec_two = json.loads((work / "models/sae/standard-128/provenance.json").read_text())
    assert rec_two["resampling"] == rec_one["resampling"]  # the same events, neuron counts included
    assert rec_two["compute"]["world_size"] == 2
    torch.testing.assert_close(two.W_dec.norm(dim=1), torch.ones(128))


def test_two_processes_train_the_same_subject_model(repo, tmp_path):
    """Over 5 steps the two agree to float32 reduction order (measured: 5e-6). Over the tiny run's
    150, AdamW's normalised steps amplify that into ~0.07 on single weights (measured once, with the
    eval loss equal to 1%): the same training, not the same bits."""
    runs = {}
    for n in (1, 2):
        work = clone_repo(repo, tmp_path / f"r{n}")
        set_params(work, processes(n))
        set_params(work, lambda r: r["model"].update(steps=5))
        launch(work, "train_model")
        runs[n] = load_model(work / "models/transformer").state_dict()
    diff = max((runs[1][k] - runs[2][k]).abs().max().item() for k in runs[1])
    assert diff < MODEL_TOLERANCE, diff


def test_two_nodes_on_loopback_match_one_process(repo, tmp_path):
    """Two torchrun agents (--nnodes 2, c10d rendezvous on 127.0.0.1), each rank reading only its own
    lane of every batch (reader_lanes 2): the dictionary one process makes from the same two lanes."""
    lanes = lambda r: r["sae"]["train"].update(reader_lanes=2)  # noqa: E731
    node = clone_repo(repo, tmp_path / "node")
    set_params(node, processes(1, nodes=2, port=free_port()))
    set_params(node, lanes)
    procs = [subprocess.Popen([*LAUNCH, "train_sae", "standard-128"], cwd=node, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    single = clone_repo(repo, tmp_path / "single")
    set_params(single, lanes)
    launch(single, "train_sae", "standard-128")
    a, b = load_sae(node / "models/sae/standard-128"), load_sae(single / "models/sae/standard-128")
    diff = max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert diff < SAE_TOLERANCE, diff
    assert (json.loads((node / "models/sae/standard-128/provenance.json").read_text())["resampling"]
            == json.loads((single / "models/sae/standard-128/provenance.json").read_text())["resampling"])


def _worker_pids(parent: int) -> dict[int, int]:
    """{local rank: pid} of the torchrun workers under `parent` (the launcher, torchrun's agent)."""
    out = {}
    children = Path(f"/proc/{parent}/task/{parent}/children")
    for pid in map(int, children.read_text().split()) if children.exists() else []:
        try:
            env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        if "LOCAL_RANK" in env:
            out[int(env["LOCAL_RANK"])] = pid
    return out


def test_a_killed_rank_ends_the_stage_naming_it_and_a_rerun_resumes(repo, tmp_path):
    work = clone_repo(repo, tmp_path / "r")
    set_params(work, processes(2))
    set_params(work, lambda r: (r["sae"]["train"].update(steps=300, checkpoint_every=50),
                                r["sae"]["standard"].update(resample_steps=[100, 200])))
    ckpt = work / "checkpoints/train_sae/standard-128/checkpoint.pt"
    proc = subprocess.Popen([*LAUNCH, "train_sae", "standard-128"], cwd=work, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert ckpt.exists(), proc.communicate()
    os.kill(_worker_pids(proc.pid)[1], signal.SIGKILL)
    t0 = time.time()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.time() - t0 < 60
    assert "rank 1 (local rank 1" in err and "signal SIGKILL" in err, err[-3000:]
    before = hash_path(work / "models/sae/standard-128")
    assert before == hash_path(repo / "models/sae/standard-128")  # the previous dictionary is untouched
    res = launch(work, "train_sae", "standard-128")
    assert "resuming SAE training" in res.stdout + res.stderr and not ckpt.exists()
    assert json.loads((work / "metrics/sae/standard-128/train.json").read_text())["tokens_seen"] == 300 * 512


def test_cuda_without_cuda_fails_before_any_work(repo, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    work = clone_repo(repo, tmp_path / "r")
    set_params(work, lambda r: r["compute"].update(device="cuda"))
    before = hash_path(work / "models/sae/standard-128")
    for cmd in ([*LAUNCH, "train_sae", "standard-128"], [sys.executable, "-m", "stages.evaluate", "standard-128"]):
        res = subprocess.run(cmd, cwd=work, env=ENV, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "compute.device" in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = sh("dvc", "repro", "-f", "train_sae@standard-128", cwd=work, check=False)
    assert res.returncode != 0 and "compute.device" in res.stderr
    assert hash_path(work / "models/sae/standard-128") == before


# ---------------------------------------------------------------- refused by the launcher, before torchrun starts
def no_torchrun(monkeypatch) -> list:
    """The command lines torchrun would have been started with (it is not started)."""
    import torch.distributed.run

    started = []
    monkeypatch.setattr(torch.distributed.run, "main", started.append)
    return started


def launch_with(monkeypatch, gpus: int, **compute) -> list:
    """stages.launch's main, in the cwd, with params_tiny's compute changed and `gpus` CUDA devices
    pretended; returns the torchrun command lines it started."""
    import yaml

    from stages import launch as launcher
    from tests.conftest import ROOT

    raw = yaml.safe_load((ROOT / "tests/params_tiny.yaml").read_text())
    raw["compute"].update(compute)
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    started = no_torchrun(monkeypatch)
    launcher.main(["train_sae", "standard-128"])
    return started


def test_an_unknown_stage_is_a_usage_error_naming_the_stages(monkeypatch, capsys):
    from stages import launch as launcher

    started = no_torchrun(monkeypatch)
    for stage in ("train_sea", "launch", "_stage"):
        assert launcher.main([stage, "standard-128"]) == 2
        err = capsys.readouterr().err
        assert f"no stage {stage!r}" in err and "train_sae" in err and "usage: python -m stages.launch" in err, err
    assert started == []


def test_two_ranks_on_one_gpu_are_refused_before_torchrun(in_tmp, monkeypatch, capsys):
    """compute.setup puts local rank r on cuda:N, or cuda:(r % GPUs): two ranks would share a GPU and NCCL
    would fail once per rank, after every process had started. One GPU per local rank is launched."""
    refused = [({"device": "cuda:1", "nproc_per_node": 2}, 2, "device is 'cuda:1' but compute.nproc_per_node is 2"),
               ({"device": "cuda", "nproc_per_node": 4}, 2, "nproc_per_node is 4 but this node has 2 CUDA device(s)"),
               ({"device": "auto", "nproc_per_node": 3}, 1, "nproc_per_node is 3 but this node has 1 CUDA device(s)")]
    launched = [({"device": "cuda", "nproc_per_node": 2}, 2),
                ({"device": "cuda:1", "nnodes": 2, "rdzv_endpoint": "host-a:29500"}, 2),  # one rank a node
                ({"device": "cpu", "nproc_per_node": 4}, 0)]
    for compute, gpus, words in refused:
        with monkeypatch.context() as mp:
            assert launch_with(mp, gpus, **compute) == []
        out = capsys.readouterr()
        assert "launching: torchrun" not in out.out and words in out.err, (compute, out.err)
    for compute, gpus in launched:
        with monkeypatch.context() as mp:
            assert len(launch_with(mp, gpus, **compute)) == 1
        assert "launching: torchrun" in capsys.readouterr().out, compute
