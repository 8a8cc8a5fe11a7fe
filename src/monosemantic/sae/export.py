"""Dictionaries on disk in SAELens's format: ``sae_weights.safetensors`` + ``cfg.json``.

``sae_lens.SAE.load_from_disk(dir)`` loads each architecture as the SAELens architecture that
encodes and decodes the same (standard, topk, jumprelu; BatchTopK and Matryoshka as JumpReLU,
as SAELens exports them). ``cfg.json``'s ``metadata.monosemantic`` names our architecture and
its options, so `load_sae` rebuilds the same module; a SAELens "standard" SAE without it loads
as our standard one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from monosemantic.errors import UserError
from monosemantic.sae import ARCHITECTURES
from monosemantic.sae.model import Dictionary

WEIGHTS, CONFIG = "sae_weights.safetensors", "cfg.json"
SAE_LENS_VERSION = "6.0.0"  # the format generation written here


def save_sae(sae: Dictionary, out_dir: Path, metadata: dict | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fields, tensors = sae.sae_lens_state()
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, out_dir / WEIGHTS)
    cfg = {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **fields,
        "metadata": {"sae_lens_version": SAE_LENS_VERSION, "sae_lens_training_version": SAE_LENS_VERSION,
                     **(metadata or {}),
                     "monosemantic": {"architecture": sae.architecture, "options": sae.options()}},
    }
    (out_dir / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")


def load_sae(sae_dir: str | Path) -> Dictionary:
    sae_dir = Path(sae_dir)
    if not (sae_dir / WEIGHTS).exists() or not (sae_dir / CONFIG).exists():
        raise UserError(f"{sae_dir} holds no dictionary ({WEIGHTS} + {CONFIG}): run the train_sae stage first")
    cfg = json.loads((sae_dir / CONFIG).read_text())
    ours = (cfg.get("metadata") or {}).get("monosemantic") or {"architecture": "standard", "options": {}}
    if cfg.get("normalize_activations", "none") != "none" or ours["architecture"] not in ARCHITECTURES or (
            "monosemantic" not in cfg.get("metadata", {}) and cfg.get("architecture") != "standard"):
        raise UserError(f"{sae_dir}: not a dictionary this version can load (architecture "
                        f"{ours['architecture']!r}, SAELens architecture {cfg.get('architecture')!r}, "
                        f"normalize_activations {cfg.get('normalize_activations')!r}); known: {', '.join(ARCHITECTURES)}")
    weights = load_file(sae_dir / WEIGHTS)
    bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
    if bad:
        stage = "train_sae@" + sae_dir.name
        raise UserError(f"{sae_dir / WEIGHTS}: non-finite values in {', '.join(bad)}; "
                        f"retrain it (`dvc repro -f {stage}`) or restore it with `dvc checkout`")
    cls = ARCHITECTURES[ours["architecture"]]
    return cls.from_sae_lens_state(cfg["d_in"], cfg["d_sae"], ours["options"], cfg, weights).eval()
