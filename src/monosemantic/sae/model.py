"""What every dictionary is: SAELens's parameter layout, the training loss's interface, and the
sparse products the ReLU-family encoders share.

``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``: row i of W_dec is feature i's direction (the
paper's "decoder column"). Each architecture (one module each: standard, standard_2024, topk,
batchtopk, jumprelu, matryoshka) subclasses `Dictionary` with its published recipe; the trainer,
reader, checkpoints, evaluation and export see only this interface.

Speed: a trained dictionary fires on ~1% of its features per input, so of the training step's
five B×d_in×d_sae products only the encoder's needs to be dense. `autoencode` runs x̄ = x − b_dec,
f = activation(x̄ W_enc + b_enc), x̂ = f W_dec + b_dec through `_Autoencode`, which differentiates
it by hand and, while f is sparse, computes the decoder and all of backward from f's nonzeros
alone; values and gradients are the formula's.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monosemantic.compute import Compute


class Output(NamedTuple):
    x_hat: torch.Tensor
    f: torch.Tensor
    loss: torch.Tensor  # what the optimiser minimises
    mse: torch.Tensor  # mean over elements, the same measure for every architecture
    penalty: torch.Tensor  # the architecture's sparsity or auxiliary term, before its coefficient
    stats: tuple[torch.Tensor, ...] = ()  # averaged over the ranks, then given to after_step


class Dictionary(nn.Module):
    """A sparse dictionary: `encode` is inference, `forward` the training loss. Subclasses set
    `architecture` and override what their recipe changes."""

    architecture: ClassVar[str]
    unit_norm_decoder: ClassVar[bool] = True  # renormalise rows after each step, drop their parallel gradient
    resamples: ClassVar[bool] = False  # the 2023 recipe's neuron resampling
    adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    max_grad_norm: ClassVar[float | None] = None
    sparse_below = 0.15  # _Autoencode works on f's nonzeros while fewer than this fraction of f fire: the measured
    # crossover of the ReLU step (batch 1024, d_in 128, d_sae 512, one thread: sparse/dense 0.95 at 15%, 1.13 at 18%)

    def __init__(self, d_in: int, d_sae: int, coefficient: float = 0.0):
        super().__init__()
        self.d_in, self.d_sae = d_in, d_sae
        self.coefficient = coefficient  # of `penalty` in the loss; the trainer warms it up
        # Kaiming-uniform, untied, then decoder rows at unit length: the paper's (subclasses may re-initialise).
        self.W_enc = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(d_sae, d_in), a=math.sqrt(5)).T.contiguous())
        self.W_dec = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(d_sae, d_in), a=math.sqrt(5)))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.normalize_decoder()

    def options(self) -> dict:
        """The constructor's keyword arguments beyond the shape: saved with the dictionary."""
        return {"coefficient": self.coefficient}

    def share_batches(self, compute: Compute | None, batch_size: int = 0) -> None:
        """Set by the trainer for a run (None after it): under data parallelism each rank's forward sees its
        share of a global batch of `batch_size` rows. Only what spans the batch needs to know (BatchTopK's
        selection, TopK's AuxK normaliser), to reach across the ranks through `compute`."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def encode_units(self, x: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
        """`encode(x)` for the features `units` only (all when None). Architectures whose features
        are computed independently override it to compute only those."""
        f = self.encode(x)
        return f if units is None else f[:, units]

    def forward(self, x: torch.Tensor, coefficient: float = 0.0, dead: torch.Tensor | None = None) -> Output:
        """The training loss on a batch; `dead` marks the latents that have not fired lately."""
        raise NotImplementedError

    def autoencode(self, x: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor] = torch.relu_
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂, f) with f = activation(x̄ W_enc + b_enc), an activation that keeps some positive
        pre-activations and zeroes the rest (ReLU, TopK, BatchTopK): cheap while f is sparse."""
        if not by_hand(x):
            f = activation((x - self.b_dec) @ self.W_enc + self.b_enc)  # the formula through autograd
            return self.decode(f), f
        return _Autoencode.apply(x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.sparse_below, activation)

    @torch.no_grad()
    def initialize(self, sample: torch.Tensor) -> None:
        """Data-dependent initialisation from training inputs, on rank 0 before step 0: b_dec at
        their geometric median (the paper's)."""
        self.b_dec.copy_(geometric_median(sample))

    def before_step(self) -> None:
        if self.unit_norm_decoder:
            self.remove_parallel_gradient()

    def after_step(self, stats: tuple[torch.Tensor, ...] = ()) -> None:
        if self.unit_norm_decoder:
            self.normalize_decoder()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Drop the part of each decoder row's gradient along the row, before the optimiser step."""
        if self.W_dec.grad is not None:
            g, w = self.W_dec.grad, self.W_dec
            g -= (g * w).sum(dim=1, keepdim=True) * w

    def sae_lens_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(cfg.json fields, tensors) in SAELens's on-disk format; loading them back with
        `from_sae_lens_state` gives a dictionary that encodes and decodes the same."""
        tensors = {k: getattr(self, k) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        return {"architecture": "standard", "apply_b_dec_to_input": True}, tensors

    @classmethod
    def from_sae_lens_state(cls, d_in: int, d_sae: int, options: dict, cfg: dict,
                            tensors: dict[str, torch.Tensor]) -> "Dictionary":
        sae = cls(d_in, d_sae, **options)  # buffers used only in training keep their defaults
        own = sae.state_dict()
        sae.load_state_dict({k: v.float() for k, v in tensors.items() if k in own}, strict=False)
        return sae


def by_hand(x: torch.Tensor) -> bool:
    """Whether a hand-differentiated step applies: on CPU, outside autocast, for an x that needs no
    gradient; elsewhere the formula runs through autograd."""
    return not (x.requires_grad or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"))


class _Autoencode(torch.autograd.Function):
    """(x̂, f) = (a(x̄ W_enc + b_enc) W_dec + b_dec, f), x̄ = x − b_dec, with a hand-written backward,
    for an activation a that passes some positive entries through unchanged and zeroes the rest.

    With x̂' = ∂L/∂x̂ and G = ∂L/∂f · [f > 0] (the gradient at the pre-activation):
        ∂L/∂f = x̂' W_decᵀ + (∂L/∂f from the L1 term),  ∂L/∂W_dec = fᵀ x̂',  ∂L/∂W_enc = x̄ᵀ G,
        ∂L/∂b_enc = Σ_rows G,  ∂L/∂b_dec = Σ_rows x̂' − W_enc ∂L/∂b_enc.
    f and G vanish off f's nonzeros (r, c). While fewer than `sparse_below` of f are nonzero, every
    product after the encoder's runs on those entries alone, O(nnz·d_in) instead of B·d_sae·d_in:
    the decoder, fᵀx̂' and x̄ᵀG are embedding bags (sums of table rows weighted by the nonzeros,
    grouped by input or by feature) and x̂' W_decᵀ is wanted only at (r, c), a sampled product.
    Otherwise the same products run dense. CPU; x gets no gradient.
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, sparse_below, activation):
        x_bar = x - b_dec
        f = activation(torch.addmm(b_enc, x_bar, W_enc))  # the one dense product
        nonzeros = _entries_above(f, 0.0, sparse_below)  # input by input (CSR order)
        ctx.sparse = nonzeros is not None
        ctx.set_materialize_grads(False)
        if not ctx.sparse:
            ctx.save_for_backward(x_bar, W_enc, W_dec, f)
            return torch.addmm(b_dec, f, W_dec), f
        rows, cols, at = nonzeros
        vals, by_row = f.view(-1).index_select(0, at), _bounds(rows, len(f))
        ctx.save_for_backward(x_bar, W_enc, W_dec, rows, cols, vals, by_row)
        return _bag_sums(cols, W_dec, by_row, vals) + b_dec, f  # x̂[r] = Σ_c f[r, c] W_dec[c] + b_dec

    @staticmethod
    def backward(ctx, g_xhat, g_f):
        if g_xhat is None:  # only f was used
            g_xhat = torch.zeros_like(ctx.saved_tensors[0])
        if not ctx.sparse:
            x_bar, W_enc, W_dec, f = ctx.saved_tensors
            G = g_xhat @ W_dec.T
            G = torch.ops.aten.threshold_backward(G if g_f is None else G.add_(g_f), f, 0)  # ReLU's: G·[f > 0], one pass
            g_W_dec, g_W_enc, g_b_enc = f.T @ g_xhat, x_bar.T @ G, G.sum(0)
        else:
            x_bar, W_enc, W_dec, rows, cols, vals, by_row = ctx.saved_tensors
            G = _product_at(g_xhat, W_dec, by_row, cols)  # x̂' W_decᵀ at the nonzeros
            G = G if g_f is None else G + g_f[rows, cols]
            g_W_enc, g_b_enc, g_W_dec = _sparse_weight_grads(x_bar, g_xhat, rows, cols, vals, G, len(W_dec))
        return None, g_W_enc, g_b_enc, g_W_dec, g_xhat.sum(0) - W_enc @ g_b_enc, None, None


