"""params/paper.yaml, the GPU-node run: valid against the schema, within a node's host memory, and a
scaled-down copy of it (same structure, compute and resampling shape; sizes divided down) runs
through `cp params/paper.yaml params.yaml && dvc repro` on this CPU, up to a dictionary."""

import copy
import json

import pytest
import yaml
from pydantic import ValidationError

from monosemantic.corpus.builtin import documents
from monosemantic.params import BuiltinSource, FilesSource, Params
from monosemantic.resources import GiB, check_memory, estimates
from tests.conftest import ROOT, copy_project, sh

pytestmark = pytest.mark.e2e

PAPER = ROOT / "params/paper.yaml"
NODE_MEMORY = 1024 * GiB  # host memory of a modest 8-GPU node (many have 2 TiB)


def paper() -> dict:
    return yaml.safe_load(PAPER.read_text())


def keys(tree: dict, prefix: str = "") -> set[str]:
    """Every key path a params file writes out (lists of sources and proxies count as leaves)."""
    out = set()
    for k, v in tree.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= keys(v, f"{prefix}{k}.")
    return out


def test_paper_params_are_valid_and_fit_a_gpu_node():
    raw = paper()
    # Params.model_validate, not load_params: the latter also checks this 24 GiB machine's memory.
    params = Params.model_validate(raw)
    # Complete: every key the default params.yaml writes out, this file writes too.
    assert keys(yaml.safe_load((ROOT / "params.yaml").read_text())) <= keys(raw)

    c, t, std = params.compute, params.sae.train, params.sae.standard
    assert (c.device, c.precision, c.nnodes, c.nproc_per_node) == ("cuda", "bf16", 1, 8)
    assert (t.batch_size, std.resample, std.resample_steps) == (8192, True, [25_000, 50_000, 75_000, 100_000])
    assert (t.dead_window, std.resample_inputs) == (12_500, 819_200)
    assert t.steps > max(std.resample_steps) + 2 * t.dead_window  # resampled features get time to settle
    assert max(params.sae.dict_sizes) >= 16384 and 4096 in params.sae.dict_sizes  # A/1 among them
    assert params.universality.dict_sizes == [4096]
    assert params.activations.max_train_tokens >= 100_000_000
    assert (params.model.d_mlp, params.model.d_model) == (512, 128)
    assert params.model.steps * params.model.batch_size * params.tokenize.ctx > 1e9  # trained longer

    # The corpus comes through `files` globs under corpus.files_root (DVC watches that directory).
    files = [s for s in params.corpus.sources if isinstance(s, FilesSource)]
    assert files and all(p.startswith(params.corpus.files_root + "/") for s in files for p in s.paths)
    moved = copy.deepcopy(raw)
    moved["corpus"]["files_root"] = "texts/elsewhere"
    with pytest.raises(ValidationError, match="outside corpus.files_root"):
        Params.model_validate(moved)

    # Host memory: the heaviest stage's estimate, once per rank, within a GPU node's memory.
    heaviest = max(e.bytes for e in estimates(params, params.model.d_mlp))
    assert heaviest * c.nproc_per_node <= NODE_MEMORY, heaviest / GiB
    check_memory(params, params.model.d_mlp, available=NODE_MEMORY // c.nproc_per_node)

    text = PAPER.read_text()
    assert "ESTIMATES, NOT MEASURED" in text and "cp params/paper.yaml params.yaml && dvc repro" in text


# Sizes divided down; everything not named here keeps paper.yaml's value.
SCALE = {
    "compute": {"device": "cpu", "threads": 1, "nproc_per_node": 2, "timeout_s": 120},
    "corpus": {"max_chars": 400_000, "shard_docs": 200},
    "tokenizer": {"vocab_size": 512},
    "tokenize": {"ctx": 32, "eval_fraction": 0.1},
    "model": {"d_model": 64, "d_mlp": 128, "steps": 60, "batch_size": 32, "warmup_steps": 5,
              "eval_tokens": 20_000, "log_every": 10, "checkpoint_every": 20},
    "activations": {"max_train_tokens": 40_000, "max_eval_tokens": 8_000, "batch_seqs": 64, "chunk_seqs": 8,
                    "shard_chunks": 8},
    "sae": {"dict_sizes": [4, 32, 128, 512]},  # paper.yaml's / 128
    "sae.train": {"batch_size": 512, "steps": 150, "dead_window": 12, "lr_warmup_steps": 1, "lr_decay_steps": 30,
                  "l1_warmup_steps": 5, "window_chunks": 8, "log_every": 10, "checkpoint_every": 50},  # steps / 1000
    "sae.standard": {"resample_steps": [25, 50, 75, 100], "resample_inputs": 8192},
    "evaluate": {"max_tokens": 8000, "batch_seqs": 32, "mean_ablation_samples": 8192},
    "universality": {"dict_sizes": [32], "max_tokens": 4000},
    "interpret": {"max_tokens": 40_000, "features": 20},
}
SIZE = 128  # paper.yaml's 16384 / 128
NAME = f"standard-{SIZE}"


def scaled_down(raw: dict) -> dict:
    small = copy.deepcopy(raw)
    for path, values in SCALE.items():
        section = small
        for key in path.split("."):
            section = section[key]
        assert set(values) <= set(section), set(values) - set(section)  # only existing keys change
        section.update(values)
    return small


def test_scaled_down_paper_params_keep_its_shape():
    raw, small = paper(), scaled_down(paper())
    assert keys(small) == keys(raw)
    big, little = Params.model_validate(raw), Params.model_validate(small)
    assert little.compute.nproc_per_node > 1 and little.compute.precision == big.compute.precision
    bt, lt = big.sae.train, little.sae.train
    bs, ls = big.sae.standard, little.sae.standard
    assert [s / bt.steps for s in bs.resample_steps] == [s / lt.steps for s in ls.resample_steps]
    assert abs(bt.dead_window / bt.steps - lt.dead_window / lt.steps) < 0.01
    assert little.corpus.sources == big.corpus.sources and little.corpus.files_root == big.corpus.files_root


def test_scaled_down_paper_params_run_with_the_documented_command(tmp_path):
    repo = copy_project(tmp_path / "repo")
    small = scaled_down(paper())
    (repo / "params/paper.yaml").write_text(yaml.safe_dump(small, sort_keys=False))
    # The `files` source's input, where paper.yaml looks for it: real prose, as jsonl.
    pile = repo / small["corpus"]["files_root"]
    pile.mkdir(parents=True)
    with open(pile / "00.jsonl", "w") as f:
        chars = 0
        for doc in documents(BuiltinSource(kind="builtin", parts=["docs", "docstrings"]), seed=0):
            f.write(json.dumps({"text": doc.text}) + "\n")
            chars += len(doc.text)
            if chars > small["corpus"]["max_chars"]:
                break

    res = sh("sh", "-c", f"cp params/paper.yaml params.yaml && dvc repro train_sae@{NAME}", cwd=repo, timeout=600)
    out = res.stdout + res.stderr
    for stage in ("corpus", "tokenizer", "tokenize", "train_model", "cache_activations", f"train_sae@{NAME}"):
        assert f"Running stage '{stage}'" in out, out[-3000:]
    assert out.count("launching: torchrun") == 3  # train_model, cache_activations, train_sae: 2 ranks each

    corpus = json.loads((repo / "metrics/corpus.json").read_text())["sources"]
    assert corpus["files"]["share"] > 0.9 and "synthetic/dna" in corpus, corpus  # 99 : 1, as paper.yaml
    train = json.loads((repo / f"metrics/sae/{NAME}/train.json").read_text())
    assert train["resample_events"] == 4 and train["tokens_seen"] == 150 * 512, train
    record = json.loads((repo / f"models/sae/{NAME}/provenance.json").read_text())
    assert record["compute"] == {"device": "cpu", "precision": "bf16", "world_size": 2}
    assert [step for step, _ in record["resampling"]] == [25, 50, 75, 100]
    assert (repo / f"models/sae/{NAME}/sae_weights.safetensors").stat().st_size > 0
    assert "Data and pipelines are up to date" in sh("dvc", "status", f"train_sae@{NAME}", cwd=repo).stdout
