"""`monosemantic audit`: verified, unverifiable or failed, and never a traceback.

Small fake workspaces (an activation store and a dictionary, with records and a dvc.lock)
keep these to seconds; one test runs on the tiny pipeline's real dictionary.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from monosemantic import audit as audit_mod
from monosemantic.cli import main
from monosemantic.params import load_params
from monosemantic.provenance import PROVENANCE_FILE, hash_path, write_record
from tests.conftest import ROOT

SAE = "models/sae/8"


@pytest.fixture(autouse=True)
def no_dvc(monkeypatch):
    """DVC's status is an optimisation; without it the audit hashes everything itself."""
    monkeypatch.setattr(audit_mod.Workspace, "_dvc_modified", lambda self: None)


def artifact(root: Path, rel: str, files: dict[str, bytes], stage: str, inputs: dict | None = None, **extra) -> Path:
    out = root / rel
    out.mkdir(parents=True)
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    write_record(out, {"stage": stage, "inputs": inputs or {}, "params": {}, **extra})
    return out


def write_lock(root: Path, *rels: str) -> None:
    stages = {rel: {"outs": [{"path": rel, "md5": hash_path(root / rel)}]} for rel in rels}
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))


@pytest.fixture
def ws(tmp_path) -> Path:
    """A workspace whose dictionary was trained on its activation store, as dvc.lock says."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(ROOT / "tests/params_tiny.yaml", root / "params.yaml")
    acts = artifact(root, "data/acts", {"c/0": b"\x00" * 64}, "cache_activations")
    artifact(root, SAE, {"sae_weights.safetensors": bytes(range(256)), "cfg.json": b"{}"}, "train_sae@8",
             {"activations": {"path": "data/acts", "md5": hash_path(acts)}})
    write_lock(root, "data/acts", SAE)
    return root


def run(path, capsys, *flags) -> tuple[int, str, str]:
    code = main(["audit", str(path), *flags])
    out, err = capsys.readouterr()
    return code, out, err


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def edit_record(out: Path, change) -> None:
    record = json.loads((out / PROVENANCE_FILE).read_text())
    change(record)
    (out / PROVENANCE_FILE).write_text(json.dumps(record))


def hashed_paths(monkeypatch) -> list[Path]:
    seen: list[Path] = []
    real = audit_mod.hash_path
    monkeypatch.setattr(audit_mod, "hash_path", lambda p: seen.append(Path(p).resolve()) or real(p))
    return seen


# ---------------------------------------------------------------- three verdicts


def test_a_workspace_whose_records_and_lock_agree_is_verified(ws, capsys):
    code, out, _ = run(ws / SAE, capsys)
    assert code == 0 and "audit passed: verified" in out
    code, out, _ = run(ws / SAE, capsys, "--json")
    assert code == 0 and json.loads(out)["verdict"] == "verified"


def test_a_copied_dictionary_whose_files_match_is_unverifiable_not_passed(ws, tmp_path, capsys):
    copy = shutil.copytree(ws / SAE, tmp_path / "elsewhere")
    code, out, _ = run(copy, capsys)
    assert code == 3 and "passed" not in out
    verdict = out.splitlines()[-1]
    assert verdict.startswith("audit UNVERIFIABLE") and "data/acts" in verdict and "inside the workspace" in verdict
    report = json.loads(run(copy, capsys, "--json")[1])
    assert report["verdict"] == "unverifiable" and not report["problems"] and not report["ok"]


def test_a_copied_dictionary_with_a_flipped_byte_fails_naming_the_file(ws, tmp_path, capsys):
    copy = shutil.copytree(ws / SAE, tmp_path / "elsewhere")
    flip_byte(copy / "sae_weights.safetensors")
    code, out, _ = run(copy, capsys, "--json")
    report = json.loads(out)
    assert code == 1 and report["verdict"] == "failed"
    assert [(p["kind"], p["file"]) for p in report["problems"]] == [("changed", "sae_weights.safetensors")]
    assert "sae_weights.safetensors" in run(copy, capsys)[1]


def test_a_forged_record_in_a_copy_is_not_passed(ws, tmp_path, capsys):
    copy = shutil.copytree(ws / SAE, tmp_path / "elsewhere")
    edit_record(copy, lambda r: r["inputs"]["activations"].update(md5="0" * 32 + ".dir"))
    assert run(copy, capsys)[0] == 3


def test_a_file_added_to_a_copy_fails(ws, tmp_path, capsys):
    copy = shutil.copytree(ws / SAE, tmp_path / "elsewhere")
    (copy / "extra.bin").write_bytes(b"x")
    code, out, _ = run(copy, capsys, "--json")
    assert code == 1 and [p["kind"] for p in json.loads(out)["problems"]] == ["unrecorded file"]


def test_a_file_hash_recorded_for_a_path_outside_the_artifact_is_missing_not_read(ws, tmp_path, capsys):
    copy = shutil.copytree(ws / SAE, tmp_path / "elsewhere")
    (tmp_path / "secret").write_text("secret")
    edit_record(copy, lambda r: r["files"].update({"../secret": hash_path(tmp_path / "secret")}))
    code, out, _ = run(copy, capsys, "--json")
    assert code == 1 and [(p["kind"], p["file"]) for p in json.loads(out)["problems"]] == [("missing", "../secret")]


def test_a_flipped_byte_in_the_workspace_fails_naming_the_file(ws, capsys):
    flip_byte(ws / SAE / "cfg.json")
    code, out, _ = run(ws / SAE, capsys, "--json")
    problems = json.loads(out)["problems"]
    assert code == 1 and {"cfg.json"} == {p["file"] for p in problems if p["file"]}


def test_a_record_without_file_hashes_is_unverifiable_detached_and_vouched_for_by_dvc_lock(ws, tmp_path, capsys):
    edit_record(ws / SAE, lambda r: r.pop("files"))
    copy = shutil.copytree(ws / SAE, tmp_path / "elsewhere")
    code, out, _ = run(copy, capsys, "--json")
    assert code == 3 and any("no file hashes" in g["detail"] for g in json.loads(out)["unchecked"])
    write_lock(ws, "data/acts", SAE)  # the record made before file hashes, as DVC locked it
    assert run(ws / SAE, capsys)[0] == 0


def test_an_artifact_dvc_lock_does_not_list_is_unverifiable(ws, capsys):
    write_lock(ws, "data/acts")
    code, out, _ = run(ws / SAE, capsys)
    assert code == 3 and f"not checked: {SAE}: not an output in dvc.lock" in out


@pytest.mark.parametrize("sizes, verdict", [([128, 256], 0), ([128, 512], 1)])
def test_a_params_key_recorded_beside_the_sections_is_checked_like_them(ws, capsys, sizes, verdict):
    """A stage that reads one key of another section (interpret: sae.dict_sizes) records its value, a list."""
    compare = load_params(ws / "params.yaml").model_dump(mode="json")["compare"]
    edit_record(ws / SAE, lambda r: r["params"].update({"sae.dict_sizes": sizes, "compare": compare}))
    write_lock(ws, "data/acts", SAE)
    code, out, _ = run(ws / SAE, capsys, "--json")
    stale = [(p["detail"], p["expected"], p["actual"]) for p in json.loads(out)["problems"]]
    assert code == verdict and stale == ([] if verdict == 0 else [
        ("params.yaml sae.dict_sizes changed since it was made", "[128, 512]", "[128, 256]")])


@pytest.mark.parametrize("append, verdict", [(False, 0), (True, 1)])
def test_a_list_item_added_to_params_yaml_is_stale_and_a_schema_default_is_not(ws, capsys, append, verdict):
    """A source appended to corpus.sources changes the corpus as DVC sees it; defaults params.yaml omits do not."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    recorded = load_params(ws / "params.yaml").model_dump(mode="json")["corpus"]
    recorded.pop("seed")  # a field the schema gained after the record was made, left at its default
    params["corpus"].pop("seed")
    if append:
        params["corpus"]["sources"].append({"kind": "synthetic", "domains": ["hex"], "weight": 5})
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    edit_record(ws / SAE, lambda r: r["params"].update({"corpus": recorded}))
    write_lock(ws, "data/acts", SAE)
    code, out, _ = run(ws / SAE, capsys, "--json")
    stale = {(p["detail"], p["expected"]) for p in json.loads(out)["problems"]}
    n = len(recorded["sources"])
    assert code == verdict and stale == (set() if not append else {
        (f"params.yaml corpus.sources.{n}.{key} was added since it was made", None) for key in ("kind", "domains", "weight")})


