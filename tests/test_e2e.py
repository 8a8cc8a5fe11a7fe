"""End to end: the tiny params through `dvc repro` in a temporary git repo, real outputs checked."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
import zarr

from monosemantic.model import load_model
from monosemantic.model.hooks import capture
from monosemantic.provenance import hash_path, read_record
from tests.conftest import BIN, ENV, clone_repo, set_params, sh

pytestmark = pytest.mark.e2e
def test_outputs_have_the_contracted_shapes(repo):
    corpus = pl.concat([pl.read_parquet(p) for p in sorted((repo / "data/corpus").glob("*.parquet"))])
    assert corpus.columns == ["doc_id", "source", "text"] and corpus["doc_id"].is_unique().all()
    assert {"builtin/code", "synthetic/base64", "synthetic/dna"} <= set(corpus["source"])
    tokens = zarr.open_group(repo / "data/tokens.zarr", mode="r")
    assert tokens["tokens"].dtype == np.int32 and tokens["tokens"].shape[1] == 32
    n_train = tokens.attrs["split"]["train"][1]
    assert 0 < n_train < tokens["tokens"].shape[0]
    assert json.loads((repo / "models/transformer/config.json").read_text())["d_mlp"] == 128
    assert (repo / "models/transformer/model.safetensors").stat().st_size > 0


def test_activation_store_is_aligned_with_tokens_and_model(repo):
    acts = zarr.open_group(repo / "data/activations.zarr", mode="r")
    tokens = zarr.open_group(repo / "data/tokens.zarr", mode="r")["tokens"]
    a = acts["acts"]
    assert a.dtype == np.float16 and a.shape == (48000, 128)
    assert all(acts[k].shape == (48000,) and acts[k].dtype == np.int32 for k in ("tokens", "seq", "pos"))
    seq, pos, tok = acts["seq"][:], acts["pos"][:], acts["tokens"][:]
    assert (tokens.get_coordinate_selection((seq, pos)) == tok).all()
    train_end = acts.attrs["splits"]["train"][1]
    n_train_rows = zarr.open_group(repo / "data/tokens.zarr", mode="r").attrs["split"]["train"][1]
    assert seq[:train_end].max() < n_train_rows <= seq[train_end:].min()  # eval rows are eval documents
    model = load_model(repo / "models/transformer")
    for row in (0, 700, 1499):  # recompute a few sequences
        expected = capture(model, "mlp.act", torch.from_numpy(tokens[seq[row * 32]][None]).long())[0]
        np.testing.assert_allclose(a[row * 32 : (row + 1) * 32], expected.half().numpy(), rtol=0, atol=1e-6)
    files = sum(1 for p in (repo / "data/activations.zarr").rglob("*") if p.is_file())
    assert files < 500
    stats = json.loads((repo / "metrics/activations.json").read_text())
    assert stats["tokens"] == 48000 and stats["compression_ratio"] > 1 and stats["mean_norm"] > 0
    assert stats["excluded"]["tokens"] == 0 and acts["keep"][:].all()  # the built-in model's defaults: every position


def test_subject_model_learned(repo):
    m = json.loads((repo / "metrics/transformer.json").read_text())
    assert m["eval_loss"] < m["unigram_entropy"] - 0.5, m
    assert m["tokens_seen"] == 150 * 32 * 32
    curve = (repo / "plots/transformer/train.csv").read_text().splitlines()
    assert curve[0].startswith("step,train_loss") and len(curve) == 16


def test_repro_is_clean_and_a_second_repro_runs_nothing(repo):
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=repo).stdout
    out = sh("dvc", "repro", cwd=repo).stdout
    assert "Running stage" not in out and out.count("didn't change, skipping") == 20


def test_mlflow_runs_and_provenance_agree_with_dvc_lock(repo):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("monosemantic")
    runs = {r.data.tags["monosemantic.stage"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"corpus", "tokenizer", "tokenize", "train_model", "cache_activations", "compare", "frontier",
                         "report",
                         *(f"{stage}@{name}" for stage in ("train_sae", "evaluate", "interpret")
                           for name in ("standard-128", "standard-256", "topk-128", "topk-256"))}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    out_md5 = {o["path"]: o["md5"] for st in lock.values() for o in st.get("outs", [])}

    record = zarr.open_group(repo / "data/activations.zarr", mode="r").attrs["provenance"]
    run = runs["cache_activations"]
    assert record["mlflow_run_id"] == run.info.run_id
    assert record["code"]["git_commit"] == sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    for name, entry in record["inputs"].items():
        assert entry["md5"] == out_md5[entry["path"]] == inputs[name]
    assert hash_path(repo / "data/activations.zarr") == out_md5["data/activations.zarr"]
    assert any(m.key == "train_loss" for m in client.get_metric_history(runs["train_model"].info.run_id, "train_loss"))
    corpus_record = json.loads((repo / "data/corpus/provenance.json").read_text())
    assert corpus_record["sources"][0]["python"] and corpus_record["mlflow_run_id"] == runs["corpus"].info.run_id


def test_every_record_names_the_params_dvc_tracks_for_its_stage(repo):
    """The audit judges staleness from the record: a key DVC tracks but the record lacks would pass unnoticed."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    checked = set()
    for stage, entry in lock.items():
        tracked = entry["params"]["params.yaml"]
        for out in entry["outs"]:
            record = read_record(repo / out["path"])
            if record is not None:
                assert record["params"].keys() == tracked.keys(), (stage, out["path"])
                checked.add(stage)
    assert set(lock) - checked == {"frontier", *(s for s in lock if s.startswith("evaluate@"))}  # metrics and plots


