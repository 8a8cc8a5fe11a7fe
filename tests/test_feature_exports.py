"""`monosemantic export {neuronpedia,delphi}`: the tools' own formats, and the activations our dictionaries give.

Each format is checked against its tool's schema as the tool's source states it (copied below, with where
it comes from), and, where the tool can be imported, by the tool itself: sae-dashboard's Neuronpedia batch
classes and delphi's `LatentDataset`. Neither is a dependency of this project (sae-dashboard pins old
transformers and pulls in transformer-lens; eai-delphi pulls in vllm and a CUDA torch), so those two tests
skip where the tool is missing; `pip install --no-deps --target DIR sae-dashboard eai-delphi` plus delphi's
light imports (asyncer jaxtyping wadler_lindig simple_parsing docstring_parser faiss-cpu blobfile lxml
pycryptodomex orjson sentence-transformers) and PYTHONPATH=DIR run them.
"""

from __future__ import annotations

import itertools
import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.numpy import load_file

from monosemantic.activations import open_store
from monosemantic.cli import main
from monosemantic.sae import build
from monosemantic.sae.export import load_sae, save_sae
from monosemantic.tokenizer import load_tokenizer, token_strings

# ---------------------------------------------------------------- the schemas, as the tools' sources state them
# SAEDashboard's Neuronpedia batch (sae-dashboard 0.8.0, sae_dashboard/neuronpedia/neuronpedia_dashboard.py:
# NeuronpediaDashboardBatch / Feature / Activation .to_dict); Neuronpedia's importer reads every key
# (SAEDashboard's neuronpedia_export.py, _process_batch).
BATCH_KEYS = {"model_id", "layer", "sae_set", "sae_id_suffix", "features"}
DASHBOARD_FEATURE_KEYS = {
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_values",
    "freq_hist_data_bar_heights", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "n_prompts_total", "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "activations", "vector"}
DASHBOARD_ACTIVATION_KEYS = {"bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"}

# Neuronpedia's database (github.com/hijohnnylin/neuronpedia apps/webapp/prisma/schema.prisma): the scalar
# fields of Neuron, Activation, Explanation and ExplanationScore; the required ones (no `?`, no default)
# apart from ids and users the server assigns.
NEURON = {"modelId", "layer", "index", "sourceSetName", "creatorId", "createdAt", "maxActApprox", "hasVector",
          "vector", "vectorLabel", "vectorDefaultSteerStrength", "hookName", "topkCosSimIndices", "topkCosSimValues",
          *(DASHBOARD_FEATURE_KEYS - {"feature_index", "n_prompts_total", "n_tokens_in_prompt", "dataset",
                                      "activations", "vector"}),
          "umap_cluster", "umap_log_feature_sparsity", "umap_x", "umap_y"}
ACTIVATION = {"id", "tokens", "dataIndex", "index", "layer", "modelId", "dataSource", "maxValue",
              "maxValueTokenIndex", "minValue", "values", "dfaValues", "dfaTargetIndex", "dfaMaxValue", "zQIndices",
              "zKIndices", "zValues", "creatorId", "createdAt", "lossValues", "logitContributions", "binMin", "binMax",
              "binContains", "qualifyingTokenIndex"}
EXPLANATION = {"id", "modelId", "layer", "index", "description", "authorId", "triggeredByUserId", "notes",
               "scoreV1", "scoreV2", "umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity", "typeName",
               "explanationModelName", "createdAt", "updatedAt"}
SCORE = {"id", "initiatedByUserId", "value", "explanationId", "explanationScoreTypeName",
         "explanationScoreModelName", "jsonDetails", "createdAt"}
REQUIRED = {"neuron": {"modelId", "layer", "index"},
            "activation": {"tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue",
                           "values"},
            "explanation": {"modelId", "layer", "index", "description"},
            "score": {"value", "explanationScoreTypeName", "explanationScoreModelName"}}

# delphi's cache (eai-delphi 0.1.3): CacheConfig's fields (delphi/config.py) plus model_name, written by
# LatentCache.save_config; split files `<start>_<end>.safetensors` over torch.linspace(0, width, n_splits + 1)
# (LatentCache._generate_split_indices, save_splits) holding locations [N, 3] (uint16, or uint32 past 2**16),
# activations float16 [N] and tokens [batch, ctx]; TensorBuffer.load adds the file's first latent to
# locations[:, 2]; LatentDataset reads `<raw_dir>/<module>/config.json`, and tokens from the first split file.
CACHE_CONFIG = {"dataset_repo", "dataset_split", "dataset_name", "dataset_column", "batch_size", "cache_ctx_len",
                "n_tokens", "n_splits", "model_name"}


def export(*args: str) -> int:
    return main(["export", *args])


@lru_cache
def loaded(root: Path, name: str):
    return load_sae(root / "models/sae" / name), open_store(root / "data/activations.zarr")


def encoded(root: Path, name: str, rows: slice, latents) -> np.ndarray:
    """The dictionary's activations of `latents` on store rows `rows`, computed here from scratch."""
    sae, store = loaded(root, name)
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(store.acts[rows], dtype=np.float32))
        return sae.encode_units(x, torch.as_tensor(latents)).numpy()