def _sparse_weight_grads(x_in: torch.Tensor, g_xhat: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                         vals: torch.Tensor, G: torch.Tensor, d_sae: int) -> tuple[torch.Tensor, ...]:
    """(∂L/∂W_enc, ∂L/∂b_enc, ∂L/∂W_dec) = (x_inᵀ G, Σ_rows G, fᵀ x̂') from f's nonzeros (rows, cols)
    with values `vals` and G there: one embedding bag per feature, O(nonzeros · d_in)."""
    order = _by_column(cols, d_sae)
    by_col, rows_by_col = _bounds(cols, d_sae), rows.index_select(0, order)
    g_W_dec = _bag_sums(rows_by_col, g_xhat, by_col, vals.index_select(0, order))  # [c] = Σ_r f[r, c] x̂'[r]
    g_W_enc = _bag_sums(rows_by_col, x_in, by_col, G.index_select(0, order)).T  # [:, c] = Σ_r G[r, c] x_in[r]
    return g_W_enc, G.new_zeros(d_sae).index_add_(0, cols, G), g_W_dec


def _bounds(ids: torch.Tensor, n: int) -> torch.Tensor:
    """Where each of 0..n-1 starts and ends in the sorted `ids`: n + 1 offsets."""
    return F.pad(torch.bincount(ids, minlength=n).cumsum(0), (1, 0))


