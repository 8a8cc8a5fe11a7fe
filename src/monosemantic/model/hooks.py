"""One hook mechanism for every model: a module named by its dotted path.

Capturing stops the forward pass right after the hooked module, so caching activations does
not pay for the layers above it (the unembedding dominates a one-layer model's cost).
Splicing replaces the module's output for the whole forward pass (evaluation, ablations).
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Callable, Iterator

import torch
from torch import nn

from monosemantic.errors import UserError


def get_module(model: nn.Module, path: str) -> nn.Module:
    modules = dict(model.named_modules())
    if path not in modules:
        close = difflib.get_close_matches(path, list(modules), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"model.hook: the model has no module {path!r}{hint}")
    return modules[path]


class _Stop(Exception):
    pass


@torch.no_grad()
def capture(model: nn.Module, path: str, tokens: torch.Tensor) -> torch.Tensor:
    """The output of module `path` when `model` reads `tokens` (the forward stops there)."""
    box: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        box.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = get_module(model, path).register_forward_hook(hook)
    try:
        model(tokens)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not box:
        raise UserError(f"model.hook: module {path!r} did not run in the forward pass")
    return box[0]


def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token logits from the built-in transformer or a Hugging Face causal LM."""
    out = model(tokens)
    return out.logits if hasattr(out, "logits") else out


@contextlib.contextmanager
def splice(model: nn.Module, path: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While open, module `path` outputs fn(its output): e.g. an SAE's reconstruction, or zeros."""

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    handle = get_module(model, path).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
