"""The HTML feature browser: `index.html` plus a `pages/` folder beside it, written in one pass.

Everything opens from file:// with no network: CSS and JS are bundled files copied into
`pages/assets/`, plots are inline SVG, and the index table's rows are embedded as JSON and
paged client-side so it stays fast with tens of thousands of units. Only interpreted units
get a page (that bounds the site's size); the table lists every unit. Templates live in
`templates/` (jinja2, autoescaped: corpus text is untrusted) for a designer to edit.
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

from monosemantic.provenance import PROVENANCE_FILE, atomic_output, write_json
from monosemantic.report import svg
from monosemantic.report.summary import COLUMNS, best_proxies, cell, scored
from monosemantic.report.units import Interpretation, Nearest, number

PAGES = "pages"
ASSETS = ("site.css", "site.js", "unit.js")
HEADLINE = ("loss_recovered", "l0", "mse", "fvu", "dead_features", "ultralow_features")  # per size, at its top
TABLE_COLUMNS = ["size", "kind", "index", "density", "max_activation", "score", "control", "explanation",
                 "explanation_error", "best_proxy", "best_proxy_f1", "page"]


@dataclass
class Dictionary:
    """What the site shows about one dictionary size; every part but the size may be missing."""

    size: int
    metrics: dict[str, Any] = field(default_factory=dict)    # train.json merged with eval.json
    density: list[dict[str, float]] = field(default_factory=list)  # rows of plots/density/<size>.csv
    interp: dict[str, Any] | None = None                      # metrics/sae/<size>/interp.json
    features: Path | None = None                              # interpret's folder, reports/features/<size>
    lineage: list[dict[str, Any]] = field(default_factory=list)  # from report.lineage.lineage()


def environment() -> jinja2.Environment:
    """Autoescaped everywhere; StrictUndefined so a template typo fails the build, not a page."""
    env = jinja2.Environment(loader=jinja2.PackageLoader(__package__, "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, spec=".3g": "–" if number(v) is None else format(v, spec)
    return env


def build_site(out: Path, dictionaries: list[Dictionary], frontier: list[dict[str, Any]] | None = None,
               nearest: pl.DataFrame | None = None, provenance: dict[str, Any] | None = None) -> dict[str, float]:
    """Write `out/index.html` and `out/pages/`; returns pages written, bytes and seconds.

    `frontier`: rows of plots/frontier.csv; `nearest`: reports/splitting/nearest.parquet;
    `provenance`: the record of the run that builds the site, kept in `pages/`.
    """
    start = time.perf_counter()
    env = environment()
    dictionaries = sorted(dictionaries, key=lambda d: d.size)
    interpreted = {d.size: Interpretation(d.size, d.features) for d in dictionaries
                   if d.features is not None and (d.features / "features.parquet").exists()}
    pages = {size: data.pages for size, data in interpreted.items()}
    links = Nearest(nearest)
    built = {"at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "record": provenance or {}}
    n_pages = 0
    with atomic_output(out / PAGES) as tmp:
        (tmp / "assets").mkdir()
        for name in ASSETS:
            (tmp / "assets" / name).write_bytes(resources.files(__package__).joinpath("assets", name).read_bytes())
        page, examples = env.get_template("unit.html"), env.get_template("examples.html")
        for size, data in interpreted.items():
            (tmp / str(size)).mkdir()
            units = data.pages_context(links, pages)
            for unit in tqdm(units, total=len(data.pages), desc=f"report: pages of {size}", leave=False):
                packed = _pack(examples.render(groups=unit["groups"]))
                html = page.render(unit=unit, examples=packed, root="../", home="../../index.html")
                (tmp / unit["path"]).write_text(html)
                n_pages += 1
        if provenance:
            write_json(tmp / PROVENANCE_FILE, provenance)
    sizes = [_size_context(d, interpreted.get(d.size)) for d in dictionaries]
    rows = [r for data in interpreted.values() for r in data.table_rows()]
    with atomic_output(out / "index.html", is_dir=False) as tmp:
        tmp.write_text(env.get_template("index.html").render(
            sizes=sizes, columns=[(h, key) for h, key, _ in COLUMNS],
            metrics=[[cell(fmt, {"dict_size": d.size, **d.metrics}.get(key)) for _, key, fmt in COLUMNS]
                     for d in dictionaries],
            frontier=_frontier(frontier or []), table={"columns": TABLE_COLUMNS, "rows": rows},
            root=f"{PAGES}/", home="index.html", built=built))
    files = [out / "index.html", *(p for p in (out / PAGES).rglob("*") if p.is_file())]
    return {"pages": n_pages, "bytes": sum(p.stat().st_size for p in files), "seconds": time.perf_counter() - start}


def _pack(html: str) -> str:
    """gzip (mtime 0: the same input gives the same page, so DVC sees unchanged pages) + base64."""
    return base64.b64encode(gzip.compress(html.encode(), compresslevel=6, mtime=0)).decode()


def _size_context(d: Dictionary, data: Interpretation | None) -> dict[str, Any]:
    density = None
    if len(d.density) > 1:
        centers = [r["log10_density"] for r in d.density]
        half = (centers[1] - centers[0]) / 2
        density = svg.bars([r["features"] for r in d.density], centers[0] - half, centers[-1] + half,
                           "log10 feature density", "features", f"feature density, {d.size} features")
    headline = [(header, cell(fmt, d.metrics.get(key))) for header, key, fmt in COLUMNS if key in HEADLINE]
    ctx: dict[str, Any] = {"size": d.size, "headline": headline, "density": density, "lineage": d.lineage,
                           "interp": d.interp or {}, "interpreted": data is not None,
                           "scores": None, "stats": [], "proxies": [], "pages": 0}
    if data is not None:
        series = {"features": data.scores("feature"), "neurons": data.scores("neuron"), "control": data.controls()}
        lo = min([-0.25, *(v for vals in series.values() for v in vals)])
        lo = max(-1.0, math.floor(lo * 4) / 4)
        ctx["scores"] = svg.distributions(series, lo, 1.0, round((1 - lo) / 0.05), "simulation score (Pearson r)",
                                          f"interpretability scores, {d.size} features vs neurons")
        ctx["stats"] = [_stats(name, values, (d.interp or {}).get(name)) for name, values in series.items()]
        ctx["proxies"] = best_proxies(d.interp or {})
        ctx["pages"] = len(data.pages)
    return ctx


def _stats(name: str, values: list[float], given: dict[str, Any] | None) -> dict[str, Any]:
    """interp.json's numbers where it has them (it may filter units), else the table's."""
    given = given or {}
    return {"name": name, "n": scored(given) if scored(given) is not None else len(values),
            "mean": given.get("mean_pearson", statistics.fmean(values) if values else None),
            "median": given.get("median_pearson", statistics.median(values) if values else None),
            "mean_spearman": given.get("mean_spearman")}


def _frontier(rows: list[dict[str, Any]]):
    points = [(number(r.get("l0")), number(r.get("loss_recovered")), str(r.get("dict_size"))) for r in rows]
    return svg.frontier(points, "L0 (active features per token)", "loss recovered",
                        "L0 vs loss recovered across dictionary sizes")
