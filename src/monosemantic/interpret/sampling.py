"""Per-unit statistics and example windows from the activation cache, in two streaming passes.

A unit is an SAE feature or an MLP neuron. Documents, not contexts, are split between an explainer
side and a held-out side: one long document (a base64 blob, a Python file) spans many contexts, and
with contexts on both sides a token lookup learnt on one side would score on the other. Documents
are packed back to back, each ended by the separator token (tokens.py), so a token's document is
the number of separators before it. Documents go to a side in runs, and the one context where the
side changes holds both and is used by neither. Statistics (density, mean, max, histograms, proxy
counts) still count every token, except the positions the cache left out (`keep` False: special
tokens, attention sinks): their activations count as absent, so they are never an example's maximum
and never enter a statistic.

Pass 1 keeps, for every unit at once, its density, mean and max, how often it fires on each proxy's
tokens, and on each side its number of activating contexts and its top contexts. Then the examples
that need no activation are chosen: random contexts and the unit's top tokens in other contexts.
Pass 2 encodes only the chosen units: their activation histograms over (0, max], the windows of the
examples chosen so far, and for each side and each of the paper's equal-width activation intervals
a uniform sample of the contexts whose maximum lies in it, so every interval that has contexts gets
examples (from one uniform pool, the upper intervals of a skewed unit come out empty). Memory
depends on the number of units, not of tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from monosemantic.errors import UserError
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


def documents(tokens: np.ndarray, separator: int) -> np.ndarray:
    """Each token's document number: the separators before it (a separator ends its own document)."""
    sep = tokens == separator
    return np.cumsum(sep) - sep


def context_sides(tokens: np.ndarray, ctx: int, separator: int, p: InterpretParams) -> tuple[np.ndarray, int]:
    """Each context's side (0 explainer, 1 held out, -1 neither) and the number of documents.

    Documents starting within the same block of ``split_block_contexts`` contexts share a side, drawn
    at random per block; the stream was shuffled by document when it was packed, so a block is a
    random run of documents. A side changes at most once per block, and only the context holding that
    change is lost to both sides."""
    n_ctx = len(tokens) // ctx
    doc = documents(tokens[: n_ctx * ctx], separator)
    n_docs = int(doc[-1]) + 1
    if n_docs < 2:
        raise UserError(f"the {n_ctx * ctx:,} scanned tokens hold one document (no separator token, id {separator}): "
                        "explainer and held-out examples must come from different documents; raise "
                        "interpret.max_tokens or pass the tokenizer's separator")
    first = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])  # each document's first token
    block = first // (ctx * p.split_block_contexts)
    heldout = np.random.default_rng([p.seed, 1]).random(block[-1] + 1) < p.heldout_fraction
    rows = heldout[block][doc].astype(np.int8).reshape(n_ctx, ctx)
    sides = np.where(rows.min(1) == rows.max(1), rows[:, 0], -1).astype(np.int8)
    if not ((sides == 0).any() and (sides == 1).any()):
        raise UserError(f"all {n_docs} scanned documents went to one side (explainer or held out): raise "
                        "interpret.max_tokens or lower interpret.split_block_contexts")
    return sides, n_docs


