import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run a test from an empty directory (relative paths land in tmp_path)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


from hypothesis import settings  # noqa: E402

# No per-example deadline: a loaded 2-core CI machine is slow in bursts. Derandomized on CI
# so a failure there reproduces locally with the same examples.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


# ---------------------------------------------------------------- the tiny pipeline, shared by e2e tests
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
ENV.pop("MLFLOW_TRACKING_URI", None)


def sh(*cmd, cwd, check=True, timeout=600):
    res = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def copy_project(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    for stale in ("dvc.lock", "metrics", "plots", "data", "models", "reports"):
        target = dest / stale
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    shutil.copy(ROOT / "tests/params_tiny.yaml", dest / "params.yaml")
    sh("git", "init", "-q", cwd=dest)
    sh("git", "add", "-A", cwd=dest)
    sh("git", "commit", "-qm", "tiny", cwd=dest)
    return dest


@pytest.fixture(scope="session")
def repo(tmp_path_factory):
    """The tiny pipeline, run once per test session: under pytest-xdist the first worker to need it
    builds it while the others wait on a lock, then all share it (tests clone it before changing it)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # every worker's base temp lies under the session's
    path, done = shared / "tiny", shared / "tiny.done"
    with FileLock(str(shared / "tiny.lock")):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            copy_project(path)
            res = sh("dvc", "repro", cwd=path, timeout=1800)  # ~5 min on a quiet 2-core machine
            (path / "repro.log").write_text(res.stdout + res.stderr)
            done.touch()
    return path


def clone_repo(repo: Path, dest: Path) -> Path:
    shutil.copytree(repo, dest, symlinks=True)
    return dest


def set_params(path: Path, mutate) -> None:
    raw = yaml.safe_load((path / "params.yaml").read_text())
    mutate(raw)
    (path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


# ---------------------------------------------------------------- servers on 127.0.0.1 (tests/servers.py)
@pytest.fixture(scope="session")
def s3_server():
    """moto's S3, for this test session (each xdist worker has its own); its endpoint URL."""
    from tests.servers import free_port, start_moto

    port = free_port()
    server = start_moto(port)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch) -> str:
    """This process talks to the session's server; returns a new, empty bucket's URL prefix."""
    from tests.servers import new_bucket, s3_env

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_env(s3_server, tmp_path).items():
        monkeypatch.setenv(name, value)
    return new_bucket()


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """`mlflow server` for this test session, its artifacts proxied to a bucket of the session's moto
    S3: its `url`, `artifacts` (the destination, s3://<bucket>/mlartifacts), `env` (the S3 endpoint and
    credentials it runs with) and `db` (its SQLite backend store)."""
    from types import SimpleNamespace

    from tests.servers import free_port, new_bucket, s3_env, start_mlflow, stop

    tmp = tmp_path_factory.mktemp("mlflow-server")
    env = s3_env(s3_server, tmp)
    with pytest.MonkeyPatch.context() as mp:  # the bucket is made as the server will reach it
        for name, value in env.items():
            mp.setenv(name, value)
        artifacts = f"{new_bucket()}/mlartifacts"
    port = free_port()
    db = tmp / "mlflow.db"
    proc = start_mlflow(port, f"sqlite:///{db}", artifacts, env, tmp / "server.log")
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", artifacts=artifacts, env=env, db=db)
    stop(proc)


def pytest_collection_modifyitems(config, items):
    """Order the files so that, under `-n 2 --dist loadfile --no-loadscope-reorder` (xdist would
    otherwise sort the files by their number of tests), one worker starts building the tiny pipeline
    at once while the other runs the unit tests, instead of waiting on its lock: the first file that
    needs `repo`, then every file that does not, then the other files that do."""
    needs = {item.path for item in items if "repo" in getattr(item, "fixturenames", ())}
    first = next((item.path for item in items if item.path in needs), None)
    items.sort(key=lambda item: 0 if item.path == first else 2 if item.path in needs else 1)  # stable