def test_unknown_params_key_stops_repro_and_keeps_outputs(repo, tmp_path):
    work = clone_repo(repo, tmp_path / "r")
    before = hash_path(work / "models/transformer")
    set_params(work, lambda r: r["model"].update(stpes=10))
    res = sh("dvc", "repro", cwd=work, check=False)
    assert res.returncode != 0
    assert "model.stpes: unknown key" in res.stderr + res.stdout
    assert hash_path(work / "models/transformer") == before


@pytest.mark.parametrize(
    "stage, mutate, message",
    [
        ("corpus", lambda r, d: r["corpus"]["sources"].append({"kind": "web"}), "corpus.sources.3"),
        ("corpus", lambda r, d: r["corpus"].update(files_root=str(d), sources=[{"kind": "files", "paths": [f"{d}/missing/*.txt"]}]),
         "matched no files"),
        ("corpus", lambda r, d: r["corpus"].update(files_root=str(d), sources=[{"kind": "files", "paths": [f"{d}/latin1.txt"]}]),
         "latin1.txt byte 3 is not valid UTF-8"),
        ("corpus", lambda r, d: r["corpus"].update(files_root=str(d), sources=[{"kind": "files", "paths": [f"{d}/blank.txt"]}]),
         "corpus is empty"),
        ("tokenize", lambda r, d: r["tokenize"].update(ctx=1), "tokenize.ctx: got 1"),
        ("tokenize", lambda r, d: (r["tokenize"].update(ctx=60000),  # every budget holds a context; the corpus not
                                   r["activations"].update(max_train_tokens=60000, max_eval_tokens=60000),
                                   r["evaluate"].update(max_tokens=60000), r["interpret"].update(max_tokens=60000)),
         "shorter than one context"),
    ],
)
def test_bad_inputs_fail_clearly_and_keep_outputs(repo, tmp_path, stage, mutate, message):
    work = clone_repo(repo, tmp_path / "r")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "blank.txt").write_text("\n\n")
    out = {"corpus": "data/corpus", "tokenize": "data/tokens.zarr"}[stage]
    before = hash_path(work / out)
    set_params(work, lambda r: mutate(r, tmp_path))
    res = sh(sys.executable, "-m", f"stages.{stage}", cwd=work, check=False)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert hash_path(work / out) == before


