"""`monosemantic diff` in a small git+DVC repo made here, and the pull-request workflow that posts it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
WORKFLOW = ROOT / ".github/workflows/pull_request.yml"

SCORE = """\
import json, yaml
p = yaml.safe_load(open("params.yaml"))["train"]
json.dump({"loss": p["lr"] * 2, "steps": p["steps"]}, open("metrics.json", "w"))
"""
DVC_YAML = """\
stages:
  score:
    cmd: python score.py
    deps: [score.py]
    params: [train]
    metrics:
      - metrics.json: {cache: false}
"""


def sh(*cmd, cwd, check=True):
    res = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)
    if check and res.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def diff(*args, cwd, check=True):
    return sh(sys.executable, "-m", "monosemantic.cli", "diff", *args, cwd=cwd, check=check)


def rows(markdown: str) -> list[list[str]]:
    """The body rows of every markdown table, as lists of cells."""
    lines = [line for line in markdown.splitlines() if line.startswith("|") and not line.startswith("|--")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines
            if not line.startswith("| Path")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Tag `base`: train.lr 0.1 (loss 0.2); HEAD: train.lr 0.3 (loss 0.6), reproduced; steps 10 in both."""
    path = tmp_path_factory.mktemp("review")
    dvc = (sys.executable, "-m", "dvc")
    sh("git", "init", "-q", cwd=path)
    sh(*dvc, "init", "-q", cwd=path)
    (path / "score.py").write_text(SCORE)
    (path / "dvc.yaml").write_text(DVC_YAML)
    (path / "params.yaml").write_text("train:\n  lr: 0.1\n  steps: 10\n")
    sh(sys.executable, "score.py", cwd=path)  # the stage's output, without a second `dvc repro`
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-qm", "lr 0.1", cwd=path)
    sh("git", "tag", "base", cwd=path)
    (path / "params.yaml").write_text("train:\n  lr: 0.3\n  steps: 10\n")
    sh(*dvc, "repro", "-q", cwd=path)
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-qm", "lr 0.3", cwd=path)
    return path


def test_diff_shows_the_changed_param_and_metric_old_and_new(repo):
    out = diff("base", cwd=repo).stdout
    assert out.startswith("## ") and "`base`" in out.splitlines()[0]
    assert out.index("### Params") < out.index("### Metrics")
    assert ["params.yaml", "train.lr", "0.1", "0.3"] in rows(out)
    assert ["metrics.json", "loss", "0.2", "0.6", "0.4"] in rows(out)
    assert "steps" not in out and "no changes" not in out


def test_diff_all_lists_unchanged_params_and_metrics(repo):
    table = rows(diff("base", "--all", cwd=repo).stdout)
    assert ["params.yaml", "train.steps", "10", "10"] in table
    assert ["metrics.json", "steps", "10", "10", "0"] in table
    assert ["params.yaml", "train.lr", "0.1", "0.3"] in table


def test_diff_against_head_by_default_says_no_changes(repo):
    out = diff(cwd=repo).stdout
    assert "`HEAD`" in out.splitlines()[0]
    params, metrics = out.split("### Metrics")
    assert "no changes" in params and "no changes" in metrics and not rows(out)


def test_unknown_revision_fails_with_one_clear_line(repo):
    res = diff("no-such-branch", cwd=repo, check=False)
    assert res.returncode != 0 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1
    assert "unknown git revision 'no-such-branch'" in res.stderr and "git fetch" in res.stderr


def test_outside_a_dvc_repo_fails_with_one_clear_line(tmp_path):
    sh("git", "init", "-q", cwd=tmp_path)  # a git repo, so only DVC is missing
    res = diff(cwd=tmp_path, check=False)
    assert res.returncode != 0 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1
    assert "not a DVC repository" in res.stderr and "dvc init" in res.stderr


@pytest.mark.parametrize("action", ["store", "fetch"])
def test_results_without_a_default_remote_say_so(repo, action):
    """`dvc remote default` prints "No default remote set" (exit 1) then: not a remote's name."""
    res = sh(sys.executable, "-m", "monosemantic.cli", "results", action, "k", cwd=repo, check=False)
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert "no default DVC remote is set" in res.stderr and "dvc remote add -d" in res.stderr, res.stderr
    assert "No default remote set" not in res.stderr


# ---- the workflow ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workflow():
    return yaml.safe_load(WORKFLOW.read_text())


def test_workflow_runs_on_pull_requests_and_may_comment(workflow):
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in (triggers if isinstance(triggers, (dict, list)) else [triggers])
    assert workflow["permissions"]["pull-requests"] == "write"


def test_workflow_runs_the_tiny_pipeline_diffs_and_comments(workflow):
    def script(job):
        return "\n".join(step.get("run", "") for step in job["steps"])

    jobs = [job for job in workflow["jobs"].values() if "monosemantic diff" in script(job)]
    assert len(jobs) == 1
    steps, run = jobs[0]["steps"], script(jobs[0])
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert str(python["with"]["python-version"]) == "3.12"
    order = [run.index(s) for s in ("make init", "git worktree add", "cp tests/params_tiny.yaml params.yaml",
                                    "dvc repro", "git rev-parse HEAD", '.venv/bin/monosemantic diff "${TINY_BASE',
                                    "gh pr comment")]
    assert order == sorted(order)  # the base branch's tiny run, then this branch's, then the diff
    assert run.count("cp tests/params_tiny.yaml params.yaml") == 2
    assert re.search(r"--body-file\s+diff\.md", run)
    # With a DVC remote the base's results are fetched before, and stored after, its run.
    base = next(step for step in steps if "git worktree add" in step.get("run", ""))
    assert base["env"]["DVC_REMOTE_URL"] == "${{ secrets.DVC_REMOTE_URL }}"
    order = [base["run"].index(s) for s in ("dvc remote add --local", "monosemantic results fetch", "dvc repro",
                                            "monosemantic results store")]
    assert order == sorted(order)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert "reports/" in upload["with"]["path"]


def test_every_action_is_pinned_to_a_version_tag(workflow):
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step]
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@v\d+(\.\d+){0,2}", ref), ref
