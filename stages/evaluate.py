"""evaluate@<architecture>-<size>: the paper's metrics for one dictionary, on held-out contexts."""


import numpy as np
import torch

from monosemantic.activations import open_store
from monosemantic.activations.reader import random_rows
from monosemantic.errors import UserError
from monosemantic.evaluation import evaluate_sae
from monosemantic.model import load_model
from monosemantic.sae.export import load_sae
from stages._stage import run_stage, size_argument


def main(arg: str) -> None:
    with run_stage(f"evaluate@{arg}", "evaluate", also=("compute.precision",), dictionary=arg) as s:
        name, size, p = s.dictionary.name, s.dictionary.size, s.section
        for key, path in (("activations", "data/activations.zarr"), ("model", "models/transformer"),
                           ("sae", f"models/sae/{name}")):
            s.input(key, path)
        store, model, sae = open_store("data/activations.zarr"), load_model("models/transformer"), load_sae(f"models/sae/{name}")
        if sae.d_in != store.acts.shape[1]:
            raise UserError(f"models/sae/{name} reads {sae.d_in}-dim activations but the store holds "
                            f"{store.acts.shape[1]}: re-run train_sae@{name}")
        ctx, hook = store.group.attrs["ctx"], store.group.attrs["hook"]
        (start, stop), (t0, t1) = store.splits["eval"], store.splits["train"]
        n_seq = min(stop - start, p.max_tokens) // ctx
        if n_seq == 0:
            raise UserError(f"evaluate.max_tokens={p.max_tokens} is less than one context of {ctx} tokens")
        # The cache holds eval contexts whole and in order, so its token ids rebuild them.
        contexts = np.asarray(store.group["tokens"][start : start + n_seq * ctx]).reshape(n_seq, ctx)
        keep = None if store.keep is None else np.asarray(store.keep[start : start + n_seq * ctx]).reshape(n_seq, ctx)
        if keep is not None and not keep.any():
            raise UserError(f"activations.exclude left out every one of the {n_seq * ctx} evaluated positions: "
                            "relax it (or raise evaluate.max_tokens)")
        mean = random_rows(store.acts, t0, t1, p.mean_ablation_samples, torch.Generator().manual_seed(p.seed),
                           store.keep).mean(0)
        device = s.compute.device
        metrics, histogram = evaluate_sae(model.to(device), hook, sae.to(device), contexts, mean, p.batch_seqs,
                                          p.ultralow_density, p.dense_density, p.histogram_bins, s.compute, keep)
        s.plot(f"plots/density/{name}.csv", histogram)
        s.metrics(f"metrics/sae/{name}/eval.json", {"dict_size": size, **metrics})


if __name__ == "__main__":
    main(size_argument("evaluate"))
