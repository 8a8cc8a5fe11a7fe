"""interpret@<size> with the baseline backend on a pipeline's real outputs, timed by phase, next
to the floor of one plain pass (read the scanned rows and encode every feature). Prints
name=value lines.

Target: the default run's interpret@standard-2048 (200 features + all 512 neurons, 500k tokens) in under
120 s on 2 cores; `scan_to_floor` says how far the two passes are from a single bare one.
Run from a repo where `dvc repro` has produced data/ and models/ (the default params).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from monosemantic.activations import open_store
from monosemantic.interpret import Baseline, detector, interpret_dictionary
from monosemantic.interpret.dictionary import Result
from monosemantic.model import load_model
from monosemantic.params import load_params
from monosemantic.sae.export import load_sae
from monosemantic.tokenizer import load_tokenizer, token_strings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dictionary", default="standard-2048", help="<architecture>-<size>")
    args = ap.parse_args()
    if not Path(f"models/sae/{args.dictionary}").exists():
        sys.exit(f"models/sae/{args.dictionary} not found: run `dvc repro train_sae@{args.dictionary}` first")
    p = load_params().interpret
    store, sae, model = open_store("data/activations.zarr"), load_sae(f"models/sae/{args.dictionary}"), load_model("models/transformer")
    tok = load_tokenizer("data/tokenizer.json")
    strings = token_strings(tok)
    ctx, (t0, t1) = store.group.attrs["ctx"], store.splits["train"]
    n = min(t1 - t0, p.max_tokens) // ctx * ctx
    tokens = np.asarray(store.group["tokens"][t0 : t0 + n])

    start = time.perf_counter()
    with torch.no_grad():
        for r in range(0, n, p.batch_tokens):
            sae.encode(torch.from_numpy(np.asarray(store.acts[t0 + r : t0 + min(r + p.batch_tokens, n)], np.float32)))
    floor = time.perf_counter() - start

    start = time.perf_counter()
    result: Result = interpret_dictionary(store.acts, t0, tokens, ctx, sae, model, strings,
                                          {q.name: detector(q) for q in p.proxies}, Baseline(strings), p)
    total = time.perf_counter() - start
    m = result.metrics
    print(f"tokens={n}")
    print(f"units_interpreted={m['features']['interpreted'] + m['neurons']['interpreted']}")
    print(f"features_interpreted={m['features']['interpreted']}")
    print(f"floor_one_pass_s={floor:.1f}")
    print(f"interpret_s={total:.1f}")
    print(f"scan_to_floor={total / floor:.2f}")
    print(f"features_mean_pearson={m['features'].get('mean_pearson', float('nan')):.3f}")
    print(f"neurons_mean_pearson={m['neurons'].get('mean_pearson', float('nan')):.3f}")
    print(f"target_met={total < 120}")


if __name__ == "__main__":
    main()
