"""Activation cache: a resumable, sharded Zarr writer and its verified, shuffled reader."""

from monosemantic.activations.store import (
    ActivationStore,
    Layout,
    StoreError,
    VerifiedArray,
    cache_activations,
    open_store,
)

__all__ = ["ActivationStore", "Layout", "StoreError", "VerifiedArray", "cache_activations", "open_store"]