# ---------------------------------------------------------------- files-source inputs of the corpus


@pytest.fixture
def corpus(ws, tmp_path) -> tuple[Path, Path, Path]:
    """A corpus made from one file in the workspace and one outside it (the user's ~/texts)."""
    inside, outside = ws / "texts/a.txt", tmp_path / "home/texts/b.txt"
    for path in (inside, outside):
        path.parent.mkdir(parents=True)
        path.write_text(f"text of {path.name}")
    listed = [{"path": "texts/a.txt", "md5": hash_path(inside)}, {"path": str(outside), "md5": hash_path(outside)}]
    artifact(ws, "data/corpus", {"part-0.parquet": b"rows"}, "corpus", sources=[{"kind": "files", "files": listed}])
    write_lock(ws, "data/corpus")
    return ws / "data/corpus", inside, outside


def test_a_corpus_whose_source_files_are_unchanged_is_verified(corpus, capsys):
    assert run(corpus[0], capsys)[0] == 0


@pytest.mark.parametrize("which", [1, 2])
@pytest.mark.parametrize("edit, kind", [(lambda p: p.write_text("edited"), "changed"), (Path.unlink, "missing")])
def test_a_changed_or_deleted_source_file_fails_naming_it(corpus, capsys, which, edit, kind):
    edit(corpus[which])
    code, out, _ = run(corpus[0], capsys, "--json")
    problems = json.loads(out)["problems"]
    assert code == 1 and [(p["kind"], Path(p["file"]).name) for p in problems] == [(kind, corpus[which].name)]


