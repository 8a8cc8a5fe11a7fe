"""universality@<size>: a second subject model that differs only in its seed, its own dictionary of
<size> features, and how well the two models' features (and neurons) match.

Model B is trained as train_model would train it with model.seed = universality.seed (the seed
sets both the initialisation and the batch order); its activations on model A's training
contexts go to a temporary store, and SAE B is trained on them with the same sae.train as
SAE A, its seed included (the paper's B/1 is a run of its own; here the dictionaries differ
only through the models). Everything heavy is resumable under checkpoints/universality/<size>/.
"""

import shutil
from pathlib import Path

import numpy as np
import torch

from monosemantic.activations import ActivationStore, Layout, VerifiedArray, cache_activations, open_store
from monosemantic.activations.reader import batches, random_rows
from monosemantic.errors import UserError
from monosemantic.evaluation.universality import histogram, match_table, universality
from monosemantic.model import Transformer, load_model, save_model
from monosemantic.model.hooks import capture
from monosemantic.model.train import evaluate_loss, train_model
from monosemantic.params import ModelParams
from monosemantic.provenance import atomic_output, write_record
from monosemantic.sae.export import load_sae, save_sae
from monosemantic.sae.standard import Standard
from monosemantic.sae.trainer import State, TrainConfig, train_sae
from monosemantic.tokens import TokenStore, read_tokens
from stages._stage import Stage, run_stage, size_argument


