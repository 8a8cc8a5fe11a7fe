"""Sparse dictionaries: one module per architecture on one trainer (trainer.py), one export (export.py)."""

from __future__ import annotations

from monosemantic.sae.batchtopk import BatchTopK
from monosemantic.sae.jumprelu import JumpReLU
from monosemantic.sae.matryoshka import Matryoshka
from monosemantic.sae.model import Dictionary
from monosemantic.sae.standard import Standard
from monosemantic.sae.standard_2024 import Standard2024
from monosemantic.sae.topk import TopK

ARCHITECTURES: dict[str, type[Dictionary]] = {
    cls.architecture: cls for cls in (Standard, Standard2024, TopK, BatchTopK, JumpReLU, Matryoshka)}


def build(architecture: str, d_in: int, d_sae: int, options: dict | None = None) -> Dictionary:
    """A fresh dictionary of `architecture` with its recipe's `options` (params.yaml's sae.<architecture>)."""
    return ARCHITECTURES[architecture](d_in, d_sae, **(options or {}))