def test_a_source_file_recorded_as_a_directory_is_missing_and_not_hashed(ws, capsys, monkeypatch):
    listed = [{"path": "/", "md5": "0" * 32}]
    artifact(ws, "data/corpus", {"part-0.parquet": b"rows"}, "corpus", sources=[{"kind": "files", "files": listed}])
    write_lock(ws, "data/corpus")
    seen = hashed_paths(monkeypatch)
    code, out, _ = run(ws / "data/corpus", capsys, "--json")
    assert code == 1 and [(p["kind"], p["file"]) for p in json.loads(out)["problems"]] == [("missing", "/")]
    assert Path("/") not in seen


# ---------------------------------------------------------------- malformed input: one line, exit 2


def assert_clear_error(code: int, err: str, names: str) -> None:
    assert code == 2 and "Traceback" not in err and names in err and err.count("\n") == 1, err


@pytest.mark.parametrize("text", [
    "{not json", "[1, 2]", '"a string"',
    '{"inputs": {}, "params": {}}',
    '{"stage": 3, "inputs": {}, "params": {}}',
    '{"stage": "x", "inputs": {"a": {"path": 1, "md5": "m"}}, "params": {}}',
    '{"stage": "x", "inputs": [], "params": {}}',
    '{"stage": "x", "inputs": {}, "params": {"s": 1}}',
    '{"stage": "x", "inputs": {}, "params": {}, "files": ["a"]}',
    '{"stage": "x", "inputs": {}, "params": {}, "code": "abc"}',
    '{"stage": "x", "inputs": {}, "params": {}, "sources": [{"kind": "files", "files": [{"path": "a"}]}]}',
])
@pytest.mark.parametrize("where", ["data/acts", SAE])
def test_a_malformed_record_is_a_clear_error(ws, capsys, text, where):
    (ws / where / PROVENANCE_FILE).write_text(text)
    code, _, err = run(ws / SAE, capsys)
    assert_clear_error(code, err, str(ws / where / PROVENANCE_FILE))


@pytest.mark.parametrize("zarr_json", ["{", '{"attributes": []}', '{"attributes": {"provenance": "x"}}'])
def test_a_malformed_zarr_store_record_is_a_clear_error(ws, capsys, zarr_json):
    (ws / "data/acts" / PROVENANCE_FILE).unlink()
    (ws / "data/acts/zarr.json").write_text(zarr_json)
    code, _, err = run(ws / SAE, capsys)
    assert_clear_error(code, err, str(ws / "data/acts/zarr.json"))