def main(arg: str) -> None:
    with run_stage(f"universality@{arg}", "universality", also=("model", "activations", "sae.train", "sae.standard",
                                                                      "compute.precision")) as s:
        u = s.section
        size = s.dict_size(arg, "universality.dict_sizes")
        for name, path in (("tokens", "data/tokens.zarr"), ("activations", "data/activations.zarr"),
                           ("model", "models/transformer"), ("sae", f"models/sae/standard-{size}")):
            s.input(name, path)
        tokens, acts = read_tokens("data/tokens.zarr"), open_store("data/activations.zarr")
        model_a, sae_a = load_model("models/transformer"), load_sae(f"models/sae/standard-{size}")
        n_seq = min(tokens.n_eval, u.max_tokens // tokens.ctx)
        if n_seq == 0:
            raise UserError(f"universality.max_tokens={u.max_tokens} is less than one context of {tokens.ctx} tokens")
        if sae_a.d_in != acts.acts.shape[1]:
            raise UserError(f"models/sae/standard-{size} reads {sae_a.d_in}-dim activations but the store holds "
                            f"{acts.acts.shape[1]}: re-run train_sae@standard-{size}")
        work = Path(f"checkpoints/universality/{size}")

        model_b, fingerprint = _train_model_b(s, model_a, tokens, work)
        acts_b, fingerprint = _cache_activations_b(s, model_b, tokens, acts, work, fingerprint)
        # SAE B trains on the positions SAE A trained on: model B's rows are A's training rows, in order.
        t0, t1 = acts.splits["train"]
        keep = None if acts.keep is None else np.asarray(acts.keep[t0:t1])
        sae_b, state = _train_sae_b(s, acts_b, size, work, fingerprint, keep)

        # Held-out contexts (the paper does not say which tokens it correlates on).
        contexts = tokens.tokens[tokens.n_train : tokens.n_train + n_seq]
        hook = s.params.model.hook
        matches = universality(model_a, model_b, sae_a, sae_b, hook, contexts, s.params.activations.batch_seqs)
        f, n = matches["features"].summary(), matches["neurons"].summary()
        eval_rows = tokens.split("eval")[: max(1, s.params.model.eval_tokens // tokens.ctx)]  # train_model's rows
        final = state.history[-1]
        metrics = {
            "dict_size": size, "n_tokens": n_seq * tokens.ctx,
            "feature_median": f["median"], "feature_mean": f["mean"],
            "features_compared": f["compared"], "features_excluded_dead": f["excluded_dead"],
            "neuron_median": n["median"], "neuron_mean": n["mean"],
            "neurons_compared": n["compared"], "neurons_excluded_dead": n["excluded_dead"],
            "model_a_eval_loss": evaluate_loss(model_a, eval_rows),
            "model_b_eval_loss": evaluate_loss(model_b, eval_rows),
            "model_a_seed": s.params.model.seed, "model_b_seed": u.seed,
            "sae_b_mse": final["mse"], "sae_b_l0": final["l0"], "sae_b_dead_features": final["dead_features"],
        }
        out = Path(f"models/universality/{size}")
        with atomic_output(out) as tmp:
            save_model(model_b, tmp / "model")
            save_sae(sae_b, tmp / "sae", {"hook_name": hook, "model_name": f"{out}/model",
                                          "dataset_path": "data/tokens.zarr", "context_size": tokens.ctx})
            match_table(matches).write_parquet(tmp / "matches.parquet")
            write_record(tmp, s.record(dict_size=size, resampling=state.resampled))
        rows = histogram(matches)
        for kind in matches:  # one file per kind: dvc.yaml plots the directory, a line per file
            s.plot(f"plots/universality/{size}/{kind}.csv", [{"correlation": r["correlation"], "units": r[kind]} for r in rows])
        s.metrics(f"metrics/universality/{size}.json", metrics)
        print(f"universality@{size}: median best-match correlation {f['median']:.3f} for features vs "
              f"{n['median']:.3f} for neurons (paper: 0.72 vs 0.46)")
        s.run.log_artifact(out)
        shutil.rmtree(work)


def _model_b_params(s: Stage) -> ModelParams:
    return s.params.model.model_copy(update={"seed": s.section.seed})


# Each step's fingerprint covers the previous one's, so a checkpoint is reused only for the same work.
def _train_model_b(s: Stage, model_a: Transformer, tokens: TokenStore, work: Path) -> tuple[Transformer, str]:
    """Model A's architecture, trained like model A but from universality.seed; kept once trained."""
    p = _model_b_params(s)
    done, fingerprint = work / "model", s.fingerprint("model_b", p.model_dump(mode="json"), s.compute.precision)
    if (done / "fingerprint").exists() and (done / "fingerprint").read_text() == fingerprint:
        print(f"model B already trained: {done}")
        return load_model(done), fingerprint
    torch.manual_seed(p.seed)
    model = Transformer(model_a.cfg).to(s.compute.device)
    train_model(model, tokens.split("train"), p, work / "model.pt", fingerprint,
                lambda step, m: s.run.log_metrics({f"model_b.{k}": v for k, v in m.items()}, step), s.compute)
    model.cpu()
    save_model(model, done)
    (done / "fingerprint").write_text(fingerprint)  # last: marks the saved model complete
    return model, fingerprint


def _cache_activations_b(s: Stage, model_b: Transformer, tokens: TokenStore, acts_a: ActivationStore, work: Path,
                         model_fingerprint: str) -> tuple[VerifiedArray, str]:
    """Model B's activations on exactly the contexts SAE A was trained on, in the same order."""
    p, hook, ctx = s.params.activations, s.params.model.hook, tokens.ctx
    start, stop = acts_a.splits["train"]
    rows = np.asarray(acts_a.group["seq"][start:stop])[::ctx]  # the cache holds whole contexts
    out = work / "activations.zarr"
    fingerprint = s.fingerprint("activations_b", model_fingerprint, p.model_dump(mode="json"))
    if out.exists() and open_store(out).group.attrs.get("made_for") == fingerprint:
        print(f"model B's activations already cached: {out}")
    else:
        attrs = {"hook": hook, "ctx": ctx, "splits": {"train": [0, stop - start]}, "made_for": fingerprint}
        compute, on_device = s.compute, model_b.to(s.compute.device)

        def acts(t: torch.Tensor) -> torch.Tensor:
            with compute.autocast():
                return capture(on_device, hook, compute.to_device(t)).cpu()

        cache_activations(acts, tokens.tokens, rows, out, acts_a.acts.shape[1],
                          Layout(ctx, p.chunk_seqs, p.shard_chunks, p.compressor, p.clevel, p.dtype), p.batch_seqs,
                          attrs, fingerprint)
        model_b.cpu()
    return open_store(out).acts, fingerprint


def _train_sae_b(s: Stage, acts: VerifiedArray, size: int, work: Path, acts_fingerprint: str,
                 keep: np.ndarray | None) -> tuple[Standard, State]:
    """SAE B: the same size and sae.train as SAE A, on model B's activations."""
    p, n = s.params.sae.train, acts.shape[0]
    cfg = TrainConfig.from_params(s.params.sae, "standard")
    torch.manual_seed(p.seed)
    sae = Standard(acts.shape[1], size, **s.params.sae.options("standard")).to(s.compute.device)
    state = train_sae(
        sae, lambda position: batches(acts, 0, n, p.batch_size, p.seed, p.window_chunks, position, p.reader_lanes,
                                      keep=keep),
        lambda k, gen: random_rows(acts, 0, n, k, gen, keep), cfg, work / "sae.pt",
        s.fingerprint("sae_b", acts_fingerprint, size, p.model_dump(mode="json"),
                      s.params.sae.standard.model_dump(mode="json")),
        lambda step, m: s.run.log_metrics({f"sae_b.{k}": v for k, v in m.items()}, step), s.compute,
    )
    return sae.cpu(), state


if __name__ == "__main__":
    main(size_argument("universality", "<size>"))
