"""The one module that talks to MLflow.

One run per stage execution, tagged with the stage and the code version; inputs are MLflow
dataset inputs whose digest is the same content hash the provenance records carry, so a run
found in the MLflow UI leads to the same lineage as ``monosemantic audit``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from monosemantic.errors import UserError

EXPERIMENT = "monosemantic"
TAG_STAGE, TAG_HOST, TAG_WORKSPACE = "monosemantic.stage", "monosemantic.host", "monosemantic.workspace"
CHECK_TIMEOUT_S = 5  # the reachability check's connect and read limit (MLflow's own: 120 s, 7 retries)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check(uri: str | None = None) -> None:
    """Stop before any work when the tracking server `uri` names (MLFLOW_TRACKING_URI) does not answer.

    MLflow itself would retry for minutes, and only once the run opens; a stage would otherwise
    fail late, or hang. One GET of the server's `/health` (unauthenticated, also under basic auth)
    with a short timeout, no retries. A server that answers at all, even 401 or 404, is left to
    MLflow; connection errors, timeouts and 5xx (a proxy whose MLflow is down) are a UserError
    naming the URI without its user:password part. A local store (sqlite, file) is not checked.
    """
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    from monosemantic.storage import public_url  # storage owns URLs and their credentials

    public = public_url(uri)
    fix = ("start the server (see README, \"A shared MLflow server\"), or unset MLFLOW_TRACKING_URI "
           "to track in this workspace's sqlite:///mlflow.db; nothing was run and no output changed")
    cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")  # MLflow's own TLS settings, as its client reads them
    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1")
    try:
        answer = requests.get(uri.rstrip("/") + "/health", timeout=CHECK_TIMEOUT_S,
                              verify=cert or not insecure, cert=os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"))
    except requests.Timeout:
        raise UserError(f"the MLflow tracking server at {public} (MLFLOW_TRACKING_URI) gave no answer "
                        f"within {CHECK_TIMEOUT_S} s: {fix}") from None
    except requests.RequestException as e:  # the message holds host and port, never the user:password part
        why = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(e))
        raise UserError(f"the MLflow tracking server at {public} (MLFLOW_TRACKING_URI) is unreachable "
                        f"({why.group(1).strip() if why else type(e).__name__}): {fix}") from None
    if answer.status_code >= 500:
        raise UserError(f"the MLflow tracking server at {public} (MLFLOW_TRACKING_URI) answered {answer.status_code} "
                        f"to GET /health: {fix}")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)) and any(isinstance(x, Mapping) for x in v):
            for i, x in enumerate(v):
                out.update(flatten(x, f"{key}.{i}.") if isinstance(x, Mapping) else {f"{key}.{i}": x})
        else:
            out[key] = v
    return out


class Run:
    def __init__(self, mlflow_module, run):
        self._mlflow = mlflow_module
        self.run_id: str = run.info.run_id

    def log_input(self, name: str, path: str | Path, digest: str, context: str = "input") -> None:
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        source = LocalArtifactDatasetSource(str(Path(path).resolve()))
        self._mlflow.log_input(MetaDataset(source, name=name, digest=digest), context=context)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if finite:
            self._mlflow.log_metrics(finite, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)


class SilentRun(Run):
    """What ranks other than the writing one log to: nothing (rank 0 holds the stage's one run)."""

    def __init__(self):
        self.run_id = None

    def log_input(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, *args, **kwargs) -> None:
        pass

    def log_artifact(self, *args, **kwargs) -> None:
        pass


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _complete(db: Path) -> bool:
    """Whether MLflow finished creating `db` (alembic stamps its version last)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def ensure_store(uri: str) -> None:
    """Create a SQLite tracking store atomically, and set aside one a kill left half-created.

    MLflow creates its schema table by table; a process killed meanwhile leaves a file every
    later run fails on ("table ... already exists"). Building it under a temporary name and
    linking it into place means the file at `uri` is either absent or complete.
    """
    db = _sqlite_path(uri)
    if db is None:
        return
    if db.exists() and not _complete(db):
        aside = db.with_name(f"{db.name}.broken-{int(time.time())}")
        os.replace(db, aside)
        print(f"tracking: {db} was left half-created (a killed first run?); moved it to {aside} "
              "and created a new one", file=sys.stderr)
    if db.exists():
        return
    import mlflow

    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    mlflow.MlflowClient(f"sqlite:///{tmp}").search_experiments()  # runs MLflow's migrations
    try:
        os.link(tmp, db)  # never replaces a store another process finished first
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _end_orphaned(mlflow_module, experiment_id: str, alive: Callable[[str], bool]) -> None:
    """Runs of this workspace left RUNNING by a killed stage (no signal handler sees SIGKILL)."""
    host, workspace = socket.gethostname(), str(Path.cwd())
    client = mlflow_module.MlflowClient()
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get(TAG_HOST) == host and tags.get(TAG_WORKSPACE) == workspace and not alive(tags.get(TAG_STAGE, "")):
            client.set_terminated(run.info.run_id, "KILLED")
            print(f"tracking: marked MLflow run {run.info.run_id} ({tags.get(TAG_STAGE)}) KILLED: "
                  "its process is gone", file=sys.stderr)


@contextlib.contextmanager
def start_run(stage: str, params: Mapping[str, Any], code: Mapping[str, Any],
              alive: Callable[[str], bool] = lambda stage: True,
              compute: Mapping[str, Any] | None = None) -> Iterator[Run]:
    """An MLflow run for one stage execution: FINISHED, FAILED if the stage raises, KILLED if
    interrupted. `alive(stage)` says whether a stage is running now, so that runs left RUNNING by
    a killed process of this workspace are closed as KILLED. `compute` (device, precision, world
    size) is logged as params and tags."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    uri = tracking_uri()
    ensure_store(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT))
    _end_orphaned(mlflow, experiment.experiment_id, alive)
    tags = {
        TAG_STAGE: stage,
        TAG_HOST: socket.gethostname(),
        TAG_WORKSPACE: str(Path.cwd()),
        "git_commit": code.get("git_commit") or "unknown",
        "git_dirty": str(code.get("git_dirty")),
        **{f"compute.{k}": str(v) for k, v in (compute or {}).items()},
    }
    run = mlflow.start_run(run_name=stage, tags=tags)
    try:
        mlflow.log_params(flatten({**params, "compute": dict(compute or {})}))
        yield Run(mlflow, run)
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")
