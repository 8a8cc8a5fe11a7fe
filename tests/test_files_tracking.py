"""The `files` corpus source is tracked by DVC through corpus.files_root, on our own dvc.yaml:
editing, adding or removing an input file makes `dvc status` report corpus changed and
`dvc repro` rebuild it; with nothing changed, nothing reruns."""

import json

import pytest

from tests.conftest import copy_project, set_params, sh


def status(path) -> str:
    return sh("dvc", "status", "corpus", cwd=path).stdout


@pytest.mark.e2e
def test_editing_adding_or_removing_a_files_input_reruns_corpus(tmp_path):
    """A root outside the project (e.g. ~/texts): the harder case; the default texts/ is inside."""
    repo = copy_project(tmp_path / "repo")
    texts = tmp_path / "texts"
    (texts / "sub").mkdir(parents=True)
    (texts / "a.txt").write_text("the first document, plain text")
    for name in ("b", "d"):
        (texts / f"sub/{name}.jsonl").write_text(json.dumps({"text": f"document {name}, from jsonl"}) + "\n")
    root = str(texts)
    set_params(repo, lambda r: r["corpus"].update(
        files_root=root, sources=[{"kind": "files", "paths": [f"{texts}/**/*.txt", f"{texts}/**/*.jsonl"]}]))

    sh("dvc", "repro", "corpus", cwd=repo)
    assert "Data and pipelines are up to date" in status(repo)
    assert "didn't change, skipping" in sh("dvc", "repro", "corpus", cwd=repo).stdout

    for change in (lambda: (texts / "a.txt").write_text("the first document, edited"),
                   lambda: (texts / "sub/c.txt").write_text("a new file the glob matches"),
                   lambda: (texts / "sub/b.jsonl").unlink()):
        change()
        out = status(repo)
        assert "corpus:" in out and "changed deps" in out and root in out, out
        assert "Running stage 'corpus'" in sh("dvc", "repro", "corpus", cwd=repo).stdout
        assert "Data and pipelines are up to date" in status(repo)

    texts_now = json.loads((repo / "data/corpus/provenance.json").read_text())["sources"][0]["files"]
    assert sorted(f["path"].rsplit("/", 1)[-1] for f in texts_now) == ["a.txt", "c.txt", "d.jsonl"]


@pytest.mark.e2e
def test_without_a_files_source_the_watched_root_is_stable(tmp_path):
    """The default: corpus.files_root is the committed texts/ directory; repro twice, nothing reruns."""
    repo = copy_project(tmp_path / "repo")
    set_params(repo, lambda r: r["corpus"].setdefault("files_root", "texts"))
    sh("dvc", "repro", "corpus", cwd=repo)
    assert "Data and pipelines are up to date" in status(repo)
    lock = (repo / "dvc.lock").read_text()
    assert "path: texts\n" in lock
    assert "didn't change, skipping" in sh("dvc", "repro", "corpus", cwd=repo).stdout
