"""Take a dictionary's features elsewhere: Neuronpedia feature pages and an EleutherAI delphi latent cache.

Both formats are the tools' own, so their viewers and scorers read our features without a converter:

- Neuronpedia. ``features/<index>.json``: one feature as Neuronpedia's feature API serves it, with its
  database's field names (apps/webapp/prisma/schema.prisma in hijohnnylin/neuronpedia: a ``Neuron`` with
  its ``activations`` and its ``explanations``, each explanation with its ``scores``). ``batch-<n>.json``:
  the same features in SAEDashboard's Neuronpedia batch format (sae_dashboard/neuronpedia/
  neuronpedia_dashboard.py), the input of the converter that bulk-imports dashboards into Neuronpedia.
  Made from the interpret stage's outputs and the dictionary's decoder; the activation store is not read.
- delphi. ``latents/<module>/<start>_<end>.safetensors`` + ``config.json``, as delphi's
  ``LatentCache.save_splits`` and ``save_config`` write them (delphi/latents/cache.py), so
  ``delphi.latents.LatentDataset(out / "latents", ...)`` loads it. Unlike the interpret stage's sample,
  delphi needs every activation of the chosen latents over a token set, so the activation store is
  encoded with the dictionary here.

The library knows nothing of DVC: paths are those of a workspace the pipeline made.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.numpy import save_file
from tqdm import tqdm

from monosemantic.activations import open_store
from monosemantic.errors import UserError
from monosemantic.provenance import atomic_output, write_json
from monosemantic.sae.export import load_sae

DELPHI_THRESHOLD = 1e-5  # delphi's cache keeps |activation| > 1e-5 (Cache.get_nonzeros); so do we
SCORE_COLUMNS = ("score_pearson", "score_spearman", "score_top_pearson", "score_interval_pearson",
                 "score_random_pearson", "score_token_pearson",
                 *(f"{task}_{m}" for task in ("detection", "fuzzing") for m in ("balanced_accuracy", "f1", "auc")))


@dataclass(frozen=True)
class Workspace:
    """Where one dictionary's inputs lie in a workspace the pipeline made."""

    root: Path
    name: str

    @property
    def sae(self) -> Path:
        return self.root / "models" / "sae" / self.name

    @property
    def features(self) -> Path:
        return self.root / "reports" / "features" / self.name

    @property
    def store(self) -> Path:
        return self.root / "data" / "activations.zarr"

    @property
    def tokenizer(self) -> Path:
        return self.root / "data" / "tokenizer.json"


def _check(ws: Workspace, out: Path, interpret: bool) -> None:
    """Refuse bad input before any work, each message naming the fix."""
    if not (ws.sae / "cfg.json").is_file():
        known = sorted(p.name for p in (ws.root / "models" / "sae").glob("*") if (p / "cfg.json").is_file())
        raise UserError(f"no dictionary {ws.name!r} in {ws.root / 'models' / 'sae'} (known: "
                        f"{', '.join(known) or 'none'}); name one of those, or run `dvc repro train_sae@{ws.name}` "
                        "in the workspace")
    if interpret:
        missing = [f for f in ("features.parquet", "examples.parquet") if not (ws.features / f).is_file()]
        if missing:
            raise UserError(f"{ws.features} lacks {', '.join(missing)}: run `dvc repro interpret@{ws.name}` first")
    else:
        for path, stage in ((ws.store, "cache_activations"), (ws.tokenizer, "tokenizer")):
            if not path.exists():
                raise UserError(f"{path} is missing: run `dvc repro {stage}` first")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} is not an empty directory: export into a new or empty one (or remove {out})")


