"""cache_activations throughput next to the model's forward pass alone on the same batches,
and peak RSS at 1x and 2x the tokens (each in a fresh process). Prints name=value lines.

Targets: ratio >= 0.85 (storage is not the bottleneck); rss_ratio_2x_to_1x <= 1.10 (streaming).
Uses models/transformer and data/tokens.zarr when present (real activations compress like the
real thing); otherwise a randomly initialised default-size model and random tokens.

`--device cuda` / `--precision bf16|fp16`: the model runs there under autocast, exactly as the stage
calls it (tokens to the device from pinned memory, activations back to the host for the writer);
the forward-only pass is the same forward with its fp16 result left on the device (synchronised),
so the ratio charges the copy back and the storage to the cache. forward_to_host_tokens_per_s
(forward + copy to the host, no storage) shows which of the two costs more.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as stages/cache_activations.py runs; before torch loads

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from monosemantic.activations import Layout, cache_activations
from monosemantic.compute import DTYPES, Compute
from monosemantic.model import Transformer, TransformerConfig, load_model
from monosemantic.model.hooks import capture
from sae_step import device_or_exit, device_spec  # noqa: E402  (benchmarks/ is on sys.path)


def subject(model_dir: Path, n_seq: int):
    if (model_dir / "config.json").exists() and Path("data/tokens.zarr").exists():
        from monosemantic.tokens import read_tokens

        store = read_tokens("data/tokens.zarr")
        rows = store.split("train")
        reps = -(-n_seq // len(rows))
        return load_model(model_dir), np.concatenate([rows] * reps)[:n_seq], "trained"
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=4096, ctx=128)).eval()
    return model, np.random.default_rng(0).integers(0, 4096, (n_seq, 128), dtype=np.int32), "random-init"


def run_cache(model, tokens, out: Path, layout: Layout, batch_seqs: int, compute: Compute) -> dict:
    def acts(t: torch.Tensor) -> torch.Tensor:  # as stages/cache_activations.py calls the model
        with compute.autocast():
            return capture(model, "mlp.act", compute.to_device(t))

    d = acts(torch.from_numpy(tokens[:1]).long()).shape[-1]
    return cache_activations(acts, tokens, np.arange(len(tokens)), out, d, layout, batch_seqs, {"splits": {}},
                             "bench", compute=compute)


def peak_rss_child(args) -> None:
    """Entry point of the subprocess that measures peak RSS for one size."""
    import resource

    compute = Compute(device_or_exit(args.device, args.precision), args.precision)
    model, tokens, _ = subject(Path(args.model), args.seqs)
    with tempfile.TemporaryDirectory() as d:
        run_cache(model.to(compute.device), tokens, Path(d) / "a.zarr", Layout(128, compressor=args.compressor), 64,
                  compute)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, default=4096, help="sequences of 128 tokens")
    ap.add_argument("--model", default="models/transformer")
    ap.add_argument("--compressor", default="lz4", choices=["lz4", "zstd", "none"])
    ap.add_argument("--device", type=device_spec, default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    ap.add_argument("--precision", choices=sorted(DTYPES), default="fp32", help="autocast dtype; weights stay fp32")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        return peak_rss_child(args)
    compute = Compute(device_or_exit(args.device, args.precision), args.precision)
    on_host = compute.device.type == "cpu" and args.precision == "fp32"  # today's path, as the README quotes it

    model, tokens, kind = subject(Path(args.model), args.seqs)
    model = model.to(compute.device)
    layout, batch = Layout(128, compressor=args.compressor), 64

    def forward(to_host: bool = False) -> float:
        """Seconds for the model alone over all tokens, its activations cast to fp16 (left on the device)."""
        sync = torch.cuda.synchronize if compute.device.type == "cuda" else lambda: None
        sync()
        t0 = time.perf_counter()
        for i in range(0, len(tokens), batch):
            with compute.autocast():
                out = capture(model, "mlp.act", compute.to_device(torch.from_numpy(tokens[i : i + batch]).long())).half()
            if to_host:
                out.cpu()
        sync()
        return time.perf_counter() - t0

    with compute.autocast():
        capture(model, "mlp.act", compute.to_device(torch.from_numpy(tokens[:batch]).long()))  # warm-up
    forward_s = forward()
    to_host_s = forward(to_host=True) if compute.device.type == "cuda" else None
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        stats = run_cache(model, tokens, Path(d) / "a.zarr", layout, batch, compute)
        full = time.perf_counter() - t0
    n_tok = tokens.size
    print(f"model={kind}")
    if not on_host:
        print(f"device={compute.device}")
        print(f"precision={args.precision}")
        if compute.device.type == "cuda":
            print(f"gpu={torch.cuda.get_device_name(compute.device)}")
    print(f"compressor={args.compressor}")
    print(f"tokens={n_tok}")
    print(f"forward_only_tokens_per_s={n_tok / forward_s:.0f}")
    if to_host_s is not None:
        print(f"forward_to_host_tokens_per_s={n_tok / to_host_s:.0f}")
    print(f"cache_tokens_per_s={n_tok / full:.0f}")
    print(f"ratio={forward_s / full:.3f}")
    print(f"compression_ratio={stats['compression_ratio']:.3f}")

    rss = []
    for seqs in (args.seqs, 2 * args.seqs):
        out = subprocess.run([sys.executable, __file__, "--child", "--seqs", str(seqs), "--model", args.model,
                              "--compressor", args.compressor, "--device", args.device, "--precision", args.precision],
                             capture_output=True, text=True, check=True).stdout
        rss.append(json.loads(out.strip().splitlines()[-1])["peak_rss_mb"])
    print(f"peak_rss_mb_1x={rss[0]:.0f}")
    print(f"peak_rss_mb_2x={rss[1]:.0f}")
    print(f"rss_ratio_2x_to_1x={rss[1] / rss[0]:.3f}")


if __name__ == "__main__":
    main()
