import os
from pathlib import Path

import pytest

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
