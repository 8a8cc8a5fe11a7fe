"""SAE training from an S3-compatible store next to the same training from local disk, in one run.

Starts moto's S3 server (``moto_server``, a dev dependency) on 127.0.0.1 as a separate process,
writes one store twice with the stage's writer (a local directory and ``s3://bench/acts.zarr``),
then trains the same dictionary from each, interleaved (local, remote, local, remote, ...), and
prints name=value lines:

- ``train_tokens_per_s_local`` / ``_remote`` (medians) and ``ratio`` = remote / local: target >= 0.8;
- ``read_rows_per_s_local`` / ``_remote``: the reader alone (no training), what it could feed;
- ``server_cpu_cores``: the server's CPU time / wall time while training from it. On a 2-core
  machine the server competes with training for the cores: that cost is inside ``ratio``.

Activations come from models/transformer over data/tokens.zarr when both exist (real ones
compress as the real store does), otherwise from a seeded GELU of Gaussians (barely compressible:
the most bytes per row the server can be asked for).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the stages run; before torch loads

import argparse
import itertools
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from monosemantic import storage
from monosemantic.activations import Layout, cache_activations, open_store
from monosemantic.activations.reader import batches, random_rows
from monosemantic.model import load_model
from monosemantic.model.hooks import capture
from monosemantic.sae import build
from monosemantic.sae.trainer import TrainConfig, train_sae

D_MLP, CTX = 512, 128


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "moto_server"
    log = open(tmp / "moto.log", "w")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2).read()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                sys.exit(f"remote_reader: moto_server did not answer at {url} within 60 s (see {tmp / 'moto.log'})")
            time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def activations(n_seq: int):
    """(acts_fn, tokens, kind): the cache stage's inputs, real when the default run's outputs exist."""
    if Path("models/transformer/config.json").exists() and Path("data/tokens.zarr").exists():
        from monosemantic.tokens import read_tokens

        model, rows = load_model("models/transformer"), read_tokens("data/tokens.zarr").split("train")
        tokens = np.concatenate([rows] * -(-n_seq // len(rows)))[:n_seq]
        return (lambda t: capture(model, "mlp.act", t)), tokens, "trained model"
    gen = torch.Generator().manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, 4096, (n_seq, CTX), dtype=np.int32)
    return (lambda t: torch.nn.functional.gelu(torch.randn(*t.shape, D_MLP, generator=gen))), tokens, "synthetic"


def write(acts_fn, tokens, out) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        cache_activations(acts_fn, tokens, np.arange(len(tokens)), out, D_MLP, Layout(CTX), 64,
                          {"splits": {"train": [0, tokens.size]}}, "bench")
    return time.perf_counter() - t0


def read_rate(acts, n: int, batch: int) -> float:
    it = batches(acts, 0, n, batch, 0, 64, 0)
    next(it)
    t0, rows = time.perf_counter(), 0
    for b in itertools.islice(it, max(1, n // batch - 1)):
        rows += len(b)
    return rows / (time.perf_counter() - t0)


def train_rate(acts, n: int, args) -> float:
    torch.manual_seed(0)
    sae = build(args.architecture, D_MLP, args.dict_size, {})
    cfg = TrainConfig(steps=args.steps, lr=1e-3, batch_size=args.batch_size, log_every=args.steps,
                      checkpoint_every=10**9)
    state = train_sae(sae, lambda pos: batches(acts, 0, n, args.batch_size, 0, 64, pos),
                      lambda k, g: random_rows(acts, 0, n, k, g), cfg)
    return state.history[-1]["tokens_per_second"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, default=4096, help="sequences of 128 tokens in the store (4096: 512k tokens)")
    ap.add_argument("--dict-size", type=int, default=4096)
    ap.add_argument("--architecture", default="standard")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=150, help="training steps per measurement")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved local/remote pairs")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="remote-reader-"))
    proc, endpoint = start_server(tmp)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
    try:
        storage.RemoteLocation("s3://bench/x").fs.mkdir("bench")
        acts_fn, tokens, kind = activations(args.seqs)
        local_s = write(acts_fn, tokens, tmp / "acts.zarr")
        remote_s = write(acts_fn, tokens, storage.location("s3://bench/acts.zarr"))
        local, remote = open_store(tmp / "acts.zarr").acts, open_store("s3://bench/acts.zarr").acts
        n = local.shape[0]
        size = sum(f.stat().st_size for f in (tmp / "acts.zarr").rglob("*") if f.is_file())
        print(f"activations={kind}")
        print(f"tokens={n}")
        print(f"store_mb={size / 2**20:.0f}")
        print(f"write_s_local={local_s:.1f}")
        print(f"write_s_remote={remote_s:.1f}")
        print(f"read_rows_per_s_local={read_rate(local, n, args.batch_size):.0f}")
        c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        print(f"read_rows_per_s_remote={read_rate(remote, n, args.batch_size):.0f}")
        print(f"server_cpu_cores_reading={(cpu_seconds(proc.pid) - c0) / (time.perf_counter() - t0):.2f}")
        rates: dict[str, list[float]] = {"local": [], "remote": []}
        server_cpu, remote_wall = 0.0, 0.0
        for _ in range(args.repeats):
            rates["local"].append(train_rate(local, n, args))
            c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            rates["remote"].append(train_rate(remote, n, args))
            server_cpu, remote_wall = server_cpu + cpu_seconds(proc.pid) - c0, remote_wall + time.perf_counter() - t0
        loc, rem = statistics.median(rates["local"]), statistics.median(rates["remote"])
        print(f"dictionary={args.architecture}-{args.dict_size}")
        print(f"train_tokens_per_s_local={loc:.0f}  (runs: {', '.join(f'{r:.0f}' for r in rates['local'])})")
        print(f"train_tokens_per_s_remote={rem:.0f}  (runs: {', '.join(f'{r:.0f}' for r in rates['remote'])})")
        print(f"server_cpu_cores={server_cpu / remote_wall:.2f}")
        print(f"cpu_cores={os.cpu_count()}")
        print(f"ratio={rem / loc:.3f}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