def test_hf_model_source(repo, tmp_path):
    transformers = pytest.importorskip("transformers")
    work = clone_repo(repo, tmp_path / "r")
    cfg = transformers.GPT2Config(vocab_size=512, n_positions=32, n_embd=48, n_layer=1, n_head=4)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")

    def use_hf(r):
        r["model"].update(source="hf", hook="transformer.h.0.mlp.act", hf={"name_or_path": str(tmp_path / "gpt2")})

    set_params(work, use_hf)
    sh("dvc", "repro", "evaluate@standard-128", cwd=work)  # the splice goes through the same hook as the cache
    assert (work / "models/transformer/model.safetensors").exists()
    acts = zarr.open_group(work / "data/activations.zarr", mode="r")
    assert acts["acts"].shape == (48000, 4 * 48) and acts.attrs["hook"] == "transformer.h.0.mlp.act"
    assert acts.attrs["model_config"]["model_type"] == "gpt2"
    # activations.exclude's defaults for a Hugging Face model: its special tokens (here the separator) and
    # positions above 10 x the median norm are left out, counted per rule, and evaluation skips them.
    rule, keep, tok = acts.attrs["exclude"], acts["keep"][:], acts["tokens"][:]
    separator = zarr.open_group(work / "data/tokens.zarr", mode="r").attrs["separator_id"]
    assert rule["special_token_ids"] == [separator] and rule["norm_factor"] == 10 and rule["median_norm"] > 0
    assert not keep[tok == separator].any()
    stats = json.loads((work / "metrics/activations.json").read_text())["excluded"]
    assert stats["special_tokens"] == (tok == separator).sum() > 0 and stats["tokens"] == (~keep).sum()
    eval_start = acts.attrs["splits"]["eval"][0]
    ev = json.loads((work / "metrics/sae/standard-128/eval.json").read_text())
    assert ev["loss_original"] > 0 and np.isfinite(ev["kl_divergence"])
    assert ev["n_excluded_tokens"] == stats["eval"] == (~keep[eval_start:]).sum() > 0
    assert ev["n_eval_tokens"] == 8000 - ev["n_excluded_tokens"]


def kill_once_checkpointed(work: Path, stage_args: list[str], ckpt: Path) -> None:
    """Start a stage directly, SIGKILL it as soon as its first checkpoint is on disk."""
    proc = subprocess.Popen([sys.executable, "-m", *stage_args], cwd=work, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint was written before the kill"


def test_killed_train_model_stage_resumes(repo, tmp_path):
    work = clone_repo(repo, tmp_path / "r")
    set_params(work, lambda r: r["model"].update(steps=300, checkpoint_every=50))
    ckpt = work / "checkpoints/train_model/checkpoint.pt"
    kill_once_checkpointed(work, ["stages.train_model"], ckpt)
    res = sh("dvc", "repro", "train_model", cwd=work)
    assert "resuming subject-model training" in res.stdout + res.stderr
    assert not ckpt.exists()
    resumed = load_model(work / "models/transformer").state_dict()
    fresh = clone_repo(repo, tmp_path / "fresh")
    set_params(fresh, lambda r: r["model"].update(steps=300, checkpoint_every=50))
    sh("dvc", "repro", "train_model", cwd=fresh)
    clean = load_model(fresh / "models/transformer").state_dict()
    assert all(torch.equal(resumed[k], clean[k]) for k in clean)


@pytest.mark.parametrize("size", [128, 256])
def test_dictionaries_in_saelens_format_with_provenance_and_curves(repo, size):
    name = f"standard-{size}"
    import mlflow
    from safetensors.torch import load_file

    from monosemantic.sae.export import load_sae

    out = repo / f"models/sae/{name}"
    cfg = json.loads((out / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"], cfg["architecture"]) == (128, size, "standard")
    assert cfg["metadata"]["context_size"] == 32 and cfg["metadata"]["hook_name"] == "mlp.act"
    weights = load_file(out / "sae_weights.safetensors")
    assert weights["W_enc"].shape == (128, size) and weights["W_dec"].shape == (size, 128)
    assert torch.allclose(weights["W_dec"].norm(dim=1), torch.ones(size), atol=1e-5)
    record = json.loads((out / "provenance.json").read_text())
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    acts_md5 = next(o["md5"] for o in lock["cache_activations"]["outs"] if o["path"] == "data/activations.zarr")
    assert record["inputs"]["activations"]["md5"] == acts_md5 and record["dictionary"] == name
    assert [step for step, _ in record["resampling"]] == [30, 60]

    m = json.loads((repo / f"metrics/sae/{name}/train.json").read_text())
    assert m["tokens_seen"] == 120 * 512 and m["resample_events"] == 2 and 0 < m["l0"] < size
    assert all(np.isfinite(m[k]) for k in ("loss", "mse", "penalty"))
    rows = (repo / f"plots/sae/{name}/train.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"step", "loss", "mse", "l0", "dead_features", "resampled_neurons"} <= set(header)
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert 30 in steps and 60 in steps and steps[-1] == 120

    # The stored activations' eval split is reconstructed better than by the mean alone.
    acts = zarr.open_group(repo / "data/activations.zarr", mode="r")
    a, b = acts.attrs["splits"]["eval"]
    x = torch.from_numpy(acts["acts"][a:b].astype(np.float32))
    mse = load_sae(out)(x).mse.item()
    assert mse < ((x - x.mean(0)) ** 2).mean().item()

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("monosemantic")
    run = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags["monosemantic.stage"] == f"train_sae@{name}")
    assert {d.dataset.digest for d in run.inputs.dataset_inputs} == {acts_md5}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "l0") if m.step] == steps
    assert any(a.path == name for a in client.list_artifacts(run.info.run_id))


def test_killed_train_sae_stage_resumes_to_the_same_dictionary(repo, tmp_path):
    from monosemantic.sae.export import load_sae

    def longer(r):
        r["sae"]["train"].update(steps=300, checkpoint_every=50)
        r["sae"]["standard"].update(resample_steps=[100, 200])

    work = clone_repo(repo, tmp_path / "r")
    set_params(work, longer)
    ckpt = work / "checkpoints/train_sae/standard-128/checkpoint.pt"
    kill_once_checkpointed(work, ["stages.train_sae", "standard-128"], ckpt)
    res = sh("dvc", "repro", "train_sae@standard-128", cwd=work)
    assert "resuming SAE training" in res.stdout + res.stderr and not ckpt.exists()
    fresh = clone_repo(repo, tmp_path / "fresh")
    set_params(fresh, longer)
    sh("dvc", "repro", "train_sae@standard-128", cwd=fresh)
    resumed, clean = load_sae(work / "models/sae/standard-128"), load_sae(fresh / "models/sae/standard-128")
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), clean.state_dict().values()))
    assert (work / "plots/sae/standard-128/train.csv").read_text().count("\n") == 31  # header + 300/10 rows