# ---------------------------------------------------------------- Neuronpedia
def export_neuronpedia(root: str | Path, name: str, out: str | Path, model_id: str = "monosemantic-1l",
                       layer: int = 0, all_features: bool = False, batch_features: int = 128) -> int:
    """Write each interpreted feature of dictionary `name` (every feature with `all_features`; the rest
    have statistics but no examples) under `out`; returns the number of features. Neuronpedia names a
    feature ``<model_id>/<layer>-<name>/<index>``."""
    ws, out = Workspace(Path(root), name), Path(out)
    _check(ws, out, interpret=True)
    units = pl.read_parquet(ws.features / "features.parquet").filter(pl.col("kind") == "feature")
    sae = load_sae(ws.sae)
    if units.height != sae.d_sae:
        raise UserError(f"{ws.features / 'features.parquet'} has {units.height} features but {ws.sae} has "
                        f"{sae.d_sae}: the interpretation is stale; run `dvc repro interpret@{name}`")
    if not all_features:
        units = units.filter(pl.col("interpreted"))
    examples = (pl.read_parquet(ws.features / "examples.parquet")
                .filter((pl.col("kind") == "feature") & pl.col("group").is_in(["top", "interval"])))
    n_intervals = int(examples["interval"].max() or 1)  # a top example is always in the last interval
    by_unit = examples.partition_by("index", as_dict=True)
    backend = _backend(ws.features)
    source = f"{layer}-{name}"
    with torch.no_grad():
        w_dec = sae.W_dec.detach().float().cpu()

    with atomic_output(out) as tmp:
        (tmp / "features").mkdir()
        batch: list[dict] = []
        rows_bar = tqdm(units.iter_rows(named=True), total=units.height, desc="neuronpedia", unit="feature")
        for n, row in enumerate(rows_bar):
            i = row["index"]
            rows = by_unit.get((i,))  # top examples first, then interval by interval downwards
            rows = [] if rows is None else list(rows.sort(["group", "interval", "rank"], descending=[True, True, False])
                                                .iter_rows(named=True))
            feature = _dashboard_feature(row, rows, w_dec[i], n_intervals)
            write_json(tmp / "features" / f"{i}.json",
                       _api_feature(feature, row, [r["context"] for r in rows], model_id, source, name, backend))
            batch.append(feature)
            if len(batch) == batch_features or n == units.height - 1:
                write_json(tmp / f"batch-{n // batch_features}.json",
                           {"model_id": model_id, "layer": layer, "sae_set": name, "sae_id_suffix": None,
                            "features": batch})
                batch = []
    print(f"export neuronpedia: {units.height} features of {name} to {out} (features/<index>.json, batch-*.json)")
    return units.height


def _dashboard_feature(row: dict, examples: list[dict], direction: torch.Tensor, n_intervals: int) -> dict:
    """One feature in SAEDashboard's batch format (NeuronpediaDashboardFeature.to_dict's keys)."""
    peak, counts = row["max_activation"] or 0.0, row["hist_counts"] or []
    width = peak / max(len(counts), 1)
    centres = [(k + 0.5) * width for k in range(len(counts))]
    total = sum(counts)
    # SAEDashboard's neuron alignment (data_parsing_fns.add_neuron_alignment_data, 3 rows): the neurons the
    # decoder row writes most to, and each one's share of the row's L1 norm
    top = direction.topk(min(3, len(direction)))
    l1 = float(direction.abs().sum()) or 1.0

    def interval(i: int) -> tuple[float, float, float]:
        lo, hi = (i - 1) * peak / n_intervals, i * peak / n_intervals
        share = sum(c for c, x in zip(counts, centres) if lo < x <= hi) / total if total else 0.0
        return lo, hi, share

    activations = []
    for ex in examples:
        lo, hi, share = (-1.0, peak, -1.0) if ex["group"] == "top" else interval(ex["interval"])
        activations.append({"bin_min": lo, "bin_max": hi, "bin_contains": share, "tokens": ex["tokens"],
                            "values": _round(ex["acts"]), "qualifying_token_index": ex["center"]})
    return {
        "feature_index": row["index"],
        "neuron_alignment_indices": top.indices.tolist(),
        "neuron_alignment_values": _round(top.values.tolist()),
        "neuron_alignment_l1": _round((top.values.abs() / l1).tolist()),
        "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
        "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
        "neg_str": row["logit_suppress_tokens"] or [], "neg_values": _round(row["logit_suppress_values"] or []),
        "pos_str": row["logit_boost_tokens"] or [], "pos_values": _round(row["logit_boost_values"] or []),
        "frac_nonzero": float(row["density"]),
        "freq_hist_data_bar_values": _round(centres), "freq_hist_data_bar_heights": [float(c) for c in counts],
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
        "n_prompts_total": 0, "n_tokens_in_prompt": 0, "dataset": "",
        "decoder_weights_dist": [],
        "activations": activations,
        "vector": [],
    }


