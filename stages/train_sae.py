"""train_sae@<architecture>-<size>: train one dictionary on the cached training activations."""

from dataclasses import asdict
from pathlib import Path

import torch

from monosemantic.activations import open_store
from monosemantic.activations.reader import batches, random_rows
from monosemantic.errors import UserError
from monosemantic.provenance import atomic_output, write_record
from monosemantic.resources import check_memory
from monosemantic.sae import build
from monosemantic.sae.export import save_sae
from monosemantic.sae.trainer import TrainConfig, train_sae
from stages._stage import run_stage, size_argument


def main(arg: str) -> None:
    with run_stage(f"train_sae@{arg}", "sae.train", also=("sae.{architecture}", "compute.precision"), dictionary=arg) as s:
        d, p = s.dictionary, s.section
        s.input("activations", "data/activations.zarr")
        store = open_store("data/activations.zarr")
        acts, keep, (start, stop) = store.acts, store.keep, store.splits["train"]
        check_memory(s.params, acts.shape[1])  # the real width, for a Hugging Face model too
        n_train = stop - start - store.excluded.get("train", 0)  # positions left out by activations.exclude
        if n_train < p.batch_size:
            raise UserError(f"{n_train} training activations cannot fill one batch of sae.train.batch_size={p.batch_size}")

        def global_batches(position: int):
            return batches(acts, start, stop, p.batch_size, p.seed, p.window_chunks, position, p.reader_lanes,
                           s.compute.rank, s.compute.world_size, keep)

        def sample_inputs(n: int, gen: torch.Generator) -> torch.Tensor:
            return random_rows(acts, start, stop, n, gen, keep)

        cfg, options = TrainConfig.from_params(s.params.sae, d.architecture), s.params.sae.options(d.architecture)
        torch.manual_seed(p.seed)
        sae = build(d.architecture, acts.shape[1], d.size, options).to(s.compute.device)
        # Every rank walks the same global batches: a checkpoint resumes on any number of ranks.
        checkpoint = Path(f"checkpoints/train_sae/{d.name}/checkpoint.pt")
        state = train_sae(sae, global_batches, sample_inputs, cfg, checkpoint,
                          s.fingerprint(d.name, asdict(cfg), options, s.compute.precision),
                          lambda step, m: s.run.log_metrics(m, step), s.compute)
        if not s.compute.is_main:
            return
        final = state.history[-1]
        metrics = {
            "dict_size": d.size,
            **{k: final[k] for k in ("loss", "mse", "penalty", "l0", "dead_features")},
            "resample_events": len(state.resampled), "resampled_neurons": sum(n for _, n in state.resampled),
            "tokens_seen": state.tokens, "tokens_per_second": final["tokens_per_second"],
        }
        out = Path(f"models/sae/{d.name}")
        meta = {"hook_name": store.group.attrs["hook"], "model_name": "models/transformer",
                "dataset_path": "data/activations.zarr", "context_size": store.group.attrs["ctx"]}
        with atomic_output(out) as tmp:
            save_sae(sae.cpu(), tmp, meta)
            write_record(tmp, s.record(dictionary=d.name, architecture=d.architecture, dict_size=d.size,
                                       resampling=state.resampled))
        s.plot(f"plots/sae/{d.name}/train.csv", state.history)
        s.metrics(f"metrics/sae/{d.name}/train.json", metrics)
        s.run.log_artifact(out)
        checkpoint.unlink(missing_ok=True)


if __name__ == "__main__":
    main(size_argument("train_sae"))