def audit_cli(path, cwd):
    res = subprocess.run([str(BIN / "monosemantic"), "audit", str(path), "--json"], cwd=cwd, env=ENV,
                         capture_output=True, text=True, timeout=300)
    return res.returncode, json.loads(res.stdout)


def test_audit_of_a_dictionary_lists_its_lineage_and_passes(repo):
    code, report = audit_cli("models/sae/standard-128", repo)
    assert code == 0 and report["verdict"] == "verified", (report["problems"], report["unchecked"])
    assert set(report["artifacts"]) == {"models/sae/standard-128", "data/activations.zarr", "models/transformer",
                                        "data/tokens.zarr", "data/tokenizer.json", "data/corpus"}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in ("corpus", "tokenizer", "tokenize", "train_model", "cache_activations"):
        out = next(o for o in lock[stage]["outs"] if o["path"].startswith(("data/", "models/")))
        assert report["artifacts"][out["path"]]["md5"] == out["md5"]
    corpus = report["artifacts"]["data/corpus"]["record"]
    assert {s["kind"] for s in corpus["sources"]} == {"builtin", "synthetic"}
    assert all("seed" in s for s in corpus["sources"]) and corpus["sources"][0]["python"]
    text = sh(str(BIN / "monosemantic"), "audit", "models/sae/standard-128", cwd=repo).stdout
    assert "audit passed: verified" in text and "[cache_activations]" in text and "mlflow run" in text


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "edit, culprit, kind",
    [
        (lambda w: _flip_byte(next(p for p in sorted((w / "data/activations.zarr/acts/c").rglob("*")) if p.is_file())),
         "data/activations.zarr", "changed"),
        (lambda w: _flip_byte(w / "data/tokenizer.json"), "data/tokenizer.json", "changed"),
        (lambda w: set_params(w, lambda r: r["tokenize"].update(seed=7)), "data/tokens.zarr", "stale"),
        (lambda w: set_params(w, lambda r: r["compute"].update(precision="bf16")),
         ("models/transformer", "data/activations.zarr", "models/sae/standard-128"), "stale"),  # each torch stage's
    ],
)
def test_audit_names_what_changed_after_the_run(repo, tmp_path, edit, culprit, kind):
    work = clone_repo(repo, tmp_path / "r")
    edit(work)
    code, report = audit_cli("models/sae/standard-128", work)
    assert code == 1 and not report["ok"]
    culprits = {culprit} if isinstance(culprit, str) else set(culprit)
    found = [p for p in report["problems"] if p["path"] in culprits and p["kind"] == kind]
    assert {p["path"] for p in found} == culprits, report["problems"]
    assert all(p["path"] in culprits for p in report["problems"]), report["problems"]
    if kind == "changed":
        assert found[0]["expected"] != found[0]["actual"] and found[0]["actual"]