def _api_feature(feature: dict, row: dict, contexts: list[int], model_id: str, source: str, name: str,
                 backend: dict) -> dict:
    """The feature as Neuronpedia's feature API serves it: its Neuron row (the dashboard's fields keep their
    names there), Activation rows (as Neuronpedia's importer converts the dashboard's), Explanation rows.
    An activation's ``dataIndex`` is its context's number in the interpret stage's scan of the training
    split (store rows ``first + context * ctx`` onwards), so the example can be found again."""
    ids = {"modelId": model_id, "layer": source, "index": str(row["index"])}
    acts = []
    for a, context in zip(feature["activations"], contexts):
        values = a["values"]
        top = max(range(len(values)), key=values.__getitem__) if values else 0
        acts.append({**ids, "tokens": a["tokens"], "values": values, "maxValue": values[top] if values else 0.0,
                     "maxValueTokenIndex": top, "minValue": min(values, default=0.0), "binMin": a["bin_min"],
                     "binMax": a["bin_max"], "binContains": a["bin_contains"],
                     "qualifyingTokenIndex": a["qualifying_token_index"], "dataSource": None,
                     "dataIndex": str(context)})
    skip = {"feature_index", "n_prompts_total", "n_tokens_in_prompt", "dataset", "activations", "vector"}
    return {**ids, "sourceSetName": name, "maxActApprox": float(row["max_activation"] or 0.0), "hasVector": False,
            **{k: v for k, v in feature.items() if k not in skip},
            "activations": acts, "explanations": _explanations(row, ids, backend)}


def _explanations(row: dict, ids: dict, backend: dict) -> list[dict]:
    """The explanation and its scores, as Neuronpedia's Explanation and ExplanationScore rows. Our score
    types keep our names (``monosemantic_<column>``): their definitions are ours, not Neuronpedia's."""
    if not row.get("explanation"):
        return []
    control = {c: row[c] for c in ("control_pearson", "control_spearman") if _finite(row.get(c))}
    scores = [{"explanationScoreTypeName": f"monosemantic_{c}", "explanationScoreModelName": backend["model"],
               "value": float(row[c]), "jsonDetails": json.dumps(control) if c == "score_pearson" and control else ""}
              for c in SCORE_COLUMNS if _finite(row.get(c))]  # the control (another unit's explanation): chance level
    notes = "; ".join(x for x in (row.get("explanation_error"), row.get("judge_error")) if x) or None
    return [{**ids, "description": row["explanation"], "typeName": f"monosemantic_{backend['backend']}",
             "explanationModelName": backend["model"], "notes": notes,
             "scoreV1": float(row["score_pearson"]) if _finite(row.get("score_pearson")) else 0.0,
             "scores": scores}]


def _backend(folder: Path) -> dict:
    """Which explainer wrote the explanations, from the interpret output's provenance record."""
    try:
        params = json.loads((folder / "provenance.json").read_text())["params"]["interpret"]
    except (OSError, ValueError, KeyError, TypeError):
        params = {}
    backend = params.get("backend", "baseline")
    model = (params.get("openai") or {}).get("model") if backend == "openai" else None
    return {"backend": backend, "model": model or backend}


def _round(values) -> list[float]:
    """Five significant digits (SAEDashboard rounds to 3 decimals, too coarse for small activations)."""
    return [float(f"{v:.5g}") for v in values]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# ---------------------------------------------------------------- delphi
