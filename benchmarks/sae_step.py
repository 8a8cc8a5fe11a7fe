"""One SAE training step of each architecture next to the dense matmul rate of the same shapes and
dtype, measured in this run; then the whole trainer fed by the Zarr reader next to the step alone.
Prints name=value lines, `<architecture>.<name>` for each (--arch picks some; default all).

CPU, fp32 (the hand-written sparse step): ratio_to_peak = 6·d_in·d_sae·tokens/s ÷ the best matmul
FLOP/s among the step's three GEMM shapes (target >= 0.7); trainer_to_step = trainer tokens/s ÷
step-only tokens/s (>= 0.9).

The step runs at a trained dictionary's sparsity, not a random init's (which fires half the
features): inputs are sparse non-negative mixtures of a known dictionary (`--mix` features each)
and the SAE starts next to it (after its own data-dependent init: decoder ≈ the dictionary,
encoder its transpose, a threshold `--threshold` in b_enc), so f fires on about 1% of the features;
TopK-family dictionaries fire on their k (l0 and density are printed; the trainer's l0 too). The 6·d_in·d_sae FLOPs per token are a fixed yardstick (a dense step does five
GEMMs, 10·d_in·d_sae, so it stays below 0.6); the step computes its decoder and backward from f's
nonzeros, so the ratio credits work it skips. dense_ratio_to_peak: the same step forced dense.

`--device cuda` (or bf16 on CPU): the model's dense autograd path, under autocast for bf16/fp16,
timed with CUDA events after synchronising; the peak is the same three shapes in the same dtype
on the same device. There the five GEMMs are really executed, so ratio_to_peak counts them:
10·d_in·d_sae·tokens/s ÷ peak (target >= 0.6 on a GPU; flops_per_token is printed).
"""

import argparse
import copy
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from monosemantic.activations import Layout
from monosemantic.activations.reader import ShuffledReader
from monosemantic.activations.store import VerifiedArray
from monosemantic.compute import DTYPES, Compute, resolve_device
from monosemantic.errors import UserError
from monosemantic import params as schema
from monosemantic.sae import ARCHITECTURES, build
from monosemantic.sae.model import Dictionary
from monosemantic.sae.trainer import TrainConfig, adam, train_sae, train_step

SECTIONS = {"standard": schema.StandardParams(l1_coefficient=0.004), "standard_2024": schema.Standard2024Params(),
            "topk": schema.TopKParams(), "batchtopk": schema.BatchTopKParams(), "jumprelu": schema.JumpReLUParams(),
            "matryoshka": schema.MatryoshkaParams()}


def device_spec(spec: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec):
        raise argparse.ArgumentTypeError(f"{spec!r} is not auto, cpu, cuda or cuda:N")
    return spec