def _entries_above(t: torch.Tensor, floor: torch.Tensor | float, fewer_than: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(rows, columns, flat positions) of the entries of a 2-D CPU tensor above `floor` (a number, or
    one per column), row by row; None unless they are fewer than `fewer_than` of all. numpy: its
    compare and flatnonzero took ~40% of the time of torch's gt and nonzero on one busy core."""
    above = t.numpy() > (floor.numpy() if isinstance(floor, torch.Tensor) else floor)
    if np.count_nonzero(above) >= fewer_than * above.size:
        return None
    at = np.flatnonzero(above)
    rows, cols = np.divmod(at, above.shape[1])
    return torch.from_numpy(rows), torch.from_numpy(cols), torch.from_numpy(at)


def _by_column(cols: torch.Tensor, n: int) -> torch.Tensor:
    """The order that lists nonzeros feature by feature (CSC), stable, for cols in 0..n-1. numpy on CPU:
    torch's parallel sort took ~30x longer on two busy cores; keys that fit 16 bits sort ~4x faster
    again (numpy's stable sort is then a radix sort)."""
    if cols.device.type == "cpu":
        keys = cols.numpy().astype(np.uint16) if n <= 2 ** 16 else cols.numpy()
        return torch.from_numpy(np.argsort(keys, kind="stable"))
    return torch.argsort(cols, stable=True)


def _bag_sums(index: torch.Tensor, table: torch.Tensor, bounds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Row b: Σ weights[k] · table[index[k]] over bounds[b] <= k < bounds[b + 1]."""
    return F.embedding_bag(index, table, bounds, per_sample_weights=weights, mode="sum", include_last_offset=True)


def _product_at(a: torch.Tensor, b: torch.Tensor, by_row: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(a bᵀ)[r, c] at the entries (r, c) listed in CSR form only: O(entries · d_in), no dense product."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta": all we use is sampled_addmm
        warnings.simplefilter("ignore")
        at = torch.sparse_csr_tensor(by_row, cols, a.new_zeros(len(cols)), (len(a), len(b)), check_invariants=False)
    return torch.sparse.sampled_addmm(at, a, b.T, beta=0).values()


@torch.no_grad()
def geometric_median(points: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    median = points.mean(0)
    for _ in range(iters):
        weights = 1 / (points - median).norm(dim=1).clamp_min(1e-8)
        new = weights @ points / weights.sum()  # one product, no points-sized temporary
        if (new - median).norm() < tol * max(1.0, median.norm().item()):
            return new
        median = new
    return median