def scan(acts, first_row: int, tokens: np.ndarray, ctx: int, sides: np.ndarray,
         encode: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], n_units: int,
         choose: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], labels: np.ndarray,
         p: InterpretParams, keep: np.ndarray | None = None, keys: np.ndarray | None = None) -> Scan:
    """`tokens` (whole contexts) and their activations ``acts[first_row:]`` (zarr or numpy); `sides` each
    context's side (context_sides); `encode(x, units)` maps a float32 batch of rows to the activations of
    `units` (None: all ``n_units``); `choose(active_contexts, fired_tokens, true_positives)` picks the units to
    sample examples for, from pass 1's counts; `labels` are the proxy labels of every token; `keep` which
    tokens count (None: all); `keys` each unit's identity (None: its number), which seeds its own random
    draws, so a unit gets the same examples whichever units it is scanned with (a neuron, whichever
    dictionary: identical LLM requests, answered from the cache)."""
    n_ctx = len(tokens) // ctx
    if n_ctx == 0:
        raise ValueError("no complete context to scan")
    tokens = tokens[: n_ctx * ctx]
    keep = np.ones(n_ctx * ctx, dtype=bool) if keep is None else np.asarray(keep[: n_ctx * ctx], dtype=bool)
    labels = labels[: n_ctx * ctx] & keep[:, None]
    absent = torch.from_numpy(~keep)
    batch = max(1, p.batch_tokens // ctx)
    side_t = torch.from_numpy(np.asarray(sides[:n_ctx], dtype=np.int64))

    # ---- pass 1: statistics, activating and top contexts per side, proxy counts, for every unit
    count = torch.zeros(n_units, dtype=torch.float64)
    total = torch.zeros(n_units, dtype=torch.float64)
    peak = torch.zeros(n_units)
    active = torch.zeros(2, n_units, dtype=torch.long)
    true_pos = torch.zeros(n_units, labels.shape[1], dtype=torch.float64)
    best = [_Top(p.top_examples, n_units) for _ in SPLITS]
    for c0, a in _batches(acts, first_row, n_ctx, ctx, batch, lambda x: encode(x, None), "pass 1/2", absent):
        rows = slice(c0 * ctx, c0 * ctx + len(a))
        count += torch.bincount((a > 0).nonzero()[:, 1], minlength=n_units)
        total += a.sum(0, dtype=torch.float64)  # exact for a float16 store: the same neuron sums beside any dictionary
        for j in range(labels.shape[1]):  # "fires" is activation > 0, as for density
            true_pos[:, j] += (a[torch.from_numpy(np.flatnonzero(labels[rows, j]))] > 0).sum(0)
        a3 = a.view(-1, ctx, n_units)
        cmax = a3.amax(1)
        peak = torch.maximum(peak, cmax.max(0).values)
        for s in range(2):
            fires = (side_t[c0 : c0 + len(cmax)] == s)[:, None] & (cmax > 0)
            active[s] += fires.sum(0)
            best[s].add(torch.where(fires, cmax, -torch.inf), c0, a3)

    peak_np, active_np = peak.numpy(), active.numpy()
    units = np.asarray(choose(active_np, count.numpy(), true_pos.numpy()), dtype=np.int64)
    unit_keys = units if keys is None else np.asarray(keys, dtype=np.int64)[units]
    fixed, used = _fixed_examples(units, unit_keys, best, peak_np, tokens, ctx, sides, p, keep)
    width = min(p.window_before + p.window_after + 1, ctx)
    fixed_start = np.clip(fixed["pos"] - p.window_before, 0, ctx - width)
    fixed_win = fixed["context"][:, None] * ctx + fixed_start[:, None] + np.arange(width)

    # ---- pass 2: the chosen units only: histograms, windows, interval samples
    bins = p.histogram_bins
    hist = torch.zeros(len(units) * bins, dtype=torch.long)
    sel = torch.from_numpy(units)
    scale = bins / peak[sel].clamp_min(1e-12)
    offsets = torch.arange(len(units)) * bins
    fixed_acts = np.zeros(fixed_win.shape, dtype=np.float32)
    order = np.argsort(fixed["context"], kind="stable")
    intervals = _Intervals(p, peak[sel], used, width, ctx, unit_keys)
    for c0, a in _batches(acts, first_row, n_ctx, ctx, batch, lambda x: encode(x, sel), "pass 2/2", absent):
        r0, c1 = c0 * ctx, c0 + len(a) // ctx
        nz = a > 0
        hist += torch.bincount(((a * scale).long().clamp_(max=bins - 1) + offsets)[nz], minlength=len(hist))
        lo, hi = np.searchsorted(fixed["context"][order], [c0, c1])
        e = order[lo:hi]
        if len(e):
            fixed_acts[e] = a[torch.from_numpy(fixed_win[e] - r0), torch.from_numpy(fixed["unit"][e])[:, None]].numpy()
        intervals.add(a.view(c1 - c0, ctx, len(units)), c0, side_t[c0:c1])

    rows, window_acts = intervals.examples()
    rows = {k: np.concatenate([fixed[k], rows[k]]) for k in fixed}
    window_acts = np.concatenate([fixed_acts, window_acts])
    tidy = np.lexsort((rows["rank"], rows["interval"], rows["group"], rows["split"], rows["unit"]))
    rows, window_acts = {k: v[tidy] for k, v in rows.items()}, window_acts[tidy]
    start = np.clip(rows["pos"] - p.window_before, 0, ctx - width)
    win = rows["context"][:, None] * ctx + start[:, None] + np.arange(width)
    flat_before = np.where(start > 0, tokens[np.maximum(rows["context"] * ctx + start - 1, 0)], -1)
    examples = Examples(
        unit=units[rows["unit"]], split=rows["split"].astype(np.int8), group=rows["group"].astype(np.int8),
        interval=rows["interval"], rank=rows["rank"], context=rows["context"], start=start,
        center=rows["pos"] - start, tokens=tokens[win].astype(np.int32), acts=window_acts,
        before=flat_before.astype(np.int32))
    n_tokens = int(keep.sum())
    return Scan(n_tokens, (count / n_tokens).numpy(), (total / n_tokens).numpy(), peak_np, active_np, units,
                hist.view(len(units), bins).numpy(), examples, true_pos.numpy(), labels.sum(0))


class _Top:
    """The k largest context maxima per unit, with where they are, over a stream of contexts."""

    def __init__(self, k: int, n_units: int):
        self.score = torch.full((k, n_units), -torch.inf)
        self.context = torch.full((k, n_units), -1, dtype=torch.long)
        self.pos = torch.zeros(k, n_units, dtype=torch.long)

    def add(self, score: torch.Tensor, c0: int, a: torch.Tensor) -> None:
        """`score` [contexts, units] of contexts c0, c0 + 1, ...; `a` [contexts, ctx, units] their activations,
        searched for the position of the maximum only where a context enters (an argmax over every context
        costs four times the max)."""
        k = len(self.score)
        top = torch.cat([self.score, score]).topk(k, dim=0)
        self.score, idx = top.values, top.indices
        kept = idx.clamp(max=k - 1)
        self.context, self.pos = self.context.gather(0, kept), self.pos.gather(0, kept)
        j, u = ((idx >= k) & torch.isfinite(top.values)).nonzero(as_tuple=True)
        c = idx[j, u] - k
        self.context[j, u] = c0 + c
        self.pos[j, u] = a[c, :, u].argmax(1)

    def kept(self, u: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(max, context, pos) of unit u's real entries, largest first."""
        ok = torch.isfinite(self.score[:, u])
        return self.score[ok, u].numpy(), self.context[ok, u].numpy(), self.pos[ok, u].numpy()


class _Intervals:
    """Per chosen unit, side and activation interval, the activating contexts with the smallest random
    keys (a uniform sample) and the unit's window around each one's maximum."""

    def __init__(self, p: InterpretParams, peak: torch.Tensor, used: torch.Tensor, width: int, ctx: int,
                 keys: np.ndarray):
        self.n, self.k, self.before = p.intervals, p.interval_examples, p.window_before
        self.ctx, self.width = ctx, width
        self.step = peak.clamp_min(1e-12) / p.intervals
        self.used = used  # [2, m, I] contexts each unit already shows on each side (-1: none)
        slots, n_units = 2 * p.intervals, len(peak)
        self.key = torch.full((self.k, slots, n_units), torch.inf)
        self.context = torch.full((self.k, slots, n_units), -1, dtype=torch.long)
        self.pos = torch.zeros(self.k, slots, n_units, dtype=torch.long)
        self.acts = torch.zeros(self.k, slots, n_units, width)
        self.seed, self.keys = p.seed, keys

    def add(self, a: torch.Tensor, c0: int, side: torch.Tensor) -> None:
        """`a` [contexts, ctx, units]: the chosen units' activations on contexts c0, c0 + 1, ... of sides `side`."""
        if self.k == 0:
            return
        k, (b, _, n_units) = self.k, a.shape
        cmax = a.amax(1)
        ids = torch.arange(c0, c0 + b)
        shown = (self.used[side.clamp(min=0)] == ids[:, None, None]).any(1)
        ok = (cmax > 0) & (side >= 0)[:, None] & ~shown
        slot = side.clamp(min=0)[:, None] * self.n + (torch.ceil(cmax / self.step).long().clamp(1, self.n) - 1)
        key = torch.full((b, self.key.shape[1], n_units), torch.inf)
        draws = torch.from_numpy(_uniform(self.seed, ids.numpy(), self.keys))
        key.scatter_(1, slot[:, None], torch.where(ok, draws, torch.inf)[:, None])
        top = torch.cat([self.key, key]).topk(k, dim=0, largest=False)
        self.key, idx = top.values, top.indices
        kept = idx.clamp(max=k - 1)
        self.context, self.pos = self.context.gather(0, kept), self.pos.gather(0, kept)
        self.acts = self.acts.gather(0, kept[..., None].expand_as(self.acts))
        j, r, u = ((idx >= k) & torch.isfinite(top.values)).nonzero(as_tuple=True)  # newcomers, from this batch
        c = idx[j, r, u] - k
        pos = a[c, :, u].argmax(1)
        start = (pos - self.before).clamp(0, self.ctx - self.width)
        self.context[j, r, u], self.pos[j, r, u] = c0 + c, pos
        self.acts[j, r, u] = a[c[:, None], start[:, None] + torch.arange(self.width), u[:, None]]

    def examples(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        j, r, u = torch.isfinite(self.key).nonzero(as_tuple=True)
        rows = {"unit": u, "split": r // self.n, "group": torch.full_like(u, GROUPS.index("interval")),
                "interval": r % self.n + 1, "rank": j, "context": self.context[j, r, u], "pos": self.pos[j, r, u]}
        return {k: v.numpy().astype(np.int64) for k, v in rows.items()}, self.acts[j, r, u].numpy()


def _uniform(seed: int, contexts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """float32 ``[contexts, keys]`` uniform on [0, 1), a function of (seed, context, key) alone: a unit's
    draw for a context does not depend on which other units or contexts a batch holds. SplitMix64's
    finaliser over the three (numpy's generators draw streams, not values at given coordinates); seed + 1,
    as the finaliser maps 0 to 0."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed + 1) * np.uint64(0x9E3779B97F4A7C15) + contexts.astype(np.uint64)[:, None]
             * np.uint64(0xD1B54A32D192ED03) + keys.astype(np.uint64)[None, :] * np.uint64(0xAEF17502108EF2D9))
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            z = (z ^ (z >> np.uint64(shift))) * np.uint64(mult)
        z ^= z >> np.uint64(31)
    return ((z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24))


def _batches(acts, first_row: int, n_ctx: int, ctx: int, batch: int, encode, label: str, absent: torch.Tensor):
    """The encoded activations of each batch of contexts, zero at the `absent` tokens (left out by the cache)."""
    t0, last = time.perf_counter(), 0.0
    with torch.no_grad():
        for c0 in range(0, n_ctx, batch):
            c1 = min(c0 + batch, n_ctx)
            x = torch.from_numpy(np.asarray(acts[first_row + c0 * ctx : first_row + c1 * ctx], dtype=np.float32))
            yield c0, encode(x).masked_fill(absent[c0 * ctx : c1 * ctx, None], 0)
            now = time.perf_counter()
            if now - last > 10 or c1 == n_ctx:
                last = now
                rate = c1 * ctx / max(now - t0, 1e-9)
                print(f"interpret {label}: {c1 * ctx:,}/{n_ctx * ctx:,} tokens ({rate:,.0f} tokens/s)", flush=True)


def _fixed_examples(units, keys, best, peak, tokens, ctx, sides, p, keep) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """The examples chosen before pass 2, as (context, position) each window centres on: the top contexts,
    random contexts, and the unit's top tokens in other contexts (at kept positions), on each side; and the
    contexts each unit shows per side, ``[2, m, units]`` padded with -1, which the interval samples leave out."""
    out: dict[str, list] = {k: [] for k in ("unit", "split", "group", "interval", "rank", "context", "pos")}
    rng = np.random.default_rng(p.seed)

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
        pool = np.flatnonzero(sides == s)
        picked = rng.choice(pool, size=min(p.random_examples, len(pool)), replace=False)
        randoms.append((np.sort(picked), rng.integers(0, ctx, size=len(picked))))
    # Where each token occurs, for "top tokens in other contexts".
    by_token = np.argsort(tokens, kind="stable")
    sorted_tokens = tokens[by_token]
    token_side = np.repeat(sides, ctx)

    shown = []
    for i, (u, key) in enumerate(zip(units, keys)):
        own = np.random.default_rng([p.seed, 3, key])
        width = peak[u] / p.intervals
        used = []
        for s in range(2):
            val, con, pos = best[s].kept(u)
            emit(i, s, GROUPS.index("top"), np.minimum(np.ceil(val / width), p.intervals).astype(np.int64), con, pos)
            emit(i, s, GROUPS.index("random"), 0, *randoms[s])
            used.append(con.tolist())
        # The unit's top tokens (at the maxima of its top explainer contexts), in other contexts of each side:
        # the paper's specificity test, scored on the held-out side like the rest.
        _, con, pos = best[0].kept(u)
        top_ids = tokens[con * ctx + pos]
        ids, first = np.unique(top_ids, return_index=True)
        freq = np.array([(top_ids == t).sum() for t in ids])
        for t in ids[np.lexsort((first, -freq))][: p.top_tokens]:
            lo, hi = np.searchsorted(sorted_tokens, [t, t + 1])
            where = by_token[lo:hi]
            for s in range(2):
                w = where[(token_side[where] == s) & keep[where]]
                w = w[~np.isin(w // ctx, used[s])]
                picked = np.sort(own.choice(w, size=min(p.token_contexts, len(w)), replace=False))
                emit(i, s, GROUPS.index("token"), 0, picked // ctx, picked % ctx)
                used[s] += (picked // ctx).tolist()
        shown.append(used)
    m = max([len(c) for used in shown for c in used], default=0)
    used_t = torch.full((2, max(m, 1), len(units)), -1, dtype=torch.long)
    for i, used in enumerate(shown):
        for s in range(2):
            used_t[s, : len(used[s]), i] = torch.tensor(used[s], dtype=torch.long)
    empty = np.zeros(0, dtype=np.int64)
    return {k: np.concatenate(v) if v else empty for k, v in out.items()}, used_t