def test_a_copied_dictionary_is_audited_from_its_own_record(repo, tmp_path):
    shutil.copytree(repo / "models/sae/standard-128", tmp_path / "elsewhere")
    code, report = audit_cli(tmp_path / "elsewhere", tmp_path)
    assert code == 3 and report["verdict"] == "unverifiable" and report["workspace"] is None
    assert report["artifacts"]["data/activations.zarr"]["md5"].endswith(".dir")
    assert [g["path"] for g in report["unchecked"]] == ["data/activations.zarr", str(tmp_path / "elsewhere")]


EVAL_KEYS = {"mse", "fvu", "l0", "loss_original", "loss_reconstructed", "loss_zero_ablation", "loss_mean_ablation",
             "loss_recovered", "loss_recovered_mean_ablation", "kl_divergence", "dead_fraction", "ultralow_fraction",
             "ultralow_threshold", "dense_fraction", "n_eval_tokens"}


@pytest.mark.parametrize("name", ["standard-128", "standard-256", "topk-128", "topk-256"])
def test_every_dictionary_is_evaluated_on_held_out_tokens(repo, name):
    size = int(name.split("-")[1])
    ev = json.loads((repo / f"metrics/sae/{name}/eval.json").read_text())
    assert EVAL_KEYS <= set(ev) and all(np.isfinite(v) for v in ev.values())
    assert ev["n_eval_tokens"] == 8000  # evaluate.max_tokens of the tiny params, all from the eval split
    assert 0 < ev["l0"] < size and 0 < ev["fvu"] < 1 and ev["kl_divergence"] > 0
    assert ev["loss_zero_ablation"] > ev["loss_original"] and ev["loss_mean_ablation"] > ev["loss_original"]
    assert 0 < ev["loss_recovered"] <= 1 and 0 < ev["loss_recovered_mean_ablation"] <= 1
    for key in ("dead_fraction", "ultralow_fraction", "dense_fraction"):
        assert 0 <= ev[key] <= 1
    assert ev["ultralow_threshold"] == 1 / 8000  # 1e-6 cannot be resolved from 8000 tokens
    histogram = pl.read_csv(repo / f"plots/density/{name}.csv")
    assert histogram["features"].sum() + ev["dead_features"] == size


def test_architectures_and_sizes_are_compared_and_summarised(repo):
    for arch in ("standard", "topk"):
        frontier = pl.read_csv(repo / f"plots/frontier/{arch}.csv")
        assert frontier["dict_size"].to_list() == [128, 256] and frontier["l0"].is_between(0, 256).all()
    assert pl.read_csv(repo / "plots/frontier/topk.csv")["l0"].to_list() == pytest.approx([8, 8], abs=0.5)
    nearest = pl.read_parquet(repo / "reports/splitting/nearest.parquet")
    assert nearest.height == 2 * 256 and set(nearest["architecture"]) == {"standard", "topk"}
    assert set(nearest["other_size"]) == {128} and nearest["nearest"].max() < 128
    assert nearest["cosine"].is_between(-1, 1).all()
    assert {"standard", "topk"} <= set(json.loads((repo / "metrics/splitting.json").read_text()))
    summary = (repo / "reports/summary.md").read_text()
    assert "| 128 |" in summary and "| 256 |" in summary and "256 → 128" in summary


def test_metrics_diff_shows_the_evaluation_after_a_params_change(repo, tmp_path):
    work = clone_repo(repo, tmp_path / "r")
    sh("git", "add", "-A", cwd=work)
    sh("git", "commit", "-qm", "baseline results", cwd=work)
    set_params(work, lambda r: r["evaluate"].update(max_tokens=4000))
    out = sh("dvc", "repro", cwd=work).stdout
    assert {*(f"evaluate@{a}-{s}" for a in ("standard", "topk") for s in (128, 256)), "frontier", "report"} == set(
        line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    diff = sh("dvc", "metrics", "diff", "--md", cwd=work).stdout
    assert "metrics/sae/topk-128/eval.json" in diff and "n_eval_tokens" in diff and "loss_recovered" in diff
    assert "| 8000 " in diff and "| 4000 " in diff


def test_retraining_one_architecture_leaves_the_others_interpretation_standing(repo, tmp_path):
    """interpret@<dict> reads its own architecture's splitting families alone: topk retrained reruns
    compare, which rewrites standard's file byte for byte, so DVC skips interpret@standard-*."""
    work = clone_repo(repo, tmp_path / "r")
    standard = {n: hash_path(work / f"reports/features/standard-{n}") for n in (128, 256)}
    set_params(work, lambda r: r["sae"]["topk"].update(k=6))
    out = sh("dvc", "repro", cwd=work).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {*(f"{stage}@topk-{s}" for stage in ("train_sae", "evaluate", "interpret") for s in (128, 256)),
                   "compare", "frontier", "report"}
    assert {n: hash_path(work / f"reports/features/standard-{n}") for n in (128, 256)} == standard
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=work).stdout
    for name in ("standard-128", "topk-256"):  # a standing interpretation's record still holds
        code, report = audit_cli(f"reports/features/{name}", work)
        assert code == 0 and report["verdict"] == "verified", (report["problems"], report["unchecked"])


