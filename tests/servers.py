"""Servers the tests start on 127.0.0.1 and stop at the end: moto's S3 (and IAM) and an MLflow
tracking server; each within a bounded timeout, nothing started by hand. Fixtures live in
conftest.py; this module is the how."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

SECRET = "moto-secret-" + secrets.token_hex(12)  # made at run time: it must appear in no output or file
START_TIMEOUT_S = 30
MLFLOW_START_TIMEOUT_S = 120  # it creates its SQLite schema first: tens of seconds on two loaded cores
STOP_TIMEOUT_S = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, what: str, timeout_s: float = START_TIMEOUT_S, alive=lambda: True) -> None:
    """Poll `url` until it answers; RuntimeError naming `what` after `timeout_s` or once `alive()` is false."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if not alive():
                raise RuntimeError(f"{what} exited before answering at {url}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer at {url} within {timeout_s:.0f} s") from None
            time.sleep(0.2)


def start_moto(port: int):
    """moto's S3 (and IAM) in a thread of this process, answering on 127.0.0.1:`port` within the timeout."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    starting = threading.Thread(target=server.start, daemon=True)  # its own wait for readiness has no limit
    starting.start()
    starting.join(START_TIMEOUT_S)
    if starting.is_alive():
        raise RuntimeError(f"moto server on 127.0.0.1:{port} did not start within {START_TIMEOUT_S} s")
    try:
        wait_for(f"http://127.0.0.1:{port}/moto-api/data.json", "moto server")
    except RuntimeError:
        server.stop()
        raise
    return server


def s3_env(endpoint: str, tmp: Path, secret: str = SECRET) -> dict[str, str]:
    """Credentials and endpoint as a user sets them: in the environment. No ~/.aws, no instance metadata."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "AKIATESTKEY", "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-creds")}


def new_bucket() -> str:
    """A new, empty bucket on the server the environment points at; its URL."""
    from monosemantic import storage

    name = f"t-{uuid.uuid4().hex[:12]}"
    storage.RemoteLocation(f"s3://{name}/x").fs.mkdir(name)
    return f"s3://{name}"


def start_mlflow(port: int, backend: str, artifacts: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port`, one worker, artifacts proxied to `artifacts` (an s3:// URL
    reached with `env`'s credentials and endpoint); answering /health within the timeout, or stopped."""
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", artifacts]
    env = {**os.environ, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner processes
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "wb") as out:  # a file, not a pipe: nobody reads a pipe while it runs
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", "mlflow server", MLFLOW_START_TIMEOUT_S,
                 alive=lambda: proc.poll() is None)
    except RuntimeError as e:
        stop(proc)
        raise RuntimeError(f"{e}; its log ends:\n{log.read_text(errors='replace')[-3000:]}") from None
    return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group a server was started in (mlflow server runs uvicorn as a child),
    SIGKILL to whatever of it is left after STOP_TIMEOUT_S."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(STOP_TIMEOUT_S)
