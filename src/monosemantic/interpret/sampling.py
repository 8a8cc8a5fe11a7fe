"""Per-unit statistics and example windows from the activation cache, in two streaming passes.

A unit is an SAE feature or an MLP neuron. Contexts (whole cached sequences) are split at random
into an explainer side and a held-out side, so training and scoring examples come from disjoint
contexts and never overlap.

Pass 1 keeps, for every unit at once, its density, mean and max, how often it fires on each
proxy's tokens, and on each side its top contexts and a uniform reservoir of activating
contexts (priority sampling: the smallest random keys). Example contexts are then chosen the
paper's way: the top interval, other intervals of equal activation width, random contexts, and
the unit's top tokens in other contexts. Pass 2 encodes only the chosen units: their example
windows, and their activation histograms over (0, max]. Memory depends on the number of units,
not of tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from monosemantic.params import InterpretParams

GROUPS = ("top", "interval", "random", "token")
SPLITS = ("train", "heldout")


@dataclass
class Examples:
    """One row per example window; ``unit`` indexes the scanned units."""

    unit: np.ndarray       # int64 [E]
    split: np.ndarray      # int8 [E], index into SPLITS
    group: np.ndarray      # int8 [E], index into GROUPS
    interval: np.ndarray   # int64 [E], 1..intervals, 0 for random and token examples
    rank: np.ndarray       # int64 [E]
    context: np.ndarray    # int64 [E], context number within the scan
    start: np.ndarray      # int64 [E], window start within the context
    center: np.ndarray     # int64 [E], position in the window of the token that chose it
    tokens: np.ndarray     # int32 [E, W]
    acts: np.ndarray       # float32 [E, W]
    before: np.ndarray     # int32 [E], the token before the window, -1 at a context start


@dataclass
class Scan:
    n_tokens: int
    density: np.ndarray        # [U] fraction of tokens with activation > 0
    mean: np.ndarray           # [U]
    max: np.ndarray            # [U]
    active_contexts: np.ndarray  # [2, U] activating contexts per split
    interpreted: np.ndarray    # [I] unit indices with examples
    histograms: np.ndarray     # [I, bins] nonzero activations in equal-width bins over (0, max]
    examples: Examples
    true_positives: np.ndarray  # [U, proxies] tokens where the unit fires and the proxy holds
    label_counts: np.ndarray   # [proxies]


def scan(acts, first_row: int, tokens: np.ndarray, ctx: int,
         encode: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], n_units: int,
         choose: Callable[[np.ndarray], np.ndarray], labels: np.ndarray, p: InterpretParams) -> Scan:
    """`tokens` (whole contexts) and their activations ``acts[first_row:]`` (zarr or numpy); `encode(x, units)` maps
    a float32 batch of rows to the activations of `units` (None: all ``n_units``); `choose(active_contexts)` picks
    the units to sample examples for; `labels` are the proxy labels of every token."""
    n_ctx = len(tokens) // ctx
    if n_ctx == 0:
        raise ValueError("no complete context to scan")
    rng = np.random.default_rng(p.seed)
    heldout = rng.random(n_ctx) < p.heldout_fraction
    batch = max(1, p.batch_tokens // ctx)
    k, reservoir = p.top_examples, max(4 * p.intervals * p.interval_examples, p.top_examples)

    # ---- pass 1: statistics, top contexts and reservoirs, proxy counts, for every unit
    count = torch.zeros(n_units, dtype=torch.float64)
    total = torch.zeros(n_units, dtype=torch.float64)
    peak = torch.zeros(n_units)
    active = torch.zeros(2, n_units, dtype=torch.long)
    true_pos = torch.zeros(n_units, labels.shape[1], dtype=torch.float64)
    best = [_Keep(k, n_units, largest=True) for _ in SPLITS]
    sample = [_Keep(reservoir, n_units, largest=False) for _ in SPLITS]
    gen = torch.Generator().manual_seed(p.seed)
    for c0, a in _batches(acts, first_row, n_ctx, ctx, batch, lambda x: encode(x, None), "pass 1/2"):
        rows = slice(c0 * ctx, c0 * ctx + len(a))
        count += torch.bincount((a > 0).nonzero()[:, 1], minlength=n_units)
        total += a.sum(0)
        for j in range(labels.shape[1]):  # "fires" is activation > 0, as for density
            true_pos[:, j] += (a[torch.from_numpy(np.flatnonzero(labels[rows, j]))] > 0).sum(0)
        cmax, carg = a.view(-1, ctx, n_units).max(1)
        peak = torch.maximum(peak, cmax.max(0).values)
        ids = torch.arange(c0, c0 + len(cmax))[:, None].expand_as(cmax)
        keys = torch.rand(cmax.shape, generator=gen)
        for s in range(2):
            side = torch.from_numpy(heldout[c0 : c0 + len(cmax)] == bool(s))[:, None]
            fires = side & (cmax > 0)
            active[s] += fires.sum(0)
            best[s].add(torch.where(fires, cmax, -torch.inf), cmax, ids, carg)
            sample[s].add(torch.where(fires, keys, torch.inf), cmax, ids, carg)

    peak_np, active_np = peak.numpy(), active.numpy()
    units = np.asarray(choose(active_np), dtype=np.int64)
    rows = _choose_examples(units, best, sample, peak_np, tokens, ctx, heldout, rng, p)
    width = min(p.window_before + p.window_after + 1, ctx)
    start = np.clip(rows["pos"] - p.window_before, 0, ctx - width)
    token_rows = tokens.reshape(n_ctx, ctx)
    win = rows["context"][:, None] * ctx + start[:, None] + np.arange(width)

    # ---- pass 2: the chosen units only: windows and histograms
    bins = p.histogram_bins
    hist = torch.zeros(len(units) * bins, dtype=torch.long)
    sel = torch.from_numpy(units)
    scale = bins / peak[sel].clamp_min(1e-12)
    offsets = torch.arange(len(units)) * bins
    window_acts = np.zeros(win.shape, dtype=np.float32)
    order = np.argsort(rows["context"], kind="stable")
    for c0, a in _batches(acts, first_row, n_ctx, ctx, batch, lambda x: encode(x, sel), "pass 2/2"):
        r0 = c0 * ctx
        nz = a > 0
        hist += torch.bincount(((a * scale).long().clamp_(max=bins - 1) + offsets)[nz], minlength=len(hist))
        lo, hi = np.searchsorted(rows["context"][order], [c0, c0 + len(a) // ctx])
        e = order[lo:hi]
        if len(e):
            window_acts[e] = a[torch.from_numpy(win[e] - r0), torch.from_numpy(rows["unit"][e])[:, None]].numpy()

    flat_before = np.where(start > 0, tokens[np.maximum(rows["context"] * ctx + start - 1, 0)], -1)
    examples = Examples(
        unit=units[rows["unit"]], split=rows["split"], group=rows["group"], interval=rows["interval"],
        rank=rows["rank"], context=rows["context"], start=start, center=rows["pos"] - start,
        tokens=token_rows.reshape(-1)[win].astype(np.int32), acts=window_acts,
        before=flat_before.astype(np.int32))
    n_tokens = n_ctx * ctx
    return Scan(n_tokens, (count / n_tokens).numpy(), (total / n_tokens).numpy(), peak_np, active_np, units,
                hist.view(len(units), bins).numpy(), examples, true_pos.numpy(), labels.sum(0))


class _Keep:
    """The k best (largest or smallest) scores per unit, with payloads, over a stream of contexts."""

    def __init__(self, k: int, n_units: int, largest: bool):
        self.largest = largest
        self.score = torch.full((k, n_units), -torch.inf if largest else torch.inf)
        self.value = torch.zeros(k, n_units)
        self.context = torch.full((k, n_units), -1, dtype=torch.long)
        self.pos = torch.zeros(k, n_units, dtype=torch.long)

    def add(self, score, value, context, pos) -> None:
        top = torch.cat([self.score, score]).topk(len(self.score), dim=0, largest=self.largest)
        i = top.indices
        self.score = top.values
        self.value = torch.cat([self.value, value]).gather(0, i)
        self.context = torch.cat([self.context, context]).gather(0, i)
        self.pos = torch.cat([self.pos, pos]).gather(0, i)

    def kept(self, u: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(value, context, pos) of unit u's real entries, best first."""
        ok = torch.isfinite(self.score[:, u])
        return self.value[ok, u].numpy(), self.context[ok, u].numpy(), self.pos[ok, u].numpy()


