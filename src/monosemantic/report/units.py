"""What the site shows about each unit (feature or neuron), read from interpret's outputs.

`reports/features/<name>/` (a dictionary's name is `<architecture>-<size>`) holds
features.parquet (one row per unit), examples.parquet (the example windows of interpreted units)
and proxies.parquet (one row per unit and proxy). They are read once per dictionary and handed to
the templates as plain dicts; any file may be missing.

Interpret seeds each unit's draws by the unit, so the subject model's neurons come out the same
beside every dictionary: those dictionaries share one page per neuron, in `pages/neurons/`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import polars as pl
from polars.testing import assert_frame_equal

from monosemantic.params import dictionary_name
from monosemantic.report import svg, tokens

GROUP_ORDER = {"top": 0, "interval": 1, "random": 2, "token": 3}
_REASONS = {"sample": "the random sample", "splitting": "a splitting family"}  # and proxy:<name>
Key = tuple[str, int]                # (kind, index) of a unit
Loc = tuple[str, int, int]           # (architecture, size, feature) of a feature
NEURONS = "neurons"                  # the pages folder of the neurons the dictionaries share


def page_path(folder: str, kind: str, index: int) -> str:
    """Where a unit's page lives, relative to the pages folder (`folder`: the dictionary's name, or NEURONS)."""
    return f"{folder}/{kind}-{index}.html"


def number(v: Any) -> float | None:
    """A finite float or None: NaN is not JSON, and missing scores must read as missing."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


class Interpretation:
    """One dictionary's interpret outputs."""

    def __init__(self, architecture: str, size: int, folder: Path):
        self.architecture, self.size, self.name = architecture, size, dictionary_name(architecture, size)
        self.units = pl.read_parquet(folder / "features.parquet")
        tables = [self.units] + [pl.read_parquet(folder / f) if (folder / f).exists() else None
                                 for f in ("examples.parquet", "proxies.parquet")]
        self.neuron_tables = [None if t is None else t.filter(pl.col("kind") == "neuron") for t in tables]
        self.examples: dict[Key, list[dict]] = defaultdict(list)
        for row in tables[1].iter_rows(named=True) if tables[1] is not None else ():
            self.examples[(row["kind"], row["index"])].append(row)
        self.proxies: dict[Key, list[dict]] = defaultdict(list)
        if tables[2] is not None:
            for row in tables[2].sort("f1", descending=True, nulls_last=True).iter_rows(named=True):
                self.proxies[(row["kind"], row["index"])].append(row)
        interpreted = self.units.filter(pl.col("interpreted"))
        self.pages = {(k, i) for k, i in zip(interpreted["kind"], interpreted["index"])}
        self.neuron_folder = self.name  # share_neurons may move its neurons' pages to NEURONS,
        self.beside = [self.name]       # shared by these dictionaries, the first of which writes them

    def folder(self, kind: str) -> str:
        """The pages folder of its units of this kind."""
        return self.neuron_folder if kind == "neuron" else self.name

    @property
    def writes_neurons(self) -> bool:
        return self.beside[0] == self.name

    def same_neurons(self, other: Interpretation) -> bool:
        """Whether every neuron's row, examples and proxies equal `other`'s (floats to 1e-9: a sum over a
        bfloat16 or float32 store may round in another order), so that one page shows both."""
        for a, b in zip(self.neuron_tables, other.neuron_tables):
            if (a is None) != (b is None):
                return False
            try:
                if a is not None:
                    assert_frame_equal(a, b, rel_tol=1e-9, abs_tol=1e-12)
            except AssertionError:
                return False
        return True

    def scores(self, kind: str) -> list[float]:
        """The random sample's scores (as interp.json's means): the named units were picked for being good at something."""
        return [v for v in self._sample().filter(pl.col("kind") == kind)["score_pearson"].to_list() if number(v) is not None]

    def controls(self, kind: str) -> list[float]:
        """The sample's control scores (another unit's explanation of the same kind): chance level."""
        return [v for v in self._sample().filter(pl.col("kind") == kind)["control_pearson"].to_list()
                if number(v) is not None]

    def _sample(self) -> pl.DataFrame:
        return self.units.filter(pl.col("chosen_for").list.contains("sample"))

    def table_rows(self, order: int) -> list[list]:
        """The index table's rows (columns as site.TABLE_COLUMNS), every unit of the dictionary;
        `order`: the dictionary's place on the site (the table sorts dictionaries by it)."""
        u = self.units
        return [[order, self.name, kind, index, _round(d), _round(m), _round(s), _round(c), expl, err, proxy,
                 _round(f1), page_path(self.folder(kind), kind, index) if interp else None]
                for kind, index, d, m, s, c, expl, err, proxy, f1, interp in zip(
                    u["kind"], u["index"], u["density"], u["max_activation"], u["score_pearson"], u["control_pearson"],
                    u["explanation"], u["explanation_error"], u["best_proxy"], u["best_proxy_f1"], u["interpreted"])]

    def pages_context(self, nearest: Nearest, pages: dict[str, set[Key]]) -> Iterator[dict[str, Any]]:
        """One template context per page it writes (every interpreted unit but the shared neurons another
        dictionary writes), made as its page is written (they are large); `pages`: which units have a page,
        per dictionary name."""
        for row in self.units.filter(pl.col("interpreted")).iter_rows(named=True):
            key = (row["kind"], row["index"])
            if row["kind"] == "neuron" and not self.writes_neurons:
                continue
            yield {**row, "name": self.name, "architecture": self.architecture, "size": self.size,
                   "beside": self.beside,
                   "chosen_for": [_REASONS.get(w, w.replace("proxy:", "best for proxy ")) for w in row["chosen_for"]],
                   "path": page_path(self.folder(row["kind"]), *key),
                   "histogram": _histogram(row), "groups": self._groups(key, row["max_activation"]),
                   "boost": _logits(row["logit_boost_tokens"], row["logit_boost_values"]),
                   "suppress": _logits(row["logit_suppress_tokens"], row["logit_suppress_values"]),
                   "proxies": self.proxies.get(key, []),
                   "control_path": _control_path(self.name, self.folder(row["kind"]), row, pages),
                   "nearest": nearest.around(self.architecture, self.size, row["index"], pages)
                   if row["kind"] == "feature" else []}

    def _groups(self, key: Key, max_act: float | None) -> list[dict[str, Any]]:
        rows = sorted(self.examples.get(key, []), key=lambda r: (
            GROUP_ORDER.get(r["group"], 9), -(r["interval"] or 0) if r["group"] == "interval" else 0,
            r["split"] != "train", r["rank"]))
        n_intervals = max((r["interval"] or 0 for r in rows), default=0)  # the top examples are in the top one
        scale = max_act or max((max(r["acts"], default=0) for r in rows), default=1.0)
        groups: list[dict[str, Any]] = []
        for r in rows:
            label = _group_label(r["group"], r["interval"], n_intervals)
            if not groups or groups[-1]["label"] != label:
                groups.append({"label": label, "examples": [], "centers": []})
            c = r["center"]
            groups[-1]["examples"].append({
                "html": tokens.example(r["tokens"], r["acts"], scale, c, r["simulated"]),
                "heldout": r["split"] != "train"})
            center_act = r["acts"][c] if 0 <= c < len(r["acts"]) else None
            if center_act is not None:
                groups[-1]["centers"].append(center_act)
        for g in groups:
            centers = g.pop("centers")
            g["range"] = (min(centers), max(centers)) if centers else None
        return groups


