"""The activation cache: a Zarr v3 group with ``acts`` ``[n_tokens, d]`` (float16 by default), the
aligned int32 arrays ``tokens``, ``seq`` (row in the token store) and ``pos`` (position), and the
boolean ``keep``: False where a position is left out of SAE training, evaluation and interpretation
(`monosemantic.activations.exclude`).

Zarr v3 has no bfloat16: a ``bfloat16`` store holds the values' 16 bits as ``uint16`` (the array's
attribute ``dtype`` says so) and `VerifiedArray` decodes them to float32; float16 and float32 stores
are what they say.

Chunked along tokens (whole sequences per chunk), chunks grouped into shard files so the
store holds hundreds of files, every chunk checksummed (crc32c) so corruption fails loudly.
Written shard by shard while the model computes the next one, by one process or by the ranks
of a data-parallel run (each its own shards); a run killed midway resumes from ``<store>.partial``,
rewriting only the shards not finished, and ends with the same bytes.

The store is a local directory or an object-store prefix (``s3://…``): both go through
`monosemantic.storage.Location`, one code path for writing, resuming and reading. A remote store
is described in the workspace by its manifest (each file's md5 and size, gathered as the shards are
written), which DVC tracks in its place.

zarr-python creates the store and reads it; shard files are encoded here, because on a
2-core machine zarr-python's write path costs as much CPU as the forward pass it stores.
The bytes are exactly those zarr-python writes (a test compares them).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import google_crc32c
import numcodecs
import numpy as np
import torch
import zarr
from tqdm import tqdm
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from monosemantic import storage
from monosemantic.activations.exclude import RULES, Exclusion
from monosemantic.compute import Compute
from monosemantic.errors import UserError
from monosemantic.storage import Location, LocalLocation


@dataclass(frozen=True)
class Layout:
    ctx: int
    chunk_seqs: int = 16
    shard_chunks: int = 16
    compressor: str = "lz4"
    clevel: int = 5
    dtype: str = "float16"  # of the stored activations: float16 | bfloat16 | float32

    @property
    def chunk_tokens(self) -> int:
        return self.chunk_seqs * self.ctx

    @property
    def shard_seqs(self) -> int:
        return self.chunk_seqs * self.shard_chunks

    @property
    def shard_tokens(self) -> int:
        return self.shard_seqs * self.ctx

    # Post-ReLU activations are mostly exact zeros: plain (unshuffled) byte streams compress
    # best; bit- or byte-shuffling them costs time and halves the ratio.
    def codecs(self) -> list:
        compress = {
            "lz4": [BloscCodec(cname="lz4", clevel=self.clevel, shuffle="noshuffle")],
            "zstd": [ZstdCodec(level=self.clevel)],
            "none": [],
        }[self.compressor]
        return [*compress, Crc32cCodec()]

    def compress(self, chunk: np.ndarray):
        if self.compressor == "lz4":
            return numcodecs.Blosc("lz4", self.clevel, numcodecs.Blosc.NOSHUFFLE).encode(chunk)
        if self.compressor == "zstd":
            return numcodecs.Zstd(level=self.clevel).encode(chunk)
        return chunk.tobytes()


def _crc(payload) -> bytes:
    return np.uint32(google_crc32c.value(payload)).tobytes()


def encode_shard(data: np.ndarray, layout: Layout) -> list:
    """One shard in zarr v3 ``sharding_indexed`` layout, as a list of buffers to write in order:
    each chunk followed by its crc32c, then the index of (offset, length) pairs and its crc32c.
    A trailing chunk is padded with the fill value (0); chunks past the array's end are left out."""
    rows = layout.chunk_tokens
    index = np.full((layout.shard_chunks, 2), np.uint64(2**64 - 1), dtype="<u8")
    parts, offset = [], 0
    for i in range(layout.shard_chunks):
        chunk = data[i * rows : (i + 1) * rows]
        if len(chunk) == 0:
            break
        if len(chunk) < rows:
            chunk = np.concatenate([chunk, np.zeros((rows - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        payload = layout.compress(np.ascontiguousarray(chunk))
        parts += [payload, _crc(payload)]
        index[i] = (offset, len(payload) + 4)
        offset += len(payload) + 4
    index_bytes = index.tobytes()
    return parts + [index_bytes, _crc(index_bytes)]


def shard_key(name: str, k: int, ndim: int) -> str:
    """Where zarr's default chunk-key encoding puts shard `k` of array `name`."""
    return "/".join([name, "c", str(k), *(["0"] * (ndim - 1))])


def write_shard(root: Location, name: str, k: int, data: np.ndarray, layout: Layout,
                hashed: bool = False) -> tuple[str, dict] | None:
    """Write shard `k` of array `name`; atomically, so a shard file under its final name is always whole.
    With `hashed`, return its key and {md5, size} for the manifest."""
    key, parts = shard_key(name, k, data.ndim), encode_shard(data, layout)
    root.write(key, parts)
    if hashed:
        return key, {"md5": storage.md5(parts), "size": sum(len(p) for p in parts)}
    return None


def _loc(where: Location | str | Path) -> Location:
    if isinstance(where, Location):
        return where
    return LocalLocation(where) if isinstance(where, Path) else storage.location(where)


# How each store dtype is held in numpy and in zarr (bfloat16: its bits, as int16 here and uint16 in zarr).
_BUFFER = {"float16": np.float16, "bfloat16": np.int16, "float32": np.float32}
_ZARR = {"float16": "float16", "bfloat16": "uint16", "float32": "float32"}


def _create(where: Location | Path, n_tokens: int, d: int, layout: Layout, attrs: dict) -> zarr.Group:
    group = zarr.open_group(_loc(where).zarr_store(read_only=False), mode="w")
    for name, dtype, width in (("acts", _ZARR[layout.dtype], d), ("tokens", "int32", None),
                               ("seq", "int32", None), ("pos", "int32", None), ("keep", "bool", None)):
        shape = (n_tokens, width) if width else (n_tokens,)
        group.create_array(
            name, shape=shape, dtype=dtype,
            chunks=(layout.chunk_tokens, width) if width else (layout.chunk_tokens,),
            shards=(layout.shard_tokens, width) if width else (layout.shard_tokens,),
            compressors=layout.codecs(),
            attributes={"dtype": layout.dtype} if name == "acts" else None,
        )
    group.attrs.update(attrs)
    return group


class _Progress:
    """Which shards are written, beside the store being written (``<store>.progress/<k>``).

    A shard counts once its five arrays' files are written; its file then holds the sum of its
    activations' norms, so a resumed run's mean norm is the uninterrupted run's to the last digit,
    its count of excluded positions per rule and per split, and for a remote store the md5 and size
    of its files, for the manifest. Ranks write disjoint shards, so each shard's record has one writer.
    """

    def __init__(self, out: Location | Path):
        self.loc = _loc(out).sibling(".progress")

    def records(self) -> dict[int, dict]:
        return {int(key): json.loads(self.loc.read(key)) for key in self.loc.files() if key.isdigit()}

    def done(self) -> dict[int, float]:
        return {k: r["norm_sum"] for k, r in self.records().items()}

    def add(self, k: int, norm_sum: float, excluded: dict[str, int], files: dict | None = None) -> None:
        record = {"norm_sum": norm_sum, "excluded": excluded, **({"files": files} if files is not None else {})}
        self.loc.write(str(k), [json.dumps(record).encode()])

    def reset(self, fingerprint: str | None = None) -> None:
        self.loc.remove()
        if isinstance(self.loc, LocalLocation):
            self.loc.path.mkdir(parents=True)
        if fingerprint is not None:
            self.loc.write("fingerprint", [fingerprint.encode()])

    def fingerprint(self) -> str | None:
        return self.loc.read("fingerprint").decode() if self.loc.exists("fingerprint") else None

    def remove(self) -> None:
        self.loc.remove()


def _resumable(partial: Location, progress: _Progress, fingerprint: str) -> bool:
    """Whether `partial` was begun by a run with the same inputs (so its finished shards stand). A
    finished one whose move to an object store was cut short has lost its own fingerprint: the
    progress records keep it."""
    if not partial.exists("zarr.json"):
        return False
    attrs = json.loads(partial.read("zarr.json")).get("attributes", {})
    return attrs.get("fingerprint", progress.fingerprint()) == fingerprint


def cache_activations(
    acts_fn: Callable[[torch.Tensor], torch.Tensor],
    token_rows: zarr.Array | np.ndarray,
    rows: np.ndarray,
    out: Location | Path,
    d: int,
    layout: Layout,
    batch_seqs: int,
    attrs: dict,
    fingerprint: str,
    stop_after_shards: int | None = None,
    compute: Compute = Compute(),
    exclude: Exclusion = Exclusion(),
) -> dict:
    """Run `acts_fn` over `token_rows[rows]` and store the activations at `out`.

    `acts_fn` maps int64 tokens ``[b, ctx]`` to activations ``[b, ctx, d]``. Returns stats (on rank
    0; other ranks get ``{"complete": None}``). Under data parallelism rank r writes shards
    k ≡ r (mod world size), the same bytes one process would, and rank 0 finalises the store.
    `out` is a local path or a `Location` (a remote store: the stats then carry its ``manifest``,
    each file's md5 and size). `exclude` says which positions ``keep`` marks False; the stats count
    them per rule and per split (``attrs["splits"]``). `stop_after_shards` ends this process's run
    early, as a kill would (for tests and benchmarks).
    """
    n_seq = len(rows)
    if n_seq == 0:
        raise UserError("no sequences to cache: raise activations.max_train_tokens / max_eval_tokens")
    n_tokens, n_shards = n_seq * layout.ctx, -(-n_seq // layout.shard_seqs)
    out = _loc(out)
    partial, progress, hashed = out.sibling(".partial"), _Progress(out), out.remote
    hook = attrs.get("hook")
    if compute.is_main:
        if _resumable(partial, progress, fingerprint) and progress.done():
            print(f"resuming activation cache from {partial.url}: {len(progress.done())}/{n_shards} shards written")
        else:
            partial.remove()
            progress.reset(fingerprint)
            median = _median_norm(acts_fn, token_rows, rows, layout, d, batch_seqs, exclude, hook)
            rule = {"special_token_ids": list(exclude.special_ids), "norm_factor": exclude.norm_factor,
                    "median_norm": median, "median_tokens": exclude.median_tokens if median else None}
            _create(partial, n_tokens, d, layout, {**attrs, "exclude": rule, "fingerprint": fingerprint})
        if out.remote:
            print(f"writing the activation store to {out.url} (via {partial.url})")
    compute.barrier()  # the store exists before any rank writes into it
    # Every rank, and a resumed run, applies the threshold the store recorded when it was created.
    median = json.loads(partial.read("zarr.json"))["attributes"]["exclude"]["median_norm"]
    splits = {name: tuple(span) for name, span in attrs.get("splits", {}).items()}
    done_before = progress.done()
    todo = [k for k in range(compute.rank, n_shards, compute.world_size) if k not in done_before]
    todo = todo if stop_after_shards is None else todo[:stop_after_shards]

    # One writer thread: it compresses and writes shard k while the model computes the next one.
    pending: queue.Queue = queue.Queue(maxsize=2)
    failure: list[BaseException] = []

    def writer():
        while (item := pending.get()) is not None:
            if failure:  # keep taking items, so that the main thread never blocks on a full queue
                continue
            k, arrays, norm_sum, excluded = item
            try:
                files = {}
                for name, data in arrays.items():
                    entry = write_shard(partial, name, k, data, layout, hashed)
                    if entry is not None:
                        files[entry[0]] = entry[1]
                progress.add(k, norm_sum, excluded, files if hashed else None)  # only after the whole shard
            except BaseException as e:  # surfaced in the main thread
                failure.append(e)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    bar = tqdm(total=n_tokens, initial=len(done_before) * layout.shard_tokens, unit="tok", unit_scale=True,
               desc="cache", disable=not compute.is_main)
    try:
        for k in todo:
            shard_rows = rows[k * layout.shard_seqs : (k + 1) * layout.shard_seqs]
            tokens = _take(token_rows, shard_rows)
            acts, norms = _forward(acts_fn, tokens, layout, d, batch_seqs, hook, k)
            flat, flat_tokens = acts.reshape(-1, d), tokens.reshape(-1)
            verdicts = exclude.rules(flat_tokens, norms, median)
            keep = ~np.logical_or.reduce(list(verdicts.values()))
            arrays = {
                "acts": flat if layout.dtype != "bfloat16" else flat.view(np.uint16),
                "tokens": flat_tokens,
                "seq": np.repeat(shard_rows.astype(np.int32), layout.ctx),
                "pos": np.tile(np.arange(layout.ctx, dtype=np.int32), len(shard_rows)),
                "keep": keep,
            }
            first = k * layout.shard_tokens
            excluded = {"tokens": int((~keep).sum()), **{r: int(v.sum()) for r, v in verdicts.items()},
                        **{name: int((~keep[max(a - first, 0) : max(b - first, 0)]).sum())
                           for name, (a, b) in splits.items()}}
            pending.put((k, arrays, norms.sum(dtype=np.float64).item(), excluded))
            if failure:
                raise failure[0]
            bar.update(len(flat) * compute.world_size)
    finally:
        pending.put(None)
        thread.join()
        bar.close()
    if failure:
        raise failure[0]
    if not compute.is_main:
        return {"complete": None}
    done = _wait_for(progress, n_shards, stop_after_shards is None, compute.timeout_s)
    elapsed = time.perf_counter() - t0
    if len(done) < n_shards:
        return {"complete": False, "shards_done": len(done)}

    records = progress.records()
    excluded = {key: sum(records[k]["excluded"][key] for k in range(n_shards))
                for key in ("tokens", *RULES, *splits)}
    group = zarr.open_group(partial.zarr_store(read_only=False), mode="r+")
    if "fingerprint" in group.attrs:  # gone already if a move to an object store was cut short
        del group.attrs["fingerprint"]
    group.attrs.update({**attrs, "excluded": excluded})  # a resumed store: the record of the run that finished it
    raw = n_tokens * d * np.dtype(_BUFFER[layout.dtype]).itemsize
    sizes = partial.files()
    written = len(done) - len(done_before)
    stats = {
        "complete": True,
        "tokens": n_tokens,
        "d": d,
        "dtype": layout.dtype,
        "bytes_on_disk": sum(sizes.values()),
        "acts_bytes_raw": raw,
        "compression_ratio": raw / sum(n for key, n in sizes.items() if key.startswith("acts/")),
        "files": len(sizes),
        "seconds": elapsed,
        "tokens_per_second": written * layout.shard_tokens / elapsed if written else None,
        "mean_norm": sum(done[k] for k in range(n_shards)) / n_tokens,  # summed in shard order
        "excluded": {**excluded, "median_norm": median},
    }
    if hashed:
        stats["manifest"] = _manifest(partial, progress, sizes)
    partial.replace(out)
    progress.remove()
    return stats


def _forward(acts_fn, tokens: np.ndarray, layout: Layout, d: int, batch_seqs: int, hook: str | None,
             shard: int) -> tuple[np.ndarray, np.ndarray]:
    """The activations of `tokens` ``[seqs, ctx]`` as the store holds them, and each token's norm, of the
    stored values (so a resumed run, and the exclusion rule, see what a reader will). Rounded to the
    store's dtype and measured where `acts_fn` left them (a GPU's output crosses to the host at the
    store's width, and the host does no per-value work)."""
    acts = np.empty((len(tokens), layout.ctx, d), dtype=_BUFFER[layout.dtype])
    norms = np.empty((len(tokens), layout.ctx), dtype=np.float64)
    for i in range(0, len(tokens), batch_seqs):
        out_b = acts_fn(torch.from_numpy(tokens[i : i + batch_seqs]).long())
        if layout.dtype == "float32":
            stored = out_b.float()
            n = stored.double().norm(dim=-1)
        else:
            stored = out_b.to(torch.bfloat16 if layout.dtype == "bfloat16" else torch.float16)
            n = stored.float().norm(dim=-1)
            stored = stored.view(torch.int16) if layout.dtype == "bfloat16" else stored  # the bits
        if not torch.isfinite(n).all():
            _refuse(out_b, hook, shard, layout.dtype)
        torch.from_numpy(acts[i : i + batch_seqs]).copy_(stored)
        norms[i : i + batch_seqs] = n.cpu().numpy()
    return acts, norms.reshape(-1)


def _median_norm(acts_fn, token_rows, rows: np.ndarray, layout: Layout, d: int, batch_seqs: int,
                 exclude: Exclusion, hook: str | None) -> float | None:
    """The norm rule's median, over the first `exclude.median_tokens` tokens to cache (None when the rule is
    off): computed once, a shard at a time, before any shard is written, and recorded in the store."""
    if exclude.norm_factor is None:
        return None
    first = rows[: -(-exclude.median_tokens // layout.ctx)]
    tokens, norms = [], []
    for k in range(0, len(first), layout.shard_seqs):
        t = _take(token_rows, first[k : k + layout.shard_seqs])
        tokens.append(t.reshape(-1))
        norms.append(_forward(acts_fn, t, layout, d, batch_seqs, hook, k // layout.shard_seqs)[1])
    return exclude.median_norm(np.concatenate(tokens), np.concatenate(norms))


def _manifest(partial: Location, progress: _Progress, sizes: dict[str, int]) -> dict[str, dict]:
    """Every file of the finished store: md5 and size, the shards' as their writers recorded them."""
    files = {key: info for record in progress.records().values() for key, info in record["files"].items()}
    for key in sizes:
        if key not in files:  # the zarr.json metadata: small, read back
            data = partial.read(key)
            files[key] = {"md5": storage.md5(data), "size": len(data)}
    missing = sorted(set(files) - set(sizes))
    if missing:
        raise StoreError(f"{partial.url}: shard files {missing[:5]} were recorded as written but are not there; "
                         "re-run cache_activations (it rewrites the shards not finished)")
    return {key: files[key] for key in sorted(sizes)}


def _wait_for(progress: _Progress, n_shards: int, all_ranks: bool, stall_s: float = 600.0,
              poll_s: float = 0.2) -> dict[int, float]:
    """The finished shards, once every rank has written its own. The file system, not a collective:
    ranks finish at different times, however long that takes, but a wait in which no shard at all
    appears for `stall_s` (a rank on another node died unseen) ends in an error, never a hang."""
    done, last_change = progress.done(), time.monotonic()
    while all_ranks and len(done) < n_shards:
        time.sleep(poll_s)
        now = progress.done()
        if len(now) > len(done):
            last_change = time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            missing = sorted(set(range(n_shards)) - set(now))
            raise UserError(f"no activation shard was finished for {stall_s:.0f} s; still missing: {missing[:10]} "
                            f"(shard k is rank k mod world size's). A rank died? Re-run to resume")
        done = now
    return done


def _refuse(out: torch.Tensor, hook: str | None, shard: int, dtype: str = "float16") -> None:
    """Stop before a non-finite activation, or one the store's dtype cannot hold, reaches the store."""
    finite = torch.isfinite(out)
    if not finite.all():
        raise UserError(f"the model's activations at hook {hook!r} hold {int((~finite).sum())} non-finite values "
                        f"(shard {shard}); check the model (models/transformer) and model.hf.dtype, then re-run")
    limit = torch.finfo(torch.float16 if dtype == "float16" else torch.bfloat16).max
    fix = ("set activations.dtype: bfloat16 (float32's range in the same 2 bytes, with 3 significant digits) or "
           "float32 (exact, twice the size)" if dtype == "float16" else "set activations.dtype: float32")
    raise UserError(f"an activation at hook {hook!r} is {float(out.abs().max()):.4g}, beyond {dtype}'s range "
                    f"({limit:.5g}) (shard {shard}); nothing was stored for it: {fix}, then re-run cache_activations")


def _take(token_rows: zarr.Array | np.ndarray, idx: np.ndarray) -> np.ndarray:
    if isinstance(token_rows, np.ndarray):
        return token_rows[idx].astype(np.int32, copy=False)
    return token_rows.get_orthogonal_selection((idx, slice(None))).astype(np.int32, copy=False)


class StoreError(UserError):
    """The activation store is not what cache_activations wrote."""


def _fix(path: str | Path) -> str:
    if storage.is_url(str(path)):
        return ("rebuild it with `dvc repro -f cache_activations` (a remote store is not in DVC's cache; "
                "`monosemantic audit` names the files that changed)")
    return f"restore it with `dvc checkout {path}`, or rebuild it with `dvc repro -f cache_activations`"


class VerifiedArray:
    """A store array whose every read is checked: a chunk failing its crc32c, or a non-finite
    activation, stops the reader with the shard file and the fix instead of training on it.
    A bfloat16 array (its bits stored as uint16) reads as float32."""

    def __init__(self, array: zarr.Array, path: Location | Path, name: str):
        self.array, self.location, self.name = array, _loc(path), name
        self.path = self.location.url  # a local path or a URL, for messages
        self.bfloat16 = array.attrs.get("dtype") == "bfloat16"
        self.dtype = np.dtype(np.float32) if self.bfloat16 else array.dtype
        self.shape, self.chunks = array.shape, array.chunks
        self.shard_rows = (array.shards or array.chunks)[0]

    def shard_key(self, row: int) -> str:
        return shard_key(self.name, row // self.shard_rows, len(self.shape))

    def shard_file(self, row: int) -> str:
        return self.location.display(self.shard_key(row))

    def __getitem__(self, rows: slice) -> np.ndarray:
        try:
            with self.location.errors(f"reading rows {rows.start}:{rows.stop} of", self.name):
                data = self.array[rows]
        except (ValueError, RuntimeError) as e:  # crc32c mismatch, or a codec that cannot decode
            reason = "fails its checksum" if "checksum" in str(e) else f"cannot be decoded ({e})"
            raise StoreError(f"{self.path}: a chunk in rows {rows.start}:{rows.stop} {reason} (shard file "
                             f"{self.shard_file(rows.start or 0)}, or the next one if the rows span two); "
                             f"{_fix(self.path)}") from None
        if self.bfloat16:
            data = (data.astype(np.uint32) << 16).view(np.float32)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            bad = int(np.argwhere(~np.isfinite(data))[0][0]) + (rows.start or 0)
            raise StoreError(f"{self.path}: non-finite activation at row {bad} (shard file "
                             f"{self.shard_file(bad)}); {_fix(self.path)}")
        return data

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)


@dataclass(frozen=True)
class ActivationStore:
    group: zarr.Group
    path: str | Path  # the local store, or the URL of a remote one
    location: Location | None = None

    @property
    def acts(self) -> VerifiedArray:
        return VerifiedArray(self.group["acts"], self.location or self.path, "acts")

    @property
    def keep(self) -> VerifiedArray | None:
        """Which rows readers use (False: left out by `exclude`); None when the store left out none,
        so that readers need not read it."""
        if not self.group.attrs["excluded"]["tokens"]:
            return None
        return VerifiedArray(self.group["keep"], self.location or self.path, "keep")

    @property
    def excluded(self) -> dict[str, int]:
        """Positions left out: in all (``tokens``), by each rule (which may overlap) and in each split."""
        return dict(self.group.attrs["excluded"])

    @property
    def splits(self) -> dict[str, tuple[int, int]]:
        return {k: tuple(v) for k, v in self.group.attrs["splits"].items()}


def open_store(path: str | Path) -> ActivationStore:
    """Open a finished store, checking that no shard file is missing (zarr would read zeros).

    `path` is a local store, a store URL, or a workspace path holding a remote store's manifest
    (data/activations.zarr when activations.store is a URL): then the store found at the URL must
    be the one the manifest describes (same files, sizes and metadata), else an error says so.
    """
    loc, manifest = storage.resolve(path)
    shown = loc.url if loc.remote else Path(path)
    if not loc.exists("zarr.json"):
        if manifest is not None:
            raise StoreError(f"{loc.url} (named by {Path(path) / storage.MANIFEST}) holds no activation store: "
                             f"was it deleted, or is the cache being rewritten? {_fix(loc.url)}")
        raise UserError(f"{shown} is not an activation store: run the cache_activations stage first")
    with loc.errors("opening"):
        group = zarr.open_group(loc.zarr_store(read_only=True), mode="r")
        if "fingerprint" in group.attrs:
            raise StoreError(f"{shown} is an unfinished store (a killed cache_activations run?); {_fix(shown)}")
        present = loc.files() if loc.remote else None  # one listing, not a request per shard
        for name in ("acts", "tokens", "seq", "pos", "keep"):
            if name not in group:
                raise StoreError(f"{shown} has no {name!r} array; {_fix(shown)}")
            array = VerifiedArray(group[name], loc, name)
            for row in range(0, array.shape[0], array.shard_rows):
                key = array.shard_key(row)
                if not (key in present if present is not None else loc.exists(key)):
                    raise StoreError(f"{shown}: shard file {array.shard_file(row)} is missing; {_fix(shown)}")
        if manifest is not None:
            _match_manifest(loc, manifest, present, Path(path) / storage.MANIFEST)
    return ActivationStore(group, shown, loc)


def _match_manifest(loc: Location, manifest: dict, present: dict[str, int], where: Path) -> None:
    """The remote store is the one the workspace's manifest describes: the same files, of the same
    sizes, and the same root metadata (its provenance names the run that wrote it). Cheap: one
    listing and one small read; `monosemantic audit` checks every byte."""
    files = manifest["files"]
    odd = sorted(k for k in files.keys() | present.keys() if files.get(k, {}).get("size") != present.get(k))
    root = files.get("zarr.json", {}).get("md5")
    if odd or root != storage.md5(loc.read("zarr.json")):
        detail = f"files {odd[:5]} differ in size or presence" if odd else "its zarr.json differs"
        raise StoreError(f"{loc.url} is not the store {where} describes ({detail}): another run rewrote it, or "
                         f"it was changed; {_fix(loc.url)}")