# ---------------------------------------------------------------- bad input, before any work (no pipeline)
def test_bad_input_is_refused_with_the_fix_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"

    def refused(*args: str) -> str:
        assert export(*args, "--out", str(out)) == 2
        return capsys.readouterr().err

    err = refused("neuronpedia", "standard-128")
    assert "no dictionary 'standard-128'" in err and "dvc repro train_sae@standard-128" in err
    save_sae(build("standard", 8, 16), tmp_path / "models/sae/standard-16")
    err = refused("delphi", "standard-128")
    assert "known: standard-16" in err
    err = refused("neuronpedia", "standard-16")
    assert "features.parquet" in err and "dvc repro interpret@standard-16" in err
    err = refused("delphi", "standard-16")
    assert "activations.zarr is missing" in err and "dvc repro cache_activations" in err
    for bad in ("0", "-5"):  # a count that is no count, named before the workspace is even read
        err = refused("delphi", "standard-16", "--max-tokens", bad)
        assert f"max_tokens={bad}" in err and "positive number of tokens" in err
    assert not out.exists()  # nothing written
    (tmp_path / "reports/features/standard-16").mkdir(parents=True)
    for f in ("features.parquet", "examples.parquet"):
        (tmp_path / "reports/features/standard-16" / f).touch()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = refused("neuronpedia", "standard-16")
    assert "is not an empty directory" in err and (out / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit):
        export("delphi", "standard-16", "--out", str(tmp_path / "new"), "--latents", "1,x")


# ---------------------------------------------------------------- Neuronpedia (tiny pipeline)
@pytest.fixture(scope="module")
def neuronpedia(repo, tmp_path_factory):
    """The tiny pipeline's standard-128 and topk-128, exported."""
    outs = {}
    for name in ("standard-128", "topk-128"):
        outs[name] = tmp_path_factory.mktemp("np") / name
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(repo)
            assert export("neuronpedia", name, "--out", str(outs[name])) == 0
    return outs


@pytest.mark.e2e
def test_neuronpedia_export_has_neuronpedias_and_saedashboards_fields(repo, neuronpedia):
    for name, out in neuronpedia.items():
        units = pl.read_parquet(repo / f"reports/features/{name}/features.parquet").filter(
            (pl.col("kind") == "feature") & pl.col("interpreted"))
        files = sorted(out.glob("features/*.json"))
        assert len(files) == units.height > 0
        batch_features = []
        for path in sorted(out.glob("batch-*.json")):
            batch = json.loads(path.read_text())
            assert set(batch) == BATCH_KEYS and batch["sae_set"] == name and batch["layer"] == 0
            batch_features += batch["features"]
        assert len(batch_features) == units.height
        for f in batch_features:
            assert set(f) == DASHBOARD_FEATURE_KEYS
            assert all(set(a) == DASHBOARD_ACTIVATION_KEYS and len(a["tokens"]) == len(a["values"])
                       for a in f["activations"])
        for row in units.iter_rows(named=True):
            page = json.loads((out / f"features/{row['index']}.json").read_text())
            acts, explanations = page.pop("activations"), page.pop("explanations")
            assert set(page) <= NEURON and REQUIRED["neuron"] <= set(page)
            ids = ("monosemantic-1l", f"0-{name}", str(row["index"]))
            assert (page["modelId"], page["layer"], page["index"]) == ids
            assert page["frac_nonzero"] == pytest.approx(row["density"])
            assert page["maxActApprox"] == pytest.approx(row["max_activation"])
            assert page["pos_str"] == row["logit_boost_tokens"] and page["neg_str"] == row["logit_suppress_tokens"]
            assert sum(page["freq_hist_data_bar_heights"]) == sum(row["hist_counts"]) > 0
            top = loaded(repo, name)[0].W_dec[row["index"]].detach().topk(3)  # SAEDashboard's neuron alignment
            assert page["neuron_alignment_indices"] == top.indices.tolist()
            assert acts, f"{name} feature {row['index']} has no examples"
            for a in acts:
                assert set(a) <= ACTIVATION and REQUIRED["activation"] <= set(a)
                assert a["maxValue"] == max(a["values"]) == a["values"][a["maxValueTokenIndex"]]
                assert 0 <= a["qualifyingTokenIndex"] < len(a["tokens"]) == len(a["values"])
            tops = [a["maxValue"] for a in acts if a["binMin"] == -1]  # the top examples of both sides
            assert 0 < max(tops) <= row["max_activation"] * (1 + 1e-4)  # (the maximum may lie in neither side)
            assert all(0 <= a["binContains"] <= 1 and a["binMin"] < a["binMax"] for a in acts if a["binMin"] != -1)
            if row["explanation"] is None:
                assert explanations == []
                continue
            (e,) = explanations
            scores = e.pop("scores")
            assert set(e) <= EXPLANATION and REQUIRED["explanation"] <= set(e)
            assert e["description"] == row["explanation"] and e["typeName"] == "monosemantic_baseline"
            assert all(set(s) <= SCORE and REQUIRED["score"] <= set(s) for s in scores)
            by_type = {s["explanationScoreTypeName"]: s["value"] for s in scores}
            if row["score_pearson"] is not None:
                assert by_type["monosemantic_score_pearson"] == pytest.approx(row["score_pearson"])


