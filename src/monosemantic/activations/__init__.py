"""Activation cache: a resumable, sharded Zarr writer and its reader."""

from monosemantic.activations.store import (
    ActivationStore,
    Layout,
    cache_activations,
    open_store,
)

__all__ = ["ActivationStore", "Layout", "cache_activations", "open_store"]
