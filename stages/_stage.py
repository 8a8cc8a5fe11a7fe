"""What every stage does around its own work, so stage modules stay a screen long.

Validate the whole params.yaml before anything else, open one MLflow run, hash and log the
inputs, and build the provenance record; a UserError ends the stage with its message and
exit status 2, and no output is replaced (outputs are written atomically).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from monosemantic import provenance, tracking
from monosemantic.errors import UserError
from monosemantic.params import Params, load_params


class Stage:
    def __init__(self, name: str, params: Params, section: str | None, run: tracking.Run,
                 sections: dict[str, dict[str, Any]]):
        self.name, self.params, self.run = name, params, run
        self.section = _section(params, section)
        self.sections = sections  # every params section the stage uses, as dvc.yaml lists them
        self.inputs: dict[str, dict[str, str]] = {}

    def input(self, name: str, path: str | Path) -> str:
        """Hash an input, log it to MLflow as a dataset, remember it for provenance."""
        path = Path(path)
        if not path.exists():
            raise UserError(f"input {path} is missing: run `dvc repro` (or the stage that makes it) first")
        digest = provenance.hash_path(path)
        self.inputs[name] = {"path": path.as_posix(), "md5": digest}
        self.run.log_input(name, path, digest)
        return digest

    def fingerprint(self, *extra: Any) -> str:
        """Identifies the work (inputs + params): a checkpoint is resumed only if it matches."""
        blob = json.dumps([self.inputs, self.section.model_dump(mode="json"), *extra], sort_keys=True)
        return hashlib.md5(blob.encode()).hexdigest()

    def record(self, **extra: Any) -> dict[str, Any]:
        return provenance.make_record(self.name, self.sections, self.inputs, self.run.run_id, extra)

    def metrics(self, path: str | Path, values: dict[str, Any]) -> None:
        provenance.write_json(path, values)
        self.run.log_metrics(tracking.flatten(values))
        print(f"{self.name}: metrics written to {path}")

    def plot(self, path: str | Path, rows: list[dict[str, Any]]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame(rows).write_csv(path)


def _section(params: Params, dotted: str | None):
    """The params section a stage uses, e.g. "model" or "sae.train"; None for a stage without one."""
    if dotted is None:
        return _NoParams()
    for key in dotted.split("."):
        params = getattr(params, key)
    return params


class _NoParams:
    def model_dump(self, mode: str = "json") -> dict:
        return {}


@contextlib.contextmanager
def run_stage(name: str, section: str | None, also: tuple[str, ...] = ()) -> Iterator[Stage]:
    """`section`: the stage's own params section; `also`: other sections it reads (logged and recorded)."""
    try:
        params = load_params()
        sections = {k: _section(params, k).model_dump(mode="json") for k in (section, *also) if k}
        with tracking.start_run(name, sections, provenance.code_version()) as run:
            yield Stage(name, params, section, run, sections)
    except UserError as e:
        print(f"error in stage {name}: {e}", file=sys.stderr)
        sys.exit(2)