def device_or_exit(spec: str, precision: str) -> torch.device:
    """--device as a torch.device, or one line on stderr and exit status 2 if this machine lacks it."""
    try:
        device = resolve_device(spec, precision, where="--")
    except UserError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def timed(fn, repeats, device=None):
    """Seconds per call of fn. On CUDA: after warm-up and a synchronise, between two events on the
    stream, so queued work is counted to its end (and gaps while the GPU waits for launches too)."""
    if device is None or device.type != "cuda":
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def matmul_peak(b: int, d: int, n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """The best FLOP/s among the step's three GEMM shapes, in `dtype` on `device`."""
    x, w_enc, w_dec = (torch.randn(s, device=device).to(dtype) for s in ((b, d), (d, n), (n, d)))
    f = torch.relu(torch.randn(b, n, device=device)).to(dtype)
    shapes = {"x@W_enc": lambda: x @ w_enc, "f@W_dec": lambda: f @ w_dec, "f.T@x": lambda: f.T @ x}
    return max(2 * b * d * n / timed(fn, repeats, device) for fn in shapes.values())


def sparse_mixtures(dictionary: torch.Tensor, rows: int, mix: int, gen: torch.Generator) -> torch.Tensor:
    """Each row: the sum of `mix` random dictionary rows with coefficients in [0.5, 1.5)."""
    idx = torch.randint(len(dictionary), (rows, mix), generator=gen)
    coeffs = torch.rand(rows, mix, generator=gen) + 0.5
    return torch.nn.functional.embedding_bag(idx, dictionary, per_sample_weights=coeffs, mode="sum")


@torch.no_grad()
def near_dictionary(architecture: str, dictionary: torch.Tensor, inputs: torch.Tensor, threshold: float,
                    gen: torch.Generator) -> Dictionary:
    """A dictionary where training would take it: its own init on `inputs` (b_dec, input scale), then
    decoder ≈ the dictionary, encoder its transpose, b_enc such that feature i fires when
    x·W_enc[:, i] > threshold (in the units the architecture trains in)."""
    options = SECTIONS[architecture].model_dump(exclude={"lr", "resample", "resample_steps", "resample_inputs"})
    sae = build(architecture, dictionary.shape[1], len(dictionary), options)
    sae.initialize(inputs)
    sae.W_dec.copy_(torch.nn.functional.normalize(dictionary + 0.02 * torch.randn(dictionary.shape, generator=gen), dim=1))
    sae.W_enc.copy_(sae.W_dec.T)
    if sae.sae_lens_state()[0]["apply_b_dec_to_input"]:  # the encoder sees x − b_dec
        sae.b_enc.copy_(sae.b_dec @ sae.W_enc - threshold)
    else:  # it sees s·x (Anthropic 2024, JumpReLU)
        sae.b_enc.fill_(-threshold * float(sae.input_scale))
    return sae


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=512)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 on CPU, 50 on CUDA)")
    ap.add_argument("--mix", type=int, default=12, help="dictionary features per input")
    ap.add_argument("--threshold", type=float, default=0.4, help="encoder threshold of the starting SAE")
    ap.add_argument("--device", type=device_spec, default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    ap.add_argument("--precision", choices=sorted(DTYPES), default="fp32", help="autocast dtype; weights stay fp32")
    ap.add_argument("--arch", nargs="+", choices=sorted(ARCHITECTURES), default=list(ARCHITECTURES),
                    help="architectures to time (default: all)")
    args = ap.parse_args()
    device = device_or_exit(args.device, args.precision)
    compute = Compute(device, args.precision)
    sparse_path = device.type == "cpu" and args.precision == "fp32"  # the hand-written step; else autograd, dense
    steps = args.steps or (50 if device.type == "cuda" else 10)
    b, d, n = args.batch, args.d_in, args.d_sae
    torch.manual_seed(0)

    peak = matmul_peak(b, d, n, compute.dtype, device, steps)

    gen = torch.Generator().manual_seed(0)
    dictionary = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)
    rows = b * (steps + 4)
    acts = sparse_mixtures(dictionary, rows, args.mix, gen).half().float()  # what the store will hold
    data = acts[:b].to(device)
    flops_per_token = 6 * d * n if sparse_path else 10 * d * n  # yardstick; or the five GEMMs executed
    print(f"shape=d_in{d}_d_sae{n}_batch{b}_{args.precision}")
    if not sparse_path:
        print(f"device={device}")
        if device.type == "cuda":
            print(f"gpu={torch.cuda.get_device_name(device)}")
        print(f"flops_per_token={flops_per_token}")
    print(f"threads={torch.get_num_threads()}")
    print(f"omp_wait_policy={os.environ.get('OMP_WAIT_POLICY', 'unset')}")  # PASSIVE: far faster on busy cores
    print(f"matmul_peak_gflops={peak / 1e9:.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        # As the cache writes it (activations.* defaults: 2048-row chunks of lz4, crc32c, 16 to a shard),
        # read as the stage reads it (every chunk's checksum and values checked).
        path, codecs = Path(tmp) / "a.zarr", Layout(ctx=128).codecs()
        array = zarr.create_array(path, shape=(rows, d), chunks=(2048, d), shards=(16 * 2048, d), dtype="float16",
                                  compressors=codecs)
        array[:] = acts.half().numpy()
        store = VerifiedArray(array, path, "acts")

        def batches(position):
            return iter(ShuffledReader(store, 0, rows, b, seed=0, window_chunks=16, position=position))

        def sample_inputs(k, g):
            return torch.from_numpy(store[: min(k, rows)].astype(np.float32))

        for arch in args.arch:
            sae = near_dictionary(arch, dictionary, acts[:32_768], args.threshold, gen).to(device)

            def step_rate(sparse_below):
                """train_step's tokens/s on `data`, starting from `sae`; the L0 where it ends."""
                stepped = copy.deepcopy(sae)
                stepped.sparse_below, opt = sparse_below, adam(stepped, 1e-4)
                tokens_per_s = b / timed(lambda: train_step(stepped, opt, data, stepped.coefficient, compute),
                                         steps, device)
                with torch.no_grad(), compute.autocast():
                    return tokens_per_s, (stepped(data).f > 0).sum(-1).float().mean().item()

            step_tok, l0 = step_rate(sae.sparse_below)
            cfg = TrainConfig(steps=steps + 2, batch_size=b, log_every=10**9)
            train_sae(copy.deepcopy(sae), batches, sample_inputs, cfg, compute=compute)  # warm-up (and page cache)
            state = train_sae(copy.deepcopy(sae), batches, sample_inputs, cfg, compute=compute)
            trainer_tok = state.history[-1]["tokens_per_second"]  # steady state: the init excluded
            out = {"l0": f"{l0:.1f}", "density": f"{l0 / n:.4f}", "trainer_l0": f"{state.history[-1]['l0']:.1f}",
                   "step_tokens_per_s": f"{step_tok:.0f}", "step_gflops": f"{flops_per_token * step_tok / 1e9:.1f}",
                   "ratio_to_peak": f"{flops_per_token * step_tok / peak:.3f}"}
            if sparse_path and arch == "standard":  # the same step with every product dense
                dense_tok, _ = step_rate(0.0)
                out |= {"dense_step_tokens_per_s": f"{dense_tok:.0f}",
                        "dense_ratio_to_peak": f"{6 * d * n * dense_tok / peak:.3f}"}
            out |= {"trainer_tokens_per_s": f"{trainer_tok:.0f}", "trainer_to_step": f"{trainer_tok / step_tok:.3f}"}
            for key, value in out.items():
                print(f"{arch}.{key}={value}", flush=True)


if __name__ == "__main__":
    main()
