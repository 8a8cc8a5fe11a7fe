"""What data parallelism costs on one machine: 2 ranks (`--world`; torchrun on 127.0.0.1, gloo,
CPU, the cores split between them) next to 1 process doing the same work, both measured in this run.
Prints name=value lines. Reuses sae_step.py (beside it) for the SAE's data and starting point.

SAE step (the trainer's train_step, at the sparsity of sae_step.py's near-trained SAE): each rank
steps on its share of the global batch (`--batch`, params.yaml's sae.train.batch_size) and
Compute.reduce_gradients_ sums the gradients in one all-reduce. sae_comm_fraction = seconds inside
that all-reduce ÷ seconds of the whole step (the collective timed on its own, so it includes any
wait for the slower rank; sae_allreduce_alone_ms is the same payload with the ranks lined up by a
barrier). sae_speedup = 1 process's step on the whole batch ÷ 2 ranks' step; sae_ddp_compute_ms is
a rank's step less reduce_gradients_ (its share of forward and backward, and the optimiser step
that every rank repeats in full).

Cache stage (cache_activations of a random-init default-size model on random tokens, the ranks
writing disjoint shards of one store): cache_speedup = 1 process's time ÷ 2 ranks' (first start
to last end); cache_barrier_wait_fraction and cache_end_wait_fraction = rank-seconds spent at the
start barrier (while rank 0 creates the store) and at the end (rank 0 polling for the other rank's
shards; the others idle from their last shard until rank 0 has finalised) ÷ ranks × that time.

On a 2-core machine the ranks get 1 thread each and the 1 process both cores, so the work has
no more cores to go to: a speed-up near 1 is what to expect, and what the run shows is the overhead.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as sae_step.py recommends and the cache stage sets

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sae_step import near_dictionary, sparse_mixtures

from monosemantic.activations import Layout, cache_activations, store
from monosemantic.compute import Compute, setup
from monosemantic.model import Transformer, TransformerConfig
from monosemantic.model.hooks import capture
from monosemantic.sae.trainer import adam, train_step


@dataclass(frozen=True)
class Timed(Compute):
    """A Compute that logs (what, seconds) for its barriers and gradient reductions."""

    log: list = field(default_factory=list, compare=False)

    def barrier(self) -> None:
        t0 = time.perf_counter()
        super().barrier()
        self.log.append(("barrier", time.perf_counter() - t0))

    def reduce_gradients_(self, params, share, *terms):
        t0 = time.perf_counter()
        out = super().reduce_gradients_(params, share, *terms)
        self.log.append(("reduce_gradients", time.perf_counter() - t0))
        return out

    def seconds(self, what: str) -> float:
        return sum(s for w, s in self.log if w == what)


def timing(log: list, what: str, fn):
    """fn, logging the seconds of each call to it as `what`."""
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        log.append((what, time.perf_counter() - t0))
        return out
    return timed


def sae_part(c: Timed, args) -> dict:
    b, d, n = args.batch, args.d_in, args.d_sae
    gen = torch.Generator().manual_seed(0)
    dictionary = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)
    acts = sparse_mixtures(dictionary, max(b, 8192), args.mix, gen).half().float()
    sae = near_dictionary(dictionary, acts[:8192], args.threshold, gen)
    with torch.no_grad():
        c.broadcast_(list(sae.parameters()))  # rank 0's start everywhere, as train_sae does
    x, opt = acts[:b][c.part(b)], adam(sae, 1e-4)
    steps, comm, reduce = [], [], []
    for i in range(args.warmup + args.steps):
        c.log.clear()
        t0 = time.perf_counter()
        train_step(sae, opt, x, 0.004, c, len(x) / b)
        if i >= args.warmup:
            steps.append(time.perf_counter() - t0)
            comm.append(c.seconds("all_reduce"))
            reduce.append(c.seconds("reduce_gradients"))
    with torch.no_grad():
        l0 = (sae(x).f > 0).sum(-1).float().mean().item()
    out = {"step_s": np.mean(steps), "allreduce_s": np.mean(comm), "reduce_s": np.mean(reduce), "l0": l0,
           "rows": len(x), "threads": torch.get_num_threads()}
    if c.distributed:  # the same payload, both ranks lined up first: the wire alone
        flat = torch.zeros(sum(p.numel() for p in sae.parameters()) + 4 + n)  # + the step's loss terms, fired
        alone = []
        for _ in range(args.steps):
            Compute.barrier(c)
            t0 = time.perf_counter()
            Compute.sum_(c, flat)
            alone.append(time.perf_counter() - t0)
        out |= {"allreduce_alone_s": float(np.median(alone)), "payload_bytes": flat.numel() * 4}
    return out


def cache_part(c: Timed, args, out: Path) -> dict:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=4096, ctx=128)).eval()
    tokens = np.random.default_rng(0).integers(0, 4096, (args.seqs, 128), dtype=np.int32)
    d = capture(model, "mlp.act", torch.from_numpy(tokens[:64]).long()).shape[-1]  # and a warm-up
    Compute.barrier(c)  # not timed: the ranks enter the stage together
    c.log.clear()
    start = time.time()
    cache_activations(lambda t: capture(model, "mlp.act", t), tokens, np.arange(len(tokens)), out / "a.zarr", d,
                      Layout(128), 64, {"splits": {}}, "bench", compute=c)
    return {"start": start, "end": time.time(), "barrier_s": c.seconds("barrier"), "end_wait_s": c.seconds("end_wait"),
            "tokens": tokens.size, "shards": -(-args.seqs // Layout(128).shard_seqs)}


def worker(args) -> None:
    with setup(device="cpu", timeout_s=120) as plain:
        c = Timed(plain.device, plain.precision, plain.rank, plain.world_size, plain.local_rank)
        torch.distributed.all_reduce = timing(c.log, "all_reduce", torch.distributed.all_reduce)
        store._wait_for = timing(c.log, "end_wait", store._wait_for)
        result = {"sae": sae_part(c, args), "cache": cache_part(c, args, Path(args.out))}
    (Path(args.out) / f"rank{c.rank}.json").write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, out: Path, argv: list[str]) -> list[dict]:
    """Run the worker as `world` processes (torchrun for more than one); each rank's results."""
    out.mkdir()
    script = [str(Path(__file__).resolve()), "--worker", "--out", str(out), *argv]
    cmd = [sys.executable, *script] if world == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(world),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "--max-restarts", "0", *script]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit status {done.returncode}:\n{done.stderr[-4000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=512)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1024, help="global batch (params.yaml sae.train.batch_size)")
    ap.add_argument("--steps", type=int, default=20, help="timed SAE steps")
    ap.add_argument("--warmup", type=int, default=2, help="SAE steps before timing")
    ap.add_argument("--mix", type=int, default=12, help="dictionary features per input (as sae_step.py)")
    ap.add_argument("--threshold", type=float, default=0.4, help="encoder threshold (as sae_step.py)")
    ap.add_argument("--seqs", type=int, default=4096, help="sequences of 128 tokens to cache")
    ap.add_argument("--world", type=int, default=2, help="ranks to compare with 1 process")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.world < 2:
        ap.error("--world: at least 2 ranks (they are compared with 1 process)")

    argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "out", "world")]
    with tempfile.TemporaryDirectory() as tmp:
        one, = launch(1, Path(tmp) / "w1", argv)
        ranks = launch(args.world, Path(tmp) / f"w{args.world}", argv)

    sae = [r["sae"] for r in ranks]
    step = np.mean([s["step_s"] for s in sae])
    print(f"world_size={args.world}")
    print("backend=gloo")
    print(f"cpus={os.cpu_count()}")
    print(f"threads_one_process={one['sae']['threads']}")
    print(f"threads_per_rank={sae[0]['threads']}")
    print(f"omp_wait_policy={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"sae_shape=d_in{args.d_in}_d_sae{args.d_sae}_batch{args.batch}_fp32")
    print(f"sae_l0={one['sae']['l0']:.1f}")
    print(f"sae_one_process_step_ms={one['sae']['step_s'] * 1e3:.1f}")
    print(f"sae_ddp_step_ms={step * 1e3:.1f}")
    print(f"sae_speedup={one['sae']['step_s'] / step:.3f}")
    print(f"sae_ddp_compute_ms={np.mean([s['step_s'] - s['reduce_s'] for s in sae]) * 1e3:.1f}")
    print(f"sae_allreduce_ms={np.mean([s['allreduce_s'] for s in sae]) * 1e3:.1f}")
    print(f"sae_reduce_gradients_ms={np.mean([s['reduce_s'] for s in sae]) * 1e3:.1f}")
    print(f"sae_comm_fraction={np.mean([s['allreduce_s'] / s['step_s'] for s in sae]):.3f}")
    print(f"sae_reduce_gradients_fraction={np.mean([s['reduce_s'] / s['step_s'] for s in sae]):.3f}")
    print(f"sae_allreduce_payload_mb={sae[0]['payload_bytes'] / 2**20:.1f}")
    print(f"sae_allreduce_alone_ms={sae[0]['allreduce_alone_s'] * 1e3:.1f}")

    cache = [r["cache"] for r in ranks]
    wall = max(r["end"] for r in cache) - min(r["start"] for r in cache)
    end_wait = [cache[0]["end_wait_s"], *(max(0.0, cache[0]["end"] - r["end"]) for r in cache[1:])]
    one_s = one["cache"]["end"] - one["cache"]["start"]
    print(f"cache_tokens={one['cache']['tokens']}")
    print(f"cache_shards={one['cache']['shards']}")
    print(f"cache_one_process_s={one_s:.2f}")
    print(f"cache_ddp_s={wall:.2f}")
    print(f"cache_speedup={one_s / wall:.3f}")
    for r, (rank, wait) in enumerate(zip(cache, end_wait)):
        print(f"cache_rank{r}_barrier_wait_s={rank['barrier_s']:.2f}")
        print(f"cache_rank{r}_end_wait_s={wait:.2f}")
    print(f"cache_barrier_wait_fraction={sum(r['barrier_s'] for r in cache) / (len(cache) * wall):.3f}")
    print(f"cache_end_wait_fraction={sum(end_wait) / (len(cache) * wall):.3f}")


if __name__ == "__main__":
    main()