class Nearest:
    """Feature splitting across sizes (reports/splitting/nearest.parquet), within each architecture and
    both ways: a feature's nearest feature in each smaller dictionary of its architecture, and the
    features of its larger ones nearest to it. Links never cross architectures."""

    def __init__(self, table: pl.DataFrame | None, top: int = 5):
        self.down: dict[Loc, list[tuple[int, int, float]]] = defaultdict(list)
        self.up: dict[Loc, list[tuple[int, int, float]]] = defaultdict(list)
        for r in (table.iter_rows(named=True) if table is not None else ()):
            arch = r["architecture"]
            self.down[(arch, r["dict_size"], r["feature"])].append((r["other_size"], r["nearest"], r["cosine"]))
            self.up[(arch, r["other_size"], r["nearest"])].append((r["dict_size"], r["feature"], r["cosine"]))
        self.top = top

    def around(self, architecture: str, size: int, feature: int, pages: dict[str, set[Key]]) -> list[dict[str, Any]]:
        def link(s: int, f: int, cos: float) -> dict[str, Any]:
            name = dictionary_name(architecture, s)
            has = ("feature", f) in pages.get(name, set())
            return {"index": f, "cosine": cos, "path": page_path(name, "feature", f) if has else None}

        out = [{"name": dictionary_name(architecture, s), "size": s, "relation": "its nearest feature there",
                "features": [link(s, f, c)]}
               for s, f, c in sorted(self.down.get((architecture, size, feature), []))]
        larger: dict[int, list] = defaultdict(list)
        for s, f, c in self.up.get((architecture, size, feature), []):
            larger[s].append((c, f))
        for s in sorted(larger):
            best = sorted(larger[s], reverse=True)
            shown = f", the {self.top} closest" if len(best) > self.top else ""
            out.append({"name": dictionary_name(architecture, s), "size": s,
                        "relation": f"{len(best)} features there have it as their nearest{shown}",
                        "features": [link(s, f, c) for c, f in best[: self.top]]})
        return out


def _group_label(group: str, interval: int | None, n: int) -> str:
    if group == "interval":
        return f"Interval {interval} of {n}" if n else "Interval"
    return {"top": "Top activations", "random": "Random tokens",
            "token": "Its top tokens in other contexts"}.get(group, group.capitalize())


def _histogram(row: dict[str, Any]):
    counts, hi = row["hist_counts"] or [], number(row["max_activation"]) or 0.0
    return svg.bars(counts, 0.0, hi, "activation", "tokens", "activation histogram (nonzero activations)") \
        if counts and hi > 0 else None


def _logits(toks: list[str] | None, values: list[float] | None) -> list[tuple[Any, float]]:
    return [(tokens.token_text(t), v) for t, v in zip(toks or [], values or [])]


def _control_path(name: str, folder: str, row: dict[str, Any], pages: dict[str, set[Key]]) -> str | None:
    other = row.get("control_of")
    has = other is not None and (row["kind"], other) in pages.get(name, set())
    return page_path(folder, row["kind"], other) if has else None


def share_neurons(interpretations: list[Interpretation]) -> None:
    """The largest group of dictionaries with the same neurons (the first such, on a tie) shares one page per
    neuron, in NEURONS, written by its first; a dictionary outside it (LLM replies not all from one cache)
    keeps its own."""
    groups: list[list[Interpretation]] = []
    for d in (d for d in interpretations if any(kind == "neuron" for kind, _ in d.pages)):
        same = next((g for g in groups if d.same_neurons(g[0])), None)
        if same is None:
            groups.append([d])
        else:
            same.append(d)
    group = max(groups, key=len, default=[])
    for d in group:
        d.neuron_folder, d.beside = NEURONS, [g.name for g in group]


def _round(v: Any) -> float | None:
    v = number(v)
    return float(f"{v:.4g}") if v is not None else None
