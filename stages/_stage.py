"""What every stage does around its own work, so stage modules stay a screen long.

Validate the whole params.yaml before anything else, check that the MLflow server (when
MLFLOW_TRACKING_URI names one) answers, take the device `compute` asks for (and, under torchrun,
join the process group: rank 0 alone locks, logs and writes), open one MLflow run, hash and log
the inputs, and build the provenance record; a UserError ends the stage with
its message and exit status 2, and no output is replaced (outputs are written atomically).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import polars as pl

from monosemantic import provenance, tracking
from monosemantic.compute import Compute
from monosemantic.compute import setup as setup_compute
from monosemantic.errors import UserError
from monosemantic.params import Params, load_params


class DictionaryName(NamedTuple):
    name: str  # <architecture>-<size>: train_sae@<name>, models/sae/<name>, metrics/sae/<name>, ...
    architecture: str
    size: int


def require_current(output: Path, source: str, stage: str, now: str | None = None) -> None:
    """Refuse `output` unless its record shows it was made from today's `source`, whose hash is `now` when
    known (a failed re-run of `stage`, or one run by hand out of order, leaves outputs made from another)."""
    used = {e.get("path"): e.get("md5") for e in ((provenance.read_record(output) or {}).get("inputs") or {}).values()}
    if Path(source).exists() and used.get(source) != (now := now or provenance.hash_path(source)):
        made = (f"from an earlier {source} (md5 {used[source]}, now {now})" if source in used
                else f"without {source} among the inputs its record names")
        raise UserError(f"{output} was made {made}: re-run `dvc repro {stage}` first")


def dictionary_name(params: Params, arg: str) -> DictionaryName:
    """A per-dictionary stage's argument, checked once params.yaml is (a bad list there is the likelier fault)."""
    names = params.sae.names()
    if arg not in names:
        raise UserError(f"dictionary {arg!r} is not one of params.yaml's ({', '.join(names)}: sae.architectures x "
                        "sae.dict_sizes): run one of those, or add its architecture or size")
    architecture, size = arg.rsplit("-", 1)
    return DictionaryName(arg, architecture, int(size))


class Stage:
    def __init__(self, name: str, params: Params, section: str | None, run: tracking.Run,
                 sections: dict[str, dict[str, Any]], compute: Compute = Compute(),
                 dictionary: DictionaryName | None = None):
        self.name, self.params, self.run, self.compute = name, params, run, compute
        self.dictionary = dictionary
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

    def dict_size(self, arg: str, key: str = "sae.dict_sizes") -> int:
        """The stage's <size> argument, checked once params.yaml is (a bad list there is the likelier fault)."""
        sizes = _section(self.params, key)
        if not arg.isdigit() or int(arg) not in sizes:
            raise UserError(f"dictionary size {arg} is not in {key} {sizes}: run one of those sizes, or add it")
        return int(arg)

    def fingerprint(self, *extra: Any) -> str:
        """Identifies the work (inputs + params): a checkpoint is resumed only if it matches."""
        blob = json.dumps([self.inputs, self.section.model_dump(mode="json"), *extra], sort_keys=True)
        return hashlib.md5(blob.encode()).hexdigest()

    def record(self, **extra: Any) -> dict[str, Any]:
        return provenance.make_record(self.name, self.sections, self.inputs, self.run.run_id,
                                      {"compute": self.compute.describe(), **extra})

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


def _dump(value: Any) -> Any:
    """A params section or value (a list such as sae.dict_sizes) as JSON data."""
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


class _NoParams:
    def model_dump(self, mode: str = "json") -> dict:
        return {}


def size_argument(stage: str, what: str = "<architecture>-<size>") -> str:
    """The argument of a per-dictionary stage, checked only after params.yaml (see dictionary_name)."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m stages.{stage} {what}")
    return sys.argv[1]


LOCKS = Path(".cache/locks")


@contextlib.contextmanager
def _exclusive(name: str) -> Iterator[None]:
    """One process per stage: a second one (a killed `dvc repro` leaves its stage running, and
    the next starts another beside it) stops instead of sharing checkpoints and outputs."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    with open(LOCKS / f"{name}.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise UserError(f"stage {name} is already running ({f.read().strip() or 'another process'}); "
                            "wait for it to finish, or stop that process, then re-run") from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        yield


def _running(name: str) -> bool:
    """Whether a process of this workspace holds stage `name`'s lock now."""
    path = LOCKS / f"{name}.lock"
    if not path.exists():
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


_signalled: int | None = None  # the signal ending the stage, while its KeyboardInterrupt is on its way out
_resend: threading.Timer | None = None


def _interrupt(signum, frame):
    global _signalled
    if _signalled is not None:
        return  # one at a time: a second signal must not cut short the first one's cleanup (the run's KILLED)
    _signalled = signum
    raise KeyboardInterrupt(f"signal {signum}")


def _unraisable(u) -> None:
    """Python drops an exception raised in a finaliser (a weakref callback, ``__del__``; SQLAlchemy runs
    them while MLflow starts): when that was our interrupt, the stage would run on to its end. Send the
    signal again, a moment later, from a thread, so that it lands in the stage's own code."""
    global _signalled, _resend
    if isinstance(u.exc_value, KeyboardInterrupt) and _signalled is not None:
        signum, _signalled = _signalled, None
        _resend = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        _resend.daemon = True
        _resend.start()
        return
    sys.__unraisablehook__(u)


def end_on_signals() -> Callable[[], None]:
    """SIGTERM and Ctrl-C end the stage like an exception (its run KILLED, its outputs kept), even where
    Python drops the exception; returns what restores Python's own handling once the stage is over."""
    handlers = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    sys.unraisablehook = _unraisable

    def restore() -> None:
        global _signalled, _resend
        if _resend is not None:
            _resend.cancel()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        sys.unraisablehook, _signalled, _resend = sys.__unraisablehook__, None, None
    return restore


@contextlib.contextmanager
def run_stage(name: str, section: str | None, also: tuple[str, ...] = (), dictionary: str | None = None
              ) -> Iterator[Stage]:
    """`section`: the stage's own params section; `also`: other sections it reads (logged and recorded),
    where "{architecture}" stands for that of `dictionary`, the argument of a per-dictionary stage."""
    restore = end_on_signals()
    try:
        params = load_params()
        named = dictionary_name(params, dictionary) if dictionary is not None else None
        also = tuple(k.format(architecture=named.architecture) if named else k for k in also)
        sections = {k: _dump(_section(params, k)) for k in (section, *also) if k}
        tracking.check()  # an MLflow server that does not answer stops the stage here, not after its work
        c = params.compute
        with setup_compute(c.device, c.precision, c.threads, c.timeout_s) as compute:
            if not compute.is_main:  # rank 0 holds the lock and the MLflow run, and writes
                yield Stage(name, params, section, tracking.SilentRun(), sections, compute, named)
                return
            with _exclusive(name), tracking.start_run(name, sections, provenance.code_version(),
                                                      lambda st: st != name and _running(st),  # ours: its lock
                                                      compute.describe()) as run:
                yield Stage(name, params, section, run, sections, compute, named)
    except UserError as e:
        print(f"error in stage {name}: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"stage {name} interrupted; outputs are unchanged and a re-run resumes from its last checkpoint",
              file=sys.stderr)
        sys.exit(130)
    finally:
        restore()