@pytest.mark.e2e
def test_neuronpedia_examples_are_the_dictionarys_activations(repo, neuronpedia):
    """Every exported example window is a run of tokens in its context of the store, and its per-token values
    are what the dictionary's encoder gives there."""
    store = open_store(repo / "data/activations.zarr")
    strings = token_strings(load_tokenizer(repo / "data/tokenizer.json"))
    ctx, (t0, t1) = store.group.attrs["ctx"], store.splits["train"]
    all_tokens = store.group["tokens"][t0:t1]
    checked = 0
    for name, out in neuronpedia.items():
        acts = encoded(repo, name, slice(t0, t1), torch.arange(128))
        for path in out.glob("features/*.json"):
            page = json.loads(path.read_text())
            unit = int(page["index"])
            for a in page["activations"]:
                c0 = int(a["dataIndex"]) * ctx
                tokens = [strings[t] for t in all_tokens[c0 : c0 + ctx]]
                f = acts[c0 : c0 + ctx, unit]
                w = len(a["tokens"])
                starts = [s for s in range(ctx - w + 1) if tokens[s : s + w] == a["tokens"]]
                assert any(np.allclose(a["values"], f[s : s + w], rtol=1e-4, atol=1e-7) for s in starts), (name, unit)
                checked += 1
    assert checked > 100


def test_neuronpedia_batches_load_in_saedashboard(neuronpedia):
    dashboard = pytest.importorskip("sae_dashboard.neuronpedia.neuronpedia_dashboard")
    for out in neuronpedia.values():
        for path in out.glob("batch-*.json"):
            batch = json.loads(path.read_text())
            assert dashboard.NeuronpediaDashboardBatch(**batch).to_dict() == batch  # an unknown key is a TypeError


# ---------------------------------------------------------------- delphi (tiny pipeline)
@pytest.fixture(scope="module")
def delphi_cache(repo, tmp_path_factory):
    """topk-128 over the training split, all latents in 3 files; standard-128's latents 5, 40, 41, 127 in 5."""
    outs = {name: tmp_path_factory.mktemp("delphi") / name for name in ("topk-128", "standard-128")}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        assert export("delphi", "topk-128", "--out", str(outs["topk-128"]), "--n-splits", "3") == 0
        assert export("delphi", "standard-128", "--out", str(outs["standard-128"]), "--latents", "41,5,127,40",
                      "--max-tokens", "10000") == 0
    return outs


