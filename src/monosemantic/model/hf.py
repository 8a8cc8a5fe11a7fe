"""Any causal LM from Hugging Face transformers, loaded by name or local path."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from monosemantic.errors import UserError


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("model.source 'hf' needs transformers: pip install 'monosemantic[hf]'") from None
    return transformers


def load_hf_model(name_or_path: str | Path, dtype: str = "float32", revision: str | None = None) -> nn.Module:
    transformers = _transformers()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(name_or_path), revision=revision, dtype=getattr(torch, dtype)
        )
    except OSError as e:
        raise UserError(f"model.hf.name_or_path {str(name_or_path)!r}: could not load a causal LM: {e}") from None
    return model.eval()


