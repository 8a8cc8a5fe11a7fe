"""Fault injection on the tiny pipeline: bad data, kills, hostile params.

Each case in FAULTS breaks a copy of the finished tiny run in one way, runs one command and
expects a clear error (exit status 2, a message naming the problem) with every existing output
left as it was. Adding a case is a few lines: a name, what to break, the command, the message.
Cases that need more than that (kills, locks held, the MLflow store) follow the table.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import zarr

from monosemantic.provenance import hash_path
from tests.conftest import ENV, ROOT, clone_repo, set_params, sh

pytestmark = pytest.mark.e2e
SHARD = "data/activations.zarr/acts/c/3/0"  # a training shard of the tiny store


def flip_byte(path: str) -> Callable[[Path], None]:
    def mutate(work: Path) -> None:
        data = bytearray((work / path).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (work / path).write_bytes(bytes(data))
    return mutate


def delete(path: str) -> Callable[[Path], None]:
    return lambda work: (work / path).unlink()


def nan_rows(work: Path) -> None:
    """64 NaN rows, written through zarr so that every checksum is valid."""
    acts = zarr.open_array(work / "data/activations.zarr/acts", mode="r+")
    acts[4096:4160] = np.nan


def nan_column(work: Path) -> None:
    """A NaN in every row: whatever rows a stage samples, it meets one."""
    acts = zarr.open_array(work / "data/activations.zarr/acts", mode="r+")
    column = np.asarray(acts[:])
    column[:, 0] = np.nan
    acts[:] = column


def params(mutate: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda work: set_params(work, mutate)


def sizes(*values) -> Callable[[Path], None]:
    return params(lambda r: r["sae"].update(dict_sizes=list(values)))


@dataclass
class Fault:
    name: str
    breaks: Callable[[Path], None]
    cmd: list[str]
    message: str                      # a fragment of stderr, lower case
    keeps: tuple[str, ...] = ()       # outputs that must be byte-identical afterwards
    timeout: int = 240


STAGE = [sys.executable, "-m"]
FAULTS = [
    Fault("corrupt chunk, train_sae", flip_byte(SHARD), [*STAGE, "stages.train_sae", "standard-128"],
          "fails its checksum", ("models/sae/standard-128",), timeout=120),
    Fault("missing shard", delete(SHARD), [*STAGE, "stages.train_sae", "standard-128"],
          "acts/c/3/0 is missing", ("models/sae/standard-128",)),
    Fault("missing shard, interpret", delete("data/activations.zarr/tokens/c/0"), [*STAGE, "stages.interpret", "standard-128"],
          "tokens/c/0 is missing", ("reports/features/standard-128",)),
    Fault("nan activations", nan_rows, [*STAGE, "stages.train_sae", "standard-128"],
          "non-finite activation at row 4096", ("models/sae/standard-128",)),
    Fault("nan activations, evaluate", nan_column, [*STAGE, "stages.evaluate", "standard-128"],
          "non-finite activation", ("metrics/sae/standard-128/eval.json",)),
    Fault("dictionary size 0", sizes(128, 0), [*STAGE, "stages.train_sae", "standard-128"],
          "sae.dict_sizes", ("models/sae/standard-128",)),
    Fault("negative dictionary size", sizes(128, -256), [*STAGE, "stages.evaluate", "standard-128"],
          "sae.dict_sizes", ("metrics/sae/standard-128/eval.json",)),
    Fault("duplicate dictionary size", sizes(128, 128), [*STAGE, "stages.compare"],
          "sae.dict_sizes", ("reports/splitting", "plots/splitting", "metrics/splitting.json")),
    Fault("families older than a dictionary", flip_byte("models/sae/standard-256/sae_weights.safetensors"),
          [*STAGE, "stages.interpret", "standard-128"], "dvc repro compare", ("reports/features/standard-128",)),
    Fault("unknown dictionary", lambda work: None, [*STAGE, "stages.train_sae", "topk-999"],
          "'topk-999' is not one of params.yaml's", ("models/sae/topk-128",)),
    Fault("dictionary larger than memory", sizes(128, 4_000_000), [*STAGE, "stages.train_sae", "standard-128"],
          "sae.dict_sizes", ("models/sae/standard-128",)),
    Fault("callable proxy without opt-in",
          params(lambda r: r["interpret"].update(proxies=[{"name": "x", "callable": "os:system"}])),
          [*STAGE, "stages.interpret", "standard-128"], "callable", ("reports/features/standard-128",)),
    Fault("plain-http endpoint with a key",
          params(lambda r: r["interpret"].update(backend="openai", openai={"base_url": "http://example.com/v1"})),
          [*STAGE, "stages.interpret", "standard-128"], "http", ("reports/features/standard-128",)),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_fails_clearly_and_keeps_outputs(repo, tmp_path, fault):
    work = clone_repo(repo, tmp_path / "r")
    before = {p: hash_path(work / p) for p in fault.keeps}
    fault.breaks(work)
    res = subprocess.run(fault.cmd, cwd=work, env=ENV, capture_output=True, text=True, timeout=fault.timeout)
    assert res.returncode == 2, f"exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert fault.message in res.stderr.lower(), res.stderr[-3000:]
    assert {p: hash_path(work / p) for p in fault.keeps} == before


def test_report_refuses_interpretations_of_an_earlier_dictionary(repo, tmp_path):
    """An interpret run that failed leaves the previous pages: the report must not show them as current."""
    work = clone_repo(repo, tmp_path / "r")
    before = hash_path(work / "reports/index.html")
    sae = work / "models/sae/standard-128/cfg.json"
    sae.write_text(sae.read_text() + " ")  # any change to the dictionary the pages were made from
    res = sh(sys.executable, "-m", "stages.report", cwd=work, check=False)
    assert res.returncode == 2 and "interpret@standard-128" in res.stderr, res.stderr[-2000:]
    assert hash_path(work / "reports/index.html") == before


def test_a_second_process_of_a_stage_is_refused(repo, tmp_path):
    import fcntl

    work = clone_repo(repo, tmp_path / "r")
    lock = work / ".cache/locks/train_sae@standard-128.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write("process 4242 since earlier\n")
        held.flush()
        res = sh(sys.executable, "-m", "stages.train_sae", "standard-128", cwd=work, check=False)
    assert res.returncode == 2 and "already running (process 4242" in res.stderr, res.stderr[-2000:]
    sh(sys.executable, "-m", "stages.compare", cwd=work)  # and the lock is per stage, released on exit


def _runs(work: Path) -> dict[str, list[str]]:
    with sqlite3.connect(work / "mlflow.db") as con:
        rows = con.execute("SELECT r.status, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                           "WHERE t.key = 'monosemantic.stage'").fetchall()
    out: dict[str, list[str]] = {}
    for status, stage in rows:
        out.setdefault(stage, []).append(status)
    return out


def _training_with_its_run_open(work: Path) -> subprocess.Popen:
    """A long train_sae@standard-128, returned once its MLflow run is RUNNING."""
    set_params(work, lambda r: r["sae"]["train"].update(steps=3000))
    proc = subprocess.Popen([sys.executable, "-m", "stages.train_sae", "standard-128"], cwd=work, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while "RUNNING" not in _runs(work).get("train_sae@standard-128", []) and time.time() < deadline:
        time.sleep(0.2)
    return proc


@pytest.mark.parametrize("then", ["compare", "train_sae"])
def test_a_killed_stage_leaves_no_run_running(repo, tmp_path, then):
    work = clone_repo(repo, tmp_path / "r")
    proc = _training_with_its_run_open(work)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "RUNNING" in _runs(work)["train_sae@standard-128"]
    if then == "compare":  # any later stage closes it
        sh(sys.executable, "-m", "stages.compare", cwd=work)
    else:  # and so does the same stage re-run, which holds that stage's lock itself
        shutil.copy(repo / "params.yaml", work / "params.yaml")
        sh(sys.executable, "-m", "stages.train_sae", "standard-128", cwd=work)
    assert "RUNNING" not in _runs(work)["train_sae@standard-128"] and "KILLED" in _runs(work)["train_sae@standard-128"]


def test_sigterm_ends_the_run_killed(repo, tmp_path):
    work = clone_repo(repo, tmp_path / "r")
    proc = _training_with_its_run_open(work)
    proc.terminate()
    proc.wait(timeout=240)  # a bound on a hang: on two loaded cores (two test workers) exiting once took > 60 s
    assert proc.returncode == 130 and "RUNNING" not in _runs(work)["train_sae@standard-128"]
    assert "KILLED" in _runs(work)["train_sae@standard-128"]


def test_a_sigterm_that_lands_in_a_finaliser_still_ends_the_stage(tmp_path):
    """Python drops an exception raised in a finaliser (SQLAlchemy's weakref callbacks run while MLflow
    starts): the signal is sent again and ends the stage, where it used to run on to its end."""
    code = textwrap.dedent("""
        import os, signal, sys, time
        from stages._stage import end_on_signals
        end_on_signals()
        class Finalised:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.5)  # the interrupt is raised here, and dropped
        try:
            Finalised()
            time.sleep(20)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode == 130 and time.monotonic() - t0 < 15, res.stderr
    assert "Exception ignored" not in res.stderr


