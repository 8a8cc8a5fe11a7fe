"""cache_activations throughput next to the model's forward pass alone on the same batches,
and peak RSS at 1x and 2x the tokens (each in a fresh process). Prints name=value lines.

Targets: ratio >= 0.85 (storage is not the bottleneck); rss_ratio_2x_to_1x <= 1.10 (streaming).
Uses models/transformer and data/tokens.zarr when present (real activations compress like the
real thing); otherwise a randomly initialised default-size model and random tokens.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as stages/cache_activations.py runs; before torch loads

import argparse  # noqa: E402
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from monosemantic.activations import Layout, cache_activations
from monosemantic.model import Transformer, TransformerConfig, load_model
from monosemantic.model.hooks import capture


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


def run_cache(model, tokens, out: Path, layout: Layout, batch_seqs: int) -> dict:
    d = capture(model, "mlp.act", torch.from_numpy(tokens[:1]).long()).shape[-1]
    return cache_activations(lambda t: capture(model, "mlp.act", t), tokens, np.arange(len(tokens)), out, d,
                             layout, batch_seqs, {"splits": {}}, "bench")


def peak_rss_child(args) -> None:
    """Entry point of the subprocess that measures peak RSS for one size."""
    import resource

    model, tokens, _ = subject(Path(args.model), args.seqs)
    with tempfile.TemporaryDirectory() as d:
        run_cache(model, tokens, Path(d) / "a.zarr", Layout(128, compressor=args.compressor), 64)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, default=4096, help="sequences of 128 tokens")
    ap.add_argument("--model", default="models/transformer")
    ap.add_argument("--compressor", default="lz4", choices=["lz4", "zstd", "none"])
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        return peak_rss_child(args)

    model, tokens, kind = subject(Path(args.model), args.seqs)
    layout, batch = Layout(128, compressor=args.compressor), 64
    capture(model, "mlp.act", torch.from_numpy(tokens[:batch]).long())  # warm-up

    t0 = time.perf_counter()
    for i in range(0, len(tokens), batch):
        capture(model, "mlp.act", torch.from_numpy(tokens[i : i + batch]).long()).half()
    forward = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        stats = run_cache(model, tokens, Path(d) / "a.zarr", layout, batch)
        full = time.perf_counter() - t0
    n_tok = tokens.size
    print(f"model={kind}")
    print(f"compressor={args.compressor}")
    print(f"tokens={n_tok}")
    print(f"forward_only_tokens_per_s={n_tok / forward:.0f}")
    print(f"cache_tokens_per_s={n_tok / full:.0f}")
    print(f"ratio={forward / full:.3f}")
    print(f"compression_ratio={stats['compression_ratio']:.3f}")

    rss = []
    for seqs in (args.seqs, 2 * args.seqs):
        out = subprocess.run([sys.executable, __file__, "--child", "--seqs", str(seqs), "--model", args.model,
                              "--compressor", args.compressor],
                             capture_output=True, text=True, check=True).stdout
        rss.append(json.loads(out.strip().splitlines()[-1])["peak_rss_mb"])
    print(f"peak_rss_mb_1x={rss[0]:.0f}")
    print(f"peak_rss_mb_2x={rss[1]:.0f}")
    print(f"rss_ratio_2x_to_1x={rss[1] / rss[0]:.3f}")


if __name__ == "__main__":
    main()
