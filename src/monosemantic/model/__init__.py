"""Subject models: the built-in one-layer transformer, or a Hugging Face causal LM.

Both are saved as ``model.safetensors`` + ``config.json`` and hooked the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from monosemantic.model.transformer import Transformer, TransformerConfig

BUILTIN = "monosemantic-1l"


def save_model(model: nn.Module, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(model, Transformer):
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out_dir / "model.safetensors")
        (out_dir / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    else:
        model.save_pretrained(out_dir, safe_serialization=True)


def load_model(model_dir: str | Path) -> nn.Module:
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("architecture") != BUILTIN:
        from monosemantic.model.hf import load_hf_model

        return load_hf_model(model_dir)
    cfg.pop("architecture")
    model = Transformer(TransformerConfig(**cfg))
    model.load_state_dict(load_file(model_dir / "model.safetensors"))
    return model.eval()


def model_config(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def vocab_size(model: nn.Module) -> int:
    if isinstance(model, Transformer):
        return model.cfg.vocab_size
    return int(model.config.vocab_size)


__all__ = ["Transformer", "TransformerConfig", "save_model", "load_model", "model_config", "vocab_size"]