def test_a_second_sigterm_does_not_cut_short_the_first_ones_cleanup(tmp_path):
    """The first signal's cleanup (MLflow marking the run KILLED, temporary outputs removed) runs to its end."""
    code = textwrap.dedent("""
        import os, signal, sys, time
        from stages._stage import end_on_signals
        restore = end_on_signals()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(20)
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            print("cleaned up")
        restore()
        sys.exit(130)
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode == 130 and "cleaned up" in res.stdout, res.stderr


def test_a_kill_while_the_mlflow_store_is_created_leaves_no_broken_store(tmp_path):
    """SIGKILL in the middle of MLflow's migrations: the store is absent or whole, never half."""
    db = tmp_path / "mlflow.db"
    code = f"from monosemantic.tracking import ensure_store; ensure_store('sqlite:///{db}')"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=ENV)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        tmp = list(tmp_path.glob(".mlflow.db.*.tmp"))
        if tmp and tmp[0].stat().st_size > 0:  # migrations under way
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not db.exists() or _complete(db)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and _complete(db), run.stderr[-2000:]


def test_a_half_created_mlflow_store_is_set_aside_and_rebuilt(repo, tmp_path):
    """A store an earlier version left half-created (tables, no alembic stamp) is repaired, saying so."""
    work = clone_repo(repo, tmp_path / "r")
    with sqlite3.connect(work / "mlflow.db") as con:
        con.execute("DROP TABLE alembic_version")
    res = sh(sys.executable, "-m", "stages.compare", cwd=work)
    assert "half-created" in res.stderr and list(work.glob("mlflow.db.broken-*"))
    assert _runs(work) == {"compare": ["FINISHED"]}


def _complete(db: Path) -> bool:
    from monosemantic.tracking import _complete as complete

    return complete(db)
