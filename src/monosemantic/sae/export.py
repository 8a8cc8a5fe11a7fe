"""Dictionaries on disk in SAELens's format: ``sae_weights.safetensors`` + ``cfg.json``.

``sae_lens.SAE.load_from_disk(dir)`` loads them as a "standard" SAE that reconstructs the
same way (ReLU encoder, b_dec subtracted from the input, no activation normalisation).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from monosemantic.errors import UserError
from monosemantic.sae.model import SparseAutoencoder

WEIGHTS, CONFIG = "sae_weights.safetensors", "cfg.json"
SAE_LENS_VERSION = "6.0.0"  # the format generation written here


def save_sae(sae: SparseAutoencoder, out_dir: Path, metadata: dict | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}, out_dir / WEIGHTS)
    cfg = {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "architecture": "standard",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAE_LENS_VERSION, "sae_lens_training_version": SAE_LENS_VERSION,
                     **(metadata or {})},
    }
    (out_dir / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")


def load_sae(sae_dir: str | Path) -> SparseAutoencoder:
    sae_dir = Path(sae_dir)
    if not (sae_dir / WEIGHTS).exists() or not (sae_dir / CONFIG).exists():
        raise UserError(f"{sae_dir} holds no dictionary ({WEIGHTS} + {CONFIG}): run the train_sae stage first")
    cfg = json.loads((sae_dir / CONFIG).read_text())
    if cfg.get("architecture") != "standard" or cfg.get("normalize_activations", "none") != "none":
        raise UserError(f"{sae_dir}: only standard SAEs without activation normalisation are supported")
    sae = SparseAutoencoder(cfg["d_in"], cfg["d_sae"])
    weights = load_file(sae_dir / WEIGHTS)
    bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{sae_dir / WEIGHTS}: non-finite values in {', '.join(bad)}; "
                        f"retrain it (`dvc repro -f {sae_dir.as_posix().replace('models/sae/', 'train_sae@')}`) "
                        "or restore it with `dvc checkout`")
    sae.load_state_dict({k: weights[k].to(torch.float32) for k in ("W_enc", "b_enc", "W_dec", "b_dec")})
    return sae.eval()