def _batches(acts, first_row: int, n_ctx: int, ctx: int, batch: int, encode, label: str):
    t0, last = time.perf_counter(), 0.0
    with torch.no_grad():
        for c0 in range(0, n_ctx, batch):
            c1 = min(c0 + batch, n_ctx)
            x = torch.from_numpy(np.asarray(acts[first_row + c0 * ctx : first_row + c1 * ctx], dtype=np.float32))
            yield c0, encode(x)
            now = time.perf_counter()
            if now - last > 10 or c1 == n_ctx:
                last = now
                rate = c1 * ctx / max(now - t0, 1e-9)
                print(f"interpret {label}: {c1 * ctx:,}/{n_ctx * ctx:,} tokens ({rate:,.0f} tokens/s)", flush=True)


def _choose_examples(units, best, sample, peak, tokens, ctx, heldout, rng, p) -> dict[str, np.ndarray]:
    """Which (context, position) each example window of each chosen unit centres on."""
    out: dict[str, list] = {k: [] for k in ("unit", "split", "group", "interval", "rank", "context", "pos")}

    def emit(i, s, g, interval, contexts, positions):
        n = len(contexts)
        for key, val in (("unit", i), ("split", s), ("group", g), ("interval", interval)):
            out[key].append(np.broadcast_to(np.asarray(val, dtype=np.int64), (n,)))
        out["rank"].append(np.arange(n))
        out["context"].append(np.asarray(contexts, dtype=np.int64))
        out["pos"].append(np.asarray(positions, dtype=np.int64))

    # Random contexts (at a random position) are shared by every unit, as in Bills et al.
    randoms = []
    for s in range(2):
        pool = np.flatnonzero(heldout == bool(s))
        picked = rng.choice(pool, size=min(p.random_examples, len(pool)), replace=False)
        randoms.append((np.sort(picked), rng.integers(0, ctx, size=len(picked))))
    # Where each token occurs, for "top tokens in other contexts".
    by_token = np.argsort(tokens, kind="stable")
    sorted_tokens = tokens[by_token]
    train_token = ~np.repeat(heldout, ctx)

    for i, u in enumerate(units):
        width = peak[u] / p.intervals
        for s in range(2):
            val, con, pos = best[s].kept(u)
            top_interval = np.minimum(np.ceil(val / width), p.intervals).astype(np.int64)
            emit(i, s, 0, top_interval, con, pos)
            used = set(con.tolist())
            val, con, pos = sample[s].kept(u)
            interval = np.minimum(np.ceil(val / width), p.intervals).astype(np.int64)
            for b in range(1, p.intervals + 1):
                pick = [j for j in np.flatnonzero(interval == b) if con[j] not in used][: p.interval_examples]
                emit(i, s, 1, b, con[pick], pos[pick])
            emit(i, s, 2, 0, *randoms[s])
        # The unit's top tokens (at the argmax of its top explainer contexts) in other contexts.
        _, con, pos = best[0].kept(u)
        top_ids = tokens[con * ctx + pos]
        ids, first = np.unique(top_ids, return_index=True)
        freq = np.array([(top_ids == t).sum() for t in ids])
        ranked = ids[np.lexsort((first, -freq))][: p.top_tokens]
        used = set(con.tolist())
        for t in ranked:
            lo, hi = np.searchsorted(sorted_tokens, [t, t + 1])
            where = by_token[lo:hi]
            where = where[train_token[where]]
            where = where[~np.isin(where // ctx, list(used))]
            picked = np.sort(rng.choice(where, size=min(p.token_contexts, len(where)), replace=False))
            emit(i, 0, 3, 0, picked // ctx, picked % ctx)
            used.update((picked // ctx).tolist())
    return {k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for k, v in out.items()}