@pytest.mark.parametrize("name", ["standard-128", "standard-256", "topk-128", "topk-256"])
def test_features_and_neurons_are_explained_and_scored(repo, name):
    size = int(name.split("-")[1])
    m = json.loads((repo / f"metrics/sae/{name}/interp.json").read_text())
    assert m["backend"] == "baseline" and m["n_tokens"] == 40000
    assert m["features"]["scored"] == 40 and m["neurons"]["scored"] + m["neurons"]["too_rare"] == 128
    for kind in ("features", "neurons"):  # explanations beat the chance level of a random one
        assert m[kind]["mean_pearson"] > m[kind]["control_mean_pearson"] + 0.3, m[kind]
    d = m["difference"]
    assert d["ci_low"] < d["mean"] < d["ci_high"]
    # The planted base64 domain has a feature of its own.
    assert m["proxies"]["base64"]["feature_f1"] >= 0.8, m["proxies"]
    features = pl.read_parquet(repo / f"reports/features/{name}/features.parquet")
    assert features.height == size + 128 and features.filter(pl.col("interpreted")).height == m["features"][
        "interpreted"] + m["neurons"]["interpreted"]
    sample = features.filter(pl.col("chosen_for").list.contains("sample"))
    assert sample.height == 40 + m["neurons"]["sampled"] and m["features"]["sampled"] == 40
    rare = pl.col("explanation_error").str.starts_with("too rare").fill_null(False)  # a named unit may be
    explained = features.filter(pl.col("interpreted") & ~rare)
    assert explained["explanation"].null_count() == 0 and explained["score_pearson"].is_between(-1, 1).all()
    assert explained["logit_boost_tokens"].list.len().min() == 10
    # pass 2 re-encodes only the chosen units: a sign flip of a value within rounding of 0 may move a count
    assert ((explained["hist_counts"].list.sum() - explained["density"] * 40000).abs() <= 2).all()
    examples = pl.read_parquet(repo / f"reports/features/{name}/examples.parquet")
    held = examples.filter(pl.col("split") == "heldout")
    assert held["simulated"].null_count() == 0 and examples.filter(pl.col("split") == "train")["simulated"].null_count() \
        == examples.filter(pl.col("split") == "train").height
    assert set(examples["group"]) == {"top", "interval", "random", "token"}
    for (kind, index), rows in examples.group_by(["kind", "index"]):  # no context on both sides
        train = set(rows.filter(pl.col("split") == "train")["context"])
        assert not train & set(rows.filter(pl.col("split") == "heldout")["context"])
    assert json.loads((repo / f"reports/features/{name}/provenance.json").read_text())["inputs"]["sae"]["md5"]


def test_every_unit_the_report_names_has_a_page(repo):
    """The best feature for each proxy, the largest splitting families and every link of the site lead to a
    page with examples, not only the random sample's units."""
    from tests.test_report_site import broken_links, named_units, pageless

    reports = repo / "reports"
    assert not broken_links(reports)
    summary = (reports / "summary.md").read_text()
    named = named_units(summary)
    for name in (f"{a}-{s}" for a in ("standard", "topk") for s in (128, 256)):
        for proxy in json.loads((repo / f"metrics/sae/{name}/interp.json").read_text())["proxies"].values():
            if proxy.get("feature") is not None:
                assert (name, "feature", proxy["feature"]) in named, (name, proxy)
    splits = [line for line in summary.splitlines() if line.startswith("- ") and " → " in line]
    assert all(named_units(line) for line in splits), splits
    families = [f for arch in ("standard", "topk")
                for f in json.loads((reports / f"splitting/families/{arch}.json").read_text())["families"]
                if any(len(c["features"]) > 1 for c in f["children"].values())]
    members = {(f"{f['architecture']}-{f['dict_size']}", "feature", f["feature"]) for f in families} | {
        (f"{f['architecture']}-{size}", "feature", i) for f in families for size, c in f["children"].items()
        for i in c["features"]}
    assert named and not pageless(reports, named | members)