def export_delphi(root: str | Path, name: str, out: str | Path, split: str = "train", max_tokens: int | None = None,
                  latents: list[int] | None = None, n_splits: int = 5, module: str | None = None,
                  batch_tokens: int = 16384) -> int:
    """Encode the store's `split` (its first `max_tokens`, whole contexts) with dictionary `name` and write
    every activation above delphi's threshold of `latents` (all when None) as delphi's latent cache under
    ``out/latents/<module>/``; `module` defaults to the store's hook. Returns the number of activations."""
    if max_tokens is not None and max_tokens < 1:  # a negative count would slice from the split's end
        raise UserError(f"max_tokens={max_tokens}: give a positive number of tokens (whole contexts), "
                        "or leave it out for the whole split")
    ws, out = Workspace(Path(root), name), Path(out)
    _check(ws, out, interpret=False)
    store, sae = open_store(ws.store), load_sae(ws.sae)
    if sae.d_in != store.acts.shape[1]:
        raise UserError(f"{ws.sae} reads {sae.d_in}-dim activations but {ws.store} holds {store.acts.shape[1]}: "
                        f"re-run `dvc repro train_sae@{name}`")
    if split not in store.splits:
        raise UserError(f"{ws.store} has no split {split!r}; choose one of {', '.join(store.splits)}")
    width = sae.d_sae
    chosen = np.arange(width) if latents is None else np.unique(np.asarray(latents, dtype=np.int64))
    if len(chosen) == 0 or chosen.min() < 0 or chosen.max() >= width:
        raise UserError(f"latents must be feature indices in 0..{width - 1} of {name}")
    if not 1 <= n_splits <= width:
        raise UserError(f"n_splits={n_splits}: choose 1..{width} (the files split the {width} latents)")
    ctx = int(store.group.attrs["ctx"])
    t0, t1 = store.splits[split]
    n = min(t1 - t0, max_tokens if max_tokens is not None else t1 - t0) // ctx * ctx
    if n <= 0:
        raise UserError(f"fewer than one context ({ctx} tokens) to export: raise max_tokens")
    module = module or str(store.group.attrs.get("hook") or "mlp")

    # delphi's split boundaries (LatentCache._generate_split_indices): inclusive [start, end] latent ranges
    edges = torch.linspace(0, width, steps=n_splits + 1).long().tolist()
    starts = np.array(edges[:-1])
    parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in starts]
    units = torch.from_numpy(chosen)
    keep = store.keep
    bar = tqdm(total=n, desc=f"delphi: encoding {split} with {name}", unit="tok", unit_scale=True)
    with torch.no_grad(), bar:
        for r0 in range(0, n, batch_tokens):
            r1 = min(r0 + batch_tokens, n)
            x = torch.from_numpy(np.asarray(store.acts[t0 + r0 : t0 + r1], dtype=np.float32))
            f = sae.encode_units(x, units)
            if keep is not None:  # positions the cache left out (activations.exclude) are no examples here either
                f[~torch.from_numpy(np.asarray(keep[t0 + r0 : t0 + r1]))] = 0
            rows, cols = (f.abs() > DELPHI_THRESHOLD).nonzero(as_tuple=True)
            vals = f[rows, cols].numpy()
            row, lat = rows.numpy() + r0, chosen[cols.numpy()]
            loc = np.stack([row // ctx, row % ctx, lat], 1)
            which = np.searchsorted(starts, lat, side="right") - 1
            for s in np.unique(which):
                parts[s].append((loc[which == s], vals[which == s]))
            bar.update(r1 - r0)

    tokens = np.asarray(store.group["tokens"][t0 : t0 + n], dtype=np.int64).reshape(-1, ctx)
    total = 0
    with atomic_output(out) as tmp:
        folder = tmp / "latents" / module
        folder.mkdir(parents=True)
        for s, (start, stop) in enumerate(itertools.pairwise(edges)):
            loc = np.concatenate([p[0] for p in parts[s]]) if parts[s] else np.zeros((0, 3), dtype=np.int64)
            act = np.concatenate([p[1] for p in parts[s]]) if parts[s] else np.zeros(0, dtype=np.float32)
            loc[:, 2] -= start  # as delphi: latent index relative to the file's first
            small = len(loc) == 0 or (loc[:, 2].max() < 2**16 and loc[:, 0].max() < 2**16)
            save_file({"locations": loc.astype(np.uint16 if small else np.uint32),
                       "activations": act.astype(np.float16), "tokens": tokens},
                      folder / f"{start}_{stop - 1}.safetensors")
            total += len(loc)
        # delphi's CacheConfig fields; model_name is what delphi loads its tokenizer from when none is given
        (tmp / "tokenizer").mkdir()
        shutil.copy(ws.tokenizer, tmp / "tokenizer" / "tokenizer.json")
        (tmp / "tokenizer" / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}) + "\n")
        config = {"dataset_repo": str(ws.store.resolve()), "dataset_split": split, "dataset_name": "",
                  "dataset_column": "text", "batch_size": len(tokens), "cache_ctx_len": ctx, "ctx_len": ctx,
                  "n_tokens": n, "n_splits": n_splits, "model_name": str((out / "tokenizer").resolve()),
                  "monosemantic": {"dictionary": name, "latents": None if latents is None else chosen.tolist(),
                                   "first_row": t0, "threshold": DELPHI_THRESHOLD}}
        (folder / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    print(f"export delphi: {total:,} activations of {len(chosen)} latents over {n:,} {split} tokens "
          f"to {out / 'latents' / module}")
    return total
