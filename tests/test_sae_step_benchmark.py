"""benchmarks/sae_step.py at toy shapes: every registered architecture gets its step, its ratio to
the matmul peak of the same shapes and its trainer figures (the speed targets are the script's to
measure at full shapes, not a test's)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

from monosemantic.sae import ARCHITECTURES

ROOT = Path(__file__).resolve().parents[1]
POSITIVE = ("l0", "density", "trainer_l0", "step_tokens_per_s", "trainer_tokens_per_s")
RATIOS = ("ratio_to_peak", "trainer_to_step")  # printed to 3 decimals: toy timings on a busy machine may round to 0


def test_every_architecture_is_measured_at_toy_shapes():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    out = subprocess.run([sys.executable, "benchmarks/sae_step.py", "--d-in", "16", "--d-sae", "64", "--batch", "64",
                          "--steps", "2", "--device", "cpu"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    values = dict(re.findall(r"^(\w+\.\w+)=(\S+)$", out.stdout, flags=re.M))
    for arch in ARCHITECTURES:
        for name in POSITIVE + RATIOS:
            v = float(values[f"{arch}.{name}"])
            assert math.isfinite(v) and (v > 0 if name in POSITIVE else v >= 0), (arch, name, v)
        assert float(values[f"{arch}.l0"]) < 64  # sparse, not every latent
