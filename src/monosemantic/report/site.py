"""The HTML feature browser: `index.html` plus a `pages/` folder beside it, written in one pass.

Everything opens from file:// with no network: CSS and JS are bundled files copied into
`pages/assets/`, plots are inline SVG, and the index table's rows are embedded as JSON and
paged client-side so it stays fast with tens of thousands of units. Only interpreted units
get a page (that bounds the site's size); the table lists every unit. Templates live in
`templates/` (jinja2, autoescaped: corpus text is untrusted) for a designer to edit.

A dictionary is named `<architecture>-<size>`; the site lists them by architecture (in
params.yaml's order), then by size, and compares architectures on one L0 frontier.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import math
import statistics
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import polars as pl
from tqdm import tqdm

from monosemantic.params import dictionary_name
from monosemantic.provenance import PROVENANCE_FILE, atomic_output, write_json
from monosemantic.report import svg
from monosemantic.report.summary import (COLUMNS, best_proxies, cell, compare_architectures, frontier_cell,
                                         interp_columns, row, scored)
from monosemantic.report.units import Interpretation, Nearest, number, page_path, share_neurons

PAGES = "pages"
ASSETS = ("site.css", "site.js", "unit.js")
HEADLINE = ("loss_recovered", "l0", "mse", "fvu", "dead_features", "ultralow_features", "dense_features")
TABLE_COLUMNS = ["order", "dictionary", "kind", "index", "density", "max_activation", "score", "control",
                 "explanation", "explanation_error", "best_proxy", "best_proxy_f1", "page"]
FRONTIERS = (("loss_recovered", "loss recovered"), ("fvu", "FVU"))  # each against L0, one series per architecture


@dataclass
class Dictionary:
    """What the site shows about one dictionary; every part but its architecture and size may be missing."""

    architecture: str
    size: int
    metrics: dict[str, Any] = field(default_factory=dict)    # train.json merged with eval.json
    density: list[dict[str, float]] = field(default_factory=list)  # rows of plots/density/<name>.csv
    interp: dict[str, Any] | None = None                      # metrics/sae/<name>/interp.json
    features: Path | None = None                              # interpret's folder, reports/features/<name>
    lineage: list[dict[str, Any]] = field(default_factory=list)  # from report.lineage.lineage()

    @property
    def name(self) -> str:
        """`<architecture>-<size>`: its stages, folders and pages are named so."""
        return dictionary_name(self.architecture, self.size)

    def row(self) -> dict[str, Any]:
        """Its row of the metrics table (summary.COLUMNS)."""
        return row(self.architecture, self.size, self.metrics, self.interp)


def environment() -> jinja2.Environment:
    """Autoescaped everywhere; StrictUndefined so a template typo fails the build, not a page."""
    env = jinja2.Environment(loader=jinja2.PackageLoader(__package__, "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, spec=".3g": "–" if number(v) is None else format(v, spec)
    return env


def build_site(out: Path, dictionaries: list[Dictionary], frontier: dict[str, list[dict[str, Any]]] | None = None,
               nearest: pl.DataFrame | None = None, provenance: dict[str, Any] | None = None) -> dict[str, float]:
    """Write `out/index.html` and `out/pages/`; returns pages written, bytes and seconds.

    `dictionaries`: in the order to show their architectures (params.yaml's), sizes in any order;
    `frontier`: rows of plots/frontier/<architecture>.csv per architecture; `nearest`:
    reports/splitting/nearest.parquet; `provenance`: the record of the run that builds the site, kept in `pages/`.
    """
    start = time.perf_counter()
    env = environment()
    order = list(dict.fromkeys(d.architecture for d in dictionaries))
    dictionaries = sorted(dictionaries, key=lambda d: (order.index(d.architecture), d.size))
    interpreted = {d.name: Interpretation(d.architecture, d.size, d.features) for d in dictionaries
                   if d.features is not None and (d.features / "features.parquet").exists()}
    share_neurons(list(interpreted.values()))
    pages = {name: data.pages for name, data in interpreted.items()}
    links = Nearest(nearest)
    built = {"at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "record": provenance or {}}
    n_pages = 0
    with atomic_output(out / PAGES) as tmp:
        (tmp / "assets").mkdir()
        for name in ASSETS:
            (tmp / "assets" / name).write_bytes(resources.files(__package__).joinpath("assets", name).read_bytes())
        page, examples = env.get_template("unit.html"), env.get_template("examples.html")
        for name, data in interpreted.items():
            units = data.pages_context(links, pages)
            total = sum(kind == "feature" or data.writes_neurons for kind, _ in data.pages)
            for unit in tqdm(units, total=total, desc=f"report: pages of {name}", leave=False):
                packed = _pack(examples.render(groups=unit["groups"]))
                html = page.render(unit=unit, examples=packed, root="../", home="../../index.html")
                (tmp / unit["path"]).parent.mkdir(exist_ok=True)
                (tmp / unit["path"]).write_text(html)
                n_pages += 1
        if provenance:
            write_json(tmp / PROVENANCE_FILE, provenance)
    contexts = [_dictionary_context(d, interpreted.get(d.name)) for d in dictionaries]
    groups = [{"architecture": a, "dictionaries": [c for c in contexts if c["architecture"] == a]} for a in order]
    rows = [r for k, data in enumerate(interpreted.values()) for r in data.table_rows(k)]
    with atomic_output(out / "index.html", is_dir=False) as tmp:
        tmp.write_text(env.get_template("index.html").render(
            dictionaries=contexts, groups=groups, columns=[(h, key) for h, key, _ in COLUMNS],
            metrics=[{"name": d.name, "cells": [cell(fmt, d.row().get(key)) for _, key, fmt in COLUMNS]}
                     for d in dictionaries],
            frontiers=_frontiers(frontier or {}, order),
            dense_threshold=next((d.metrics["dense_threshold"] for d in dictionaries if "dense_threshold" in d.metrics), None),
            compared=_compared(dictionaries), interp=_interp_table(dictionaries),
            table={"columns": TABLE_COLUMNS, "rows": rows},
            root=f"{PAGES}/", home="index.html", built=built))
    files = [out / "index.html", *(p for p in (out / PAGES).rglob("*") if p.is_file())]
    return {"pages": n_pages, "bytes": sum(p.stat().st_size for p in files), "seconds": time.perf_counter() - start}


def _pack(html: str) -> str:
    """gzip (mtime 0: the same input gives the same page, so DVC sees unchanged pages) + base64."""
    return base64.b64encode(gzip.compress(html.encode(), compresslevel=6, mtime=0)).decode()


def _dictionary_context(d: Dictionary, data: Interpretation | None) -> dict[str, Any]:
    density = None
    if len(d.density) > 1:
        centers = [r["log10_density"] for r in d.density]
        half = (centers[1] - centers[0]) / 2
        density = svg.bars([r["features"] for r in d.density], centers[0] - half, centers[-1] + half,
                           "log10 feature density", "features", f"feature density, {d.name}")
    headline = [(header, cell(fmt, d.metrics.get(key))) for header, key, fmt in COLUMNS if key in HEADLINE]
    ctx: dict[str, Any] = {"name": d.name, "architecture": d.architecture, "size": d.size, "headline": headline, "density": density, "lineage": d.lineage,
                           "interp": d.interp or {}, "interpreted": data is not None,
                           "scores": None, "stats": [], "proxies": [], "pages": 0}
    if data is not None:
        # The control is the features' (summary.md's "control r"): the chance level the features are read against.
        series = {"features": data.scores("feature"), "neurons": data.scores("neuron"), "control": data.controls("feature")}
        lo = min([-0.25, *(v for vals in series.values() for v in vals)])
        lo = max(-1.0, math.floor(lo * 4) / 4)
        ctx["scores"] = svg.distributions(series, lo, 1.0, round((1 - lo) / 0.05), "simulation score (Pearson r)",
                                          f"interpretability scores, {d.name}: features vs neurons")
        features = (d.interp or {}).get("features") or {}
        control = {k: features[f] for k, f in (("mean_pearson", "control_mean_pearson"),
                                               ("mean_spearman", "control_mean_spearman")) if f in features}
        given = {"features": features, "neurons": (d.interp or {}).get("neurons"), "control": control}
        ctx["stats"] = [_stats(name, values, given[name]) for name, values in series.items()]
        ctx["proxies"] = [(proxy, feature, f1, page_path(d.name, "feature", feature)
                           if ("feature", feature) in data.pages else None)
                          for proxy, feature, f1 in best_proxies(d.interp or {})]
        ctx["pages"] = len(data.pages)
    return ctx


def _stats(name: str, values: list[float], given: dict[str, Any] | None) -> dict[str, Any]:
    """interp.json's numbers where it has them (it may filter units), else the table's."""
    given = given or {}
    return {"name": name, "n": scored(given) if scored(given) is not None else len(values),
            "mean": given.get("mean_pearson", statistics.fmean(values) if values else None),
            "median": given.get("median_pearson", statistics.median(values) if values else None),
            "mean_spearman": given.get("mean_spearman")}


def _frontiers(frontier: dict[str, list[dict[str, Any]]], order: list[str]) -> list[dict[str, Any]]:
    """L0 vs loss recovered and L0 vs FVU: one series per architecture (params.yaml's order first),
    one point per dictionary size."""
    archs = [a for a in order if a in frontier] + [a for a in frontier if a not in order]
    charts = []
    for key, label in FRONTIERS:
        series = {a: [(number(r.get("l0")), number(r.get(key)), str(r.get("dict_size")))
                      for r in sorted(frontier[a], key=lambda r: r.get("dict_size") or 0)] for a in archs}
        chart = svg.frontier(series, "L0 (active features per token)", label,
                             f"L0 vs {label}, per architecture across dictionary sizes")
        if chart:
            charts.append({"key": key, "label": label, "svg": chart})
    return charts


def _compared(dictionaries: list[Dictionary]) -> dict[str, Any] | None:
    """The architectures side by side at each size they share (summary.compare_architectures)."""
    rows = [d.row() for d in dictionaries]
    compared = compare_architectures(rows)
    if not compared:
        return None
    archs = list(dict.fromkeys(d.architecture for d in dictionaries))
    return {"architectures": archs,
            "rows": [{"size": c["size"], "cells": [frontier_cell(c["rows"].get(a)) for a in archs],
                      "best_loss": c["best_loss"], "best_fvu": c["best_fvu"]} for c in compared]}


def _interp_table(dictionaries: list[Dictionary]) -> dict[str, Any] | None:
    """Mean simulation scores per dictionary, grouped by architecture: features vs neurons (every
    mean_* score interp.json has), the control, and the difference."""
    have = [d for d in dictionaries if d.interp]
    if not have:
        return None
    columns = interp_columns({d.name: d.interp for d in have})
    rows = []
    for d in have:
        m = d.interp or {}
        rows.append({"architecture": d.architecture, "name": d.name, "size": d.size,
                     "scores": [((m.get(g) or {}).get(k)) for _, g, k in columns],
                     "control": (m.get("features") or {}).get("control_mean_pearson"),
                     "difference": (m.get("difference") or {}).get("mean")})
    return {"columns": [h for h, _, _ in columns], "rows": rows}
