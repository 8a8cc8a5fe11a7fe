"""Feature splitting: how the features of a larger dictionary relate to those of smaller ones.

For each feature of a larger dictionary, its nearest feature (highest decoder cosine) in each
smaller one. A feature of the smallest dictionary whose direction is the nearest of several
larger-dictionary features "splits" into them: the paper's base64 feature, 1 → 3 → many.
"""

from __future__ import annotations

import polars as pl
import torch


@torch.no_grad()
def nearest(larger: torch.Tensor, smaller: torch.Tensor, rows: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of `larger` [n, d], the index of and cosine to its nearest row of `smaller` [m, d]."""
    a = torch.nn.functional.normalize(larger.float(), dim=1)
    b = torch.nn.functional.normalize(smaller.float(), dim=1)
    cos, idx = [], []
    for i in range(0, len(a), rows):  # bounded memory for large dictionaries
        c, j = (a[i : i + rows] @ b.T).max(dim=1)
        cos.append(c)
        idx.append(j)
    return torch.cat(cos), torch.cat(idx)


def nearest_table(decoders: dict[int, torch.Tensor]) -> pl.DataFrame:
    """One row per (feature of a dictionary, smaller dictionary): its nearest feature there."""
    frames = []
    for size, w in decoders.items():
        for other, v in decoders.items():
            if other < size:
                cos, idx = nearest(w, v)
                frames.append(pl.DataFrame({
                    "dict_size": pl.Series([size] * len(w), dtype=pl.Int32),
                    "feature": pl.Series(range(len(w)), dtype=pl.Int32),
                    "other_size": pl.Series([other] * len(w), dtype=pl.Int32),
                    "nearest": pl.Series(idx.numpy(), dtype=pl.Int32),
                    "cosine": pl.Series(cos.numpy(), dtype=pl.Float32),
                }))
    schema = {"dict_size": pl.Int32, "feature": pl.Int32, "other_size": pl.Int32, "nearest": pl.Int32, "cosine": pl.Float32}
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def families(table: pl.DataFrame, threshold: float) -> list[dict]:
    """Features of the smallest dictionary with the larger features they split into.

    A larger feature belongs to the family of its nearest smallest-dictionary feature when
    their cosine is at least `threshold`. Families that gained more than one member in some
    larger dictionary come first, the largest first.
    """
    if table.is_empty():
        return []
    root = int(table["other_size"].min())
    members = (table.filter((pl.col("other_size") == root) & (pl.col("cosine") >= threshold))
               .group_by("nearest", "dict_size").agg(pl.col("feature").sort(), pl.col("cosine").mean().alias("mean_cosine")))
    out: dict[int, dict] = {}
    for r in members.sort("nearest", "dict_size").iter_rows(named=True):
        fam = out.setdefault(r["nearest"], {"dict_size": root, "feature": r["nearest"], "children": {}})
        fam["children"][str(r["dict_size"])] = {"features": r["feature"], "mean_cosine": round(r["mean_cosine"], 4)}
    ranked = sorted(out.values(), key=lambda f: (-max(len(c["features"]) for c in f["children"].values()),
                                                 -sum(len(c["features"]) for c in f["children"].values()), f["feature"]))
    return ranked


def splits(fams: list[dict]) -> list[dict]:
    """The families that split: more than one member in some larger dictionary."""
    return [f for f in fams if any(len(c["features"]) > 1 for c in f["children"].values())]


def members(fams: list[dict]) -> dict[int, set[int]]:
    """Per dictionary size, the features of the families that split: the root and its members."""
    out: dict[int, set[int]] = {}
    for f in splits(fams):
        out.setdefault(f["dict_size"], set()).add(f["feature"])
        for size, c in f["children"].items():
            out.setdefault(int(size), set()).update(c["features"])
    return out


def summary(table: pl.DataFrame, fams: list[dict]) -> dict[str, dict[str, float]]:
    """Per pair of sizes: the distribution of nearest-feature cosines, and how many splits."""
    out = {}
    for (size, other), g in table.group_by("dict_size", "other_size", maintain_order=True):
        cos = g["cosine"]
        out[f"{size}_to_{other}"] = {
            "median_cosine": float(cos.median()), "mean_cosine": float(cos.mean()),
            "fraction_above_0.9": float((cos >= 0.9).mean()),
        }
    if fams:
        sizes = sorted({int(s) for f in fams for s in f["children"]})
        for s in sizes:
            split = [f for f in fams if len(f["children"].get(str(s), {}).get("features", [])) >= 2]
            out.setdefault("families", {})[f"split_into_{s}"] = len(split)
    return out


def cosine_histogram(table: pl.DataFrame, bins: int = 20) -> list[dict]:
    rows = []
    for (size, other), g in table.group_by("dict_size", "other_size", maintain_order=True):
        counts = torch.histc(torch.tensor(g["cosine"].to_numpy(), dtype=torch.float32), bins=bins, min=0.0, max=1.0)
        for i, c in enumerate(counts):
            rows.append({"pair": f"{size} to {other}", "cosine": round((i + 0.5) / bins, 4), "features": int(c)})
    return rows