@pytest.mark.e2e
def test_delphi_cache_is_delphis_layout_and_the_dictionarys_activations(repo, delphi_cache):
    store = open_store(repo / "data/activations.zarr")
    ctx, (t0, t1) = store.group.attrs["ctx"], store.splits["train"]
    hook = store.group.attrs.get("hook") or "mlp"
    for name, out, n_splits, latents, n in (("topk-128", delphi_cache["topk-128"], 3, np.arange(128), t1 - t0),
                                            ("standard-128", delphi_cache["standard-128"], 5, [5, 40, 41, 127], 10000)):
        n = n // ctx * ctx
        module = out / "latents" / hook
        assert [p.name for p in (out / "latents").iterdir()] == [hook]  # LatentDataset lists raw_dir's modules
        config = json.loads((module / "config.json").read_text())
        assert CACHE_CONFIG <= set(config) and config["cache_ctx_len"] == ctx and config["n_splits"] == n_splits
        edges = torch.linspace(0, 128, n_splits + 1).long().tolist()
        names = {f"{a}_{b - 1}.safetensors" for a, b in itertools.pairwise(edges)}
        assert {p.name for p in module.glob("*.safetensors")} == names
        locations, values = [], []
        for path in module.glob("*.safetensors"):
            data = load_file(path)  # as delphi's TensorBuffer.load reads a split
            assert data["locations"].dtype == np.uint16 and data["activations"].dtype == np.float16
            assert data["tokens"].shape == (n // ctx, ctx)
            np.testing.assert_array_equal(data["tokens"].ravel(), store.group["tokens"][t0 : t0 + n])
            loc = data["locations"].astype(np.int64)
            loc[:, 2] += int(path.name.split("_")[0])
            assert loc[:, 2].max(initial=int(path.stem.split("_")[0])) <= int(path.stem.split("_")[1])
            locations.append(loc)
            values.append(data["activations"])
        loc, val = np.concatenate(locations), np.concatenate(values)
        # the same activations, from scratch: every one above delphi's threshold, and no other
        f = encoded(repo, name, slice(t0, t0 + n), latents)
        rows, cols = np.nonzero(np.abs(f) > 1e-5)
        want = np.stack([rows // ctx, rows % ctx, np.asarray(latents)[cols]], 1)
        got_order, want_order = np.lexsort(loc.T[::-1]), np.lexsort(want.T[::-1])
        np.testing.assert_array_equal(loc[got_order], want[want_order])
        np.testing.assert_allclose(val[got_order].astype(np.float32), f[rows, cols][want_order],
                                   rtol=2e-3, atol=0)  # float16, as delphi stores them


@pytest.mark.e2e
def test_delphi_export_refuses_bad_latents_splits_and_sizes(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    for args, words in ((["--latents", "128"], "0..127"), (["--split", "nope"], "no split 'nope'"),
                        (["--n-splits", "0"], "n_splits=0"), (["--max-tokens", "3"], "fewer than one context"),
                        (["--max-tokens", "-5"], "max_tokens=-5")):  # -5 // ctx * ctx once sliced from the end
        assert export("delphi", "standard-128", "--out", str(tmp_path / "o"), *args) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_delphis_own_loader_reads_the_cache(repo, delphi_cache):
    pytest.importorskip("delphi.latents")
    from delphi.config import ConstructorConfig, SamplerConfig
    from delphi.latents import LatentDataset

    store = open_store(repo / "data/activations.zarr")
    ctx, (t0, t1) = store.group.attrs["ctx"], store.splits["train"]
    n = (t1 - t0) // ctx * ctx
    raw = delphi_cache["topk-128"] / "latents"
    dataset = LatentDataset(raw, SamplerConfig(n_examples_train=5, n_examples_test=5, n_quantiles=5),
                            ConstructorConfig(min_examples=5, n_non_activating=5, example_ctx_len=16),
                            latents={p.name: torch.arange(0, 128, 9) for p in raw.iterdir()})  # tokenizer: model_name
    f = encoded(repo, "topk-128", slice(t0, t0 + n), torch.arange(0, 128, 9))
    density = dict(zip(range(0, 128, 9), (np.abs(f) > 1e-5).mean(0)))
    records = list(dataset)
    assert records and dataset.tokens.shape == (n // ctx, ctx)
    for record in records:
        assert record.per_token_frequency == pytest.approx(density[record.latent.latent_index])
        for example in record.train:
            assert example.tokens.shape == example.activations.shape == (16,)


@pytest.mark.e2e
def test_delphi_leaves_out_the_positions_the_store_left_out(repo, tmp_path):
    """With activations.exclude on, the latent cache holds no activation at a left-out position."""
    from tests.conftest import clone_repo, set_params, sh

    work = clone_repo(repo, tmp_path / "r")
    set_params(work, lambda r: r["activations"].setdefault("exclude", {}).update(special_tokens=True))
    sh(sys.executable, "-m", "stages.cache_activations", cwd=work)
    store = open_store(work / "data/activations.zarr")
    (t0, t1), ctx = store.splits["train"], store.group.attrs["ctx"]
    n = (t1 - t0) // ctx * ctx
    left_out = ~np.asarray(store.keep[t0 : t0 + n])
    assert left_out.any()  # the tiny corpus's document separators
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        assert export("delphi", "topk-128", "--out", str(tmp_path / "out"), "--n-splits", "1") == 0
    data = load_file(next((tmp_path / "out/latents").glob("*/*.safetensors")))
    rows = data["locations"][:, 0].astype(np.int64) * ctx + data["locations"][:, 1]
    assert len(rows) and not left_out[rows].any()
    f = encoded(work, "topk-128", slice(t0, t0 + n), np.arange(128))
    assert (np.abs(f[left_out]) > 1e-5).any()  # there was something to leave out
