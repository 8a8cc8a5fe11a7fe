"""launch: run a stage as params.yaml's `compute` section asks, in this process or under torchrun.

    python -m stages.launch train_sae 4096

One process (`compute.nnodes` and `compute.nproc_per_node` both 1) runs the stage right here,
exactly as `python -m stages.train_sae 4096` would. Otherwise the same params become

    torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint HOST:PORT \
             --rdzv-id train_sae@4096 --max-restarts 0 -m stages.train_sae 4096

which is printed, then run. On every other node of a multi-node run, start the same command
(same workspace on a shared filesystem, same params.yaml): torchrun's rendezvous makes them one
process group. Params, and the MLflow server when MLFLOW_TRACKING_URI names one, are checked here
first, as are the stage's name and whether each local rank gets a GPU of its own (`cuda`), so a bad
value or a server that does not answer stops with exit status 2 before any process starts; a worker
that dies ends the stage naming its rank.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

from monosemantic import tracking
from monosemantic.compute import resolve_device
from monosemantic.errors import UserError
from monosemantic.params import load_params

USAGE = "usage: python -m stages.launch <stage> [args...]"
STAGES = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem not in {"__init__", "_stage", "launch"})


def check_processes(compute, device: torch.device) -> None:
    """One GPU per local rank, as compute.setup assigns them: two ranks on one GPU would pass every
    check here and then fail in NCCL, once per rank, after torchrun has started them all."""
    n = compute.nproc_per_node
    if device.type != "cuda" or n == 1:
        return
    if device.index is not None:
        raise UserError(f"compute.device is {compute.device!r} but compute.nproc_per_node is {n}: every local rank "
                        "would use that one GPU, which NCCL refuses; use compute.device cuda (one GPU per local "
                        "rank), or compute.nproc_per_node 1")
    if n > (count := torch.cuda.device_count()):
        raise UserError(f"compute.nproc_per_node is {n} but this node has {count} CUDA device(s) visible, and each "
                        f"local rank needs its own; set compute.nproc_per_node to at most {count} (more nodes: "
                        "compute.nnodes), or compute.device cpu")


def torchrun_args(stage: str, args: list[str], compute) -> list[str]:
    nodes = (["--standalone"] if compute.nnodes == 1 else
             ["--rdzv-backend", "c10d", "--rdzv-endpoint", compute.rdzv_endpoint, "--rdzv-id", "@".join([stage, *args])])
    return ["--nnodes", str(compute.nnodes), "--nproc-per-node", str(compute.nproc_per_node), *nodes,
            "--max-restarts", "0", "--monitor-interval", "1", "-m", f"stages.{stage}", *args]


def main(argv: list[str]) -> int:
    if not argv:
        sys.exit(USAGE)
    stage, args = argv[0], argv[1:]
    if stage not in STAGES:  # else runpy's ImportError, or one per rank under torchrun
        print(f"{USAGE}\nerror: no stage {stage!r}; the stages are {', '.join(STAGES)}", file=sys.stderr)
        return 2
    try:
        compute = load_params().compute
        check_processes(compute, resolve_device(compute.device, compute.precision))  # before any process starts
        if compute.nnodes * compute.nproc_per_node > 1:
            tracking.check()  # (in one process, the stage's own run_stage checks)
    except UserError as e:
        print(f"error in stage {'@'.join([stage, *args])}: {e}", file=sys.stderr)
        return 2
    if compute.nnodes * compute.nproc_per_node == 1:
        sys.argv = [f"stages.{stage}", *args]
        runpy.run_module(f"stages.{stage}", run_name="__main__", alter_sys=True)
        return 0
    cmd = torchrun_args(stage, args, compute)
    print("launching: torchrun " + " ".join(cmd), flush=True)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(cmd)
    except ChildFailedError as e:
        codes = {f.exitcode for f in e.failures.values()}
        for rank, failure in sorted(e.failures.items()):
            how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit status {failure.exitcode}"
            print(f"error in stage {'@'.join([stage, *args])}: rank {rank} (local rank {failure.local_rank}) "
                  f"ended with {how}; the other ranks were stopped. Re-run to resume from the last checkpoint",
                  file=sys.stderr)
        return 2 if codes == {2} else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
