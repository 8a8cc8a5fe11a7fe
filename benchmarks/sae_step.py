"""One SAE training step next to the dense matmul rate of the same shapes, measured in this run;
then the whole trainer fed by the Zarr reader next to the step alone. Prints name=value lines.

ratio_to_peak = 6·d_in·d_sae·tokens/s ÷ the best matmul FLOP/s among the step's three
GEMM shapes (target >= 0.7); trainer_to_step = trainer tokens/s ÷ step-only tokens/s (>= 0.9).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from monosemantic.activations.reader import ShuffledReader
from monosemantic.sae.model import SparseAutoencoder
from monosemantic.sae.trainer import TrainConfig, train_sae, train_step


def timed(fn, repeats):
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=512)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    b, d, n = args.batch, args.d_in, args.d_sae
    torch.manual_seed(0)

    x, w_enc, w_dec = torch.randn(b, d), torch.randn(d, n), torch.randn(n, d)
    f = torch.relu(torch.randn(b, n))
    shapes = {"x@W_enc": lambda: x @ w_enc, "f@W_dec": lambda: f @ w_dec, "f.T@x": lambda: f.T @ x}
    peak = max(2 * b * d * n / timed(fn, args.steps) for fn in shapes.values())

    sae = SparseAutoencoder(d, n)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    data = torch.relu(torch.randn(b, d)) * 0.3
    step_s = timed(lambda: train_step(sae, opt, data, 0.004), args.steps)
    step_tok = b / step_s

    with tempfile.TemporaryDirectory() as tmp:
        rows = b * (args.steps + 4)
        acts = zarr.create_array(Path(tmp) / "a.zarr", shape=(rows, d), chunks=(2048, d), dtype="float16")
        acts[:] = (torch.relu(torch.randn(rows, d)) * 0.3).half().numpy()

        def batches(position):
            return iter(ShuffledReader(acts, 0, rows, b, seed=0, window_chunks=16, position=position))

        def sample_inputs(k, g):
            return torch.from_numpy(acts[: min(k, rows)].astype(np.float32))

        cfg = TrainConfig(steps=args.steps + 2, l1_coefficient=0.004, batch_size=b, log_every=10**9)
        train_sae(SparseAutoencoder(d, n), batches, sample_inputs, cfg)  # warm-up (and page cache)
        state = train_sae(SparseAutoencoder(d, n), batches, sample_inputs, cfg)
        trainer_tok = state.history[-1]["tokens_per_second"]  # steady state: b_dec's init excluded

    print(f"shape=d_in{d}_d_sae{n}_batch{b}_fp32")
    print(f"threads={torch.get_num_threads()}")
    print(f"matmul_peak_gflops={peak / 1e9:.1f}")
    print(f"step_tokens_per_s={step_tok:.0f}")
    print(f"step_gflops={6 * d * n * step_tok / 1e9:.1f}")
    print(f"ratio_to_peak={6 * d * n * step_tok / peak:.3f}")
    print(f"trainer_tokens_per_s={trainer_tok:.0f}")
    print(f"trainer_to_step={trainer_tok / step_tok:.3f}")


if __name__ == "__main__":
    main()