@pytest.mark.parametrize("text", ["a: [", "corpus: 3\n", "sae: {train: {lr: fast}}\n"])
def test_a_malformed_params_yaml_is_a_clear_error(ws, capsys, text):
    (ws / "params.yaml").write_text(text)
    code, _, err = run(ws / SAE, capsys)
    assert code == 2 and "Traceback" not in err and str(ws / "params.yaml") in err.splitlines()[0]


@pytest.mark.parametrize("text", ["stages: [", "- a list\n", "stages: {a: {outs: [{path: x}]}}\n",
                                  "stages: {a: {outs: [{path: x, md5: 3}]}}\n", "stages: {a: 1}\n"])
def test_a_malformed_dvc_lock_is_a_clear_error(ws, capsys, text):
    (ws / "dvc.lock").write_text(text)
    code, _, err = run(ws / SAE, capsys)
    assert_clear_error(code, err, str(ws / "dvc.lock"))


@pytest.mark.parametrize("target", ["/", "ws", "ws/data"])
def test_a_path_without_a_record_is_not_an_artifact_and_nothing_is_hashed(ws, tmp_path, capsys, monkeypatch, target):
    monkeypatch.setattr(audit_mod, "hash_path", lambda p: pytest.fail(f"hashed {p}"))
    code, _, err = run(target if target == "/" else tmp_path / target, capsys)
    assert_clear_error(code, err, "is not a monosemantic artifact")


# ---------------------------------------------------------------- recorded paths stay in the workspace


@pytest.mark.parametrize("recorded", ["../../../../etc/passwd", "/etc/passwd", "data/../../outside", ".",
                                      "data/link"])
def test_a_recorded_input_outside_the_workspace_fails_and_is_never_read(ws, tmp_path, capsys, monkeypatch, recorded):
    (tmp_path / "outside").write_text("secret")
    (ws / "data/link").symlink_to(tmp_path / "outside")
    edit_record(ws / SAE, lambda r: r["inputs"]["activations"].update(path=recorded))
    write_lock(ws, "data/acts", SAE)
    seen = hashed_paths(monkeypatch)
    code, out, _ = run(ws / SAE, capsys, "--json")
    problems = json.loads(out)["problems"]
    assert code == 1 and [(p["path"], p["kind"]) for p in problems] == [(recorded, "escapes")]
    assert "path escapes the workspace" in problems[0]["detail"]
    assert all(p.is_relative_to(ws.resolve()) for p in seen), seen


def test_an_input_params_yaml_names_may_live_outside_the_workspace(ws, tmp_path, capsys):
    """tokenizer.path: the user's own tokenizer.json, wherever it is."""
    tok = tmp_path / "mine/tokenizer.json"
    tok.parent.mkdir()
    tok.write_text("{}")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["tokenizer"] = {"kind": "file", "path": str(tok)}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    edit_record(ws / SAE, lambda r: r["inputs"].update(tokenizer_file={"path": str(tok), "md5": hash_path(tok)}))
    write_lock(ws, "data/acts", SAE)
    assert run(ws / SAE, capsys)[0] == 0
    tok.write_text('{"edited": 1}')
    code, out, _ = run(ws / SAE, capsys, "--json")
    assert code == 1 and [(p["path"], p["kind"]) for p in json.loads(out)["problems"]] == [(str(tok), "changed")]


# ---------------------------------------------------------------- the tiny pipeline's own dictionary


@pytest.mark.e2e
def test_the_pipelines_dictionary_records_its_files_and_a_copy_checks_them(repo, tmp_path, capsys):
    record = json.loads((repo / "models/sae/standard-128" / PROVENANCE_FILE).read_text())
    assert {"sae_weights.safetensors", "cfg.json"} <= set(record["files"])
    assert "tokenizer.json" in json.loads((repo / "data/tokenizer.provenance.json").read_text())["files"]
    copy = shutil.copytree(repo / "models/sae/standard-128", tmp_path / "elsewhere")
    assert run(copy, capsys)[0] == 3
    flip_byte(copy / "sae_weights.safetensors")
    code, out, _ = run(copy, capsys)
    assert code == 1 and "sae_weights.safetensors differs" in out
