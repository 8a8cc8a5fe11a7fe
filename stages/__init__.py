"""DVC stages: one thin module each over the monosemantic library."""

import os
import sys

# Logged to a file (dvc repro > log, CI): a progress line every 15 s, not every step.
# tqdm reads this when imported, so it is set here, before any stage imports the library.
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_MININTERVAL", "15")
