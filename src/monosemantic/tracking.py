"""The one module that talks to MLflow.

One run per stage execution, tagged with the stage and the code version; inputs are MLflow
dataset inputs whose digest is the same content hash the provenance records carry, so a run
found in the MLflow UI leads to the same lineage as ``monosemantic audit``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

EXPERIMENT = "monosemantic"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


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


@contextlib.contextmanager
def start_run(stage: str, params: Mapping[str, Any], code: Mapping[str, Any]) -> Iterator[Run]:
    """An MLflow run for one stage execution; it ends FAILED if the stage raises."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT))
    tags = {
        "monosemantic.stage": stage,
        "git_commit": code.get("git_commit") or "unknown",
        "git_dirty": str(code.get("git_dirty")),
    }
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        mlflow.log_params(flatten(params))
        yield Run(mlflow, run)
