"""interpret@<architecture>-<size>: explain a sample of one dictionary's features and every MLP neuron, and score them.

The features the report names get explained too: each proxy's best (found in the scan), and the members
of the largest splitting families, read from compare's reports/splitting/families/<architecture>.json (that
file alone: another architecture's dictionaries, added or retrained, leave this stage's outputs standing),
so that each one the report names has a page.
"""

from pathlib import Path

import numpy as np

from monosemantic.activations import open_store
from monosemantic.errors import UserError
from monosemantic.evaluation import splitting
from monosemantic.interpret import Baseline, ChatClient, LLMBackend, api_key, detector, interpret_dictionary
from monosemantic.model import load_model
from monosemantic.params import dictionary_name
from monosemantic.provenance import atomic_output, read_json, write_record
from monosemantic.sae.export import load_sae
from monosemantic.tokenizer import load_tokenizer, token_strings
from stages._stage import require_current, run_stage, size_argument


def main(arg: str) -> None:
    with run_stage(f"interpret@{arg}", "interpret", also=("sae.dict_sizes", "compute.precision"), dictionary=arg) as s:
        p, name, size = s.section, s.dictionary.name, s.dictionary.size
        key = api_key(p.openai) if p.backend == "openai" else None  # fail before any work
        proxies = {proxy.name: detector(proxy) for proxy in p.proxies}
        for what, path in (("activations", "data/activations.zarr"), ("tokenizer", "data/tokenizer.json"),
                            ("model", "models/transformer"), ("sae", f"models/sae/{name}")):
            s.input(what, path)
        store, model, sae = open_store("data/activations.zarr"), load_model("models/transformer"), load_sae(f"models/sae/{name}")
        named = {f: "splitting" for f in _split_features(s)}
        tok = load_tokenizer("data/tokenizer.json")
        strings = token_strings(tok)
        if sae.d_in != store.acts.shape[1]:
            raise UserError(f"models/sae/{name} reads {sae.d_in}-dim activations but the store holds "
                            f"{store.acts.shape[1]}: re-run train_sae@{name}")
        ctx = store.group.attrs["ctx"]
        t0, t1 = store.splits["train"]
        n = min(t1 - t0, p.max_tokens) // ctx * ctx
        if n == 0:
            raise UserError(f"interpret.max_tokens={p.max_tokens} is less than one context of {ctx} tokens")
        tokens = np.asarray(store.group["tokens"][t0 : t0 + n])
        backend = (Baseline(strings) if p.backend == "baseline"
                   else LLMBackend(ChatClient(p.openai, key), strings))
        separator = tok.token_to_id(s.params.tokenizer.separator)  # documents end here: the explainer / held-out split
        keep = None if store.keep is None else np.asarray(store.keep[t0 : t0 + n])  # activations.exclude
        result = interpret_dictionary(store.acts, t0, tokens, ctx, sae, model, strings, proxies, backend, p, s.compute,
                                      separator=separator, named=named, keep=keep)
        out = Path(f"reports/features/{name}")
        with atomic_output(out) as tmp:
            result.features.write_parquet(tmp / "features.parquet")
            result.examples.write_parquet(tmp / "examples.parquet")
            result.proxies.write_parquet(tmp / "proxies.parquet")
            write_record(tmp, s.record(dictionary=name, dict_size=size, n_tokens=n))
        s.metrics(f"metrics/sae/{name}/interp.json", {"dict_size": size, **result.metrics,
                                                       "n_excluded_tokens": 0 if keep is None else int((~keep).sum())})
        s.run.log_artifact(out / "features.parquet")
        f, n_ = result.metrics["features"], result.metrics["neurons"]
        print(f"interpret@{name}: features {f.get('mean_pearson', float('nan')):.3f} vs neurons "
              f"{n_.get('mean_pearson', float('nan')):.3f} mean Pearson (control {f.get('control_mean_pearson')})")


def _split_features(s) -> set[int]:
    """This dictionary's features in the splitting families compare reports (its top_families that split),
    checked to come from today's decoders of every size of the architecture, which are recorded as inputs."""
    arch, size = s.dictionary.architecture, s.dictionary.size
    path = Path(f"reports/splitting/families/{arch}.json")
    if not path.exists():
        raise UserError(f"{path} is missing: run compare first (`dvc repro compare`)")
    for other in sorted(s.params.sae.dict_sizes):
        decoders = f"models/sae/{dictionary_name(arch, other)}"
        digest = s.inputs["sae"]["md5"] if other == size else s.input(f"sae_{other}", decoders)  # hashed once
        require_current(path.parent.parent, decoders, "compare", digest)
    return splitting.members(read_json(path)["families"]).get(size, set())


if __name__ == "__main__":
    main(size_argument("interpret"))
