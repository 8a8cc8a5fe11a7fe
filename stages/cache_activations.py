"""cache_activations: run the subject model over the tokens and store its hooked activations.

The store goes where activations.store says: data/activations.zarr, or an object-store URL. DVC
caches only what is in the workspace, so for a remote store data/activations.zarr holds its
manifest (the URL and each file's md5) and provenance.json instead: that is what DVC tracks and
what the stages after this one hash as their input.
"""

import os

# While torch's OpenMP threads wait for work they spin by default, taking the core the writer
# thread needs to compress the previous shard. Sleeping instead lifts the cache from 0.65 to 0.92
# of the forward pass alone on 2 cores (benchmarks/cache_throughput.py). OpenMP reads this when
# torch loads it, so it is set before any import of torch. It is not set for the other stages:
# SAE training measured no gain.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import numpy as np
import torch

from monosemantic import storage
from monosemantic.activations import Layout, cache_activations
from monosemantic.activations.exclude import exclusion
from monosemantic.errors import UserError
from monosemantic.provenance import atomic_output, write_record
from monosemantic.resources import check_memory
from monosemantic.model import load_model, model_config
from monosemantic.model.hooks import capture
from monosemantic.tokenizer import load_tokenizer, special_token_ids
from monosemantic.tokens import read_tokens
from stages._stage import run_stage

OUT = Path(storage.LOCAL_STORE)  # the store, or a remote store's manifest


def main() -> None:
    with run_stage("cache_activations", "activations", also=("model", "compute.precision")) as s:
        p, hook = s.section, s.params.model.hook
        s.input("tokens", "data/tokens.zarr")
        s.input("model", "models/transformer")
        s.input("tokenizer", "data/tokenizer.json")  # its special tokens, for activations.exclude
        store = read_tokens("data/tokens.zarr")
        model, compute = load_model("models/transformer").to(s.compute.device), s.compute
        n_train = min(store.n_train, p.max_train_tokens // store.ctx)
        n_eval = min(store.n_eval, p.max_eval_tokens // store.ctx)
        if n_train == 0 or n_eval == 0:
            raise UserError(
                f"activations.max_train_tokens and max_eval_tokens must each hold at least one "
                f"context of {store.ctx} tokens"
            )
        rows = np.concatenate([np.arange(n_train), store.n_train + np.arange(n_eval)])
        def acts(tokens: torch.Tensor) -> torch.Tensor:
            with compute.autocast():
                return capture(model, hook, compute.to_device(tokens))  # the cache takes it off the device

        d = acts(torch.from_numpy(store.tokens[:1]).long()).shape[-1]
        check_memory(s.params, d)  # the real width, for a Hugging Face model too
        train_tokens = n_train * store.ctx
        attrs = {
            "hook": hook,
            "ctx": store.ctx,
            "model_config": model_config("models/transformer"),
            "splits": {"train": [0, train_tokens], "eval": [train_tokens, len(rows) * store.ctx]},
            "provenance": s.record(hook=hook),
        }
        layout = Layout(store.ctx, p.chunk_seqs, p.shard_chunks, p.compressor, p.clevel, p.dtype)
        e = p.exclude
        exclude = exclusion(e.special_tokens, e.norm_factor, e.median_tokens, s.params.model.source,
                            special_token_ids(load_tokenizer("data/tokenizer.json")))
        target = storage.location(p.store)
        stats = cache_activations(acts, store.tokens, rows, target, d, layout, p.batch_seqs, attrs,
                                  s.fingerprint(hook, compute.precision), compute=compute, exclude=exclude)
        if not compute.is_main:
            return
        stats.pop("complete")
        manifest = stats.pop("manifest", None)
        if target.remote:
            with atomic_output(OUT) as tmp:
                storage.write_manifest(tmp, target, manifest)
                write_record(tmp, {**attrs["provenance"], "store": target.url})
            print(f"cache_activations: {target.url} written; its manifest is {OUT / storage.MANIFEST}")
        s.metrics("metrics/activations.json", stats)
        x = stats["excluded"]
        print(f"cache_activations: {x['tokens']:,} of {stats['tokens']:,} positions left out of SAE training, "
              f"evaluation and interpretation ({x['special_tokens']:,} special tokens, {x['norm_outliers']:,} "
              "norm outliers)")


if __name__ == "__main__":
    main()
