"""The feature browser, in a real browser (Debian's chromium through playwright), from file://.

The fixture builder writes a workspace in the pipeline's layout with the interpret stage's
schema, corpus tokens and explanations full of HTML, so escaping is tested where it matters.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from monosemantic.report import svg, tokens
from monosemantic.report.lineage import lineage
from monosemantic.report.site import PAGES, build_site
from monosemantic.report.summary import summary_markdown
from monosemantic.report.units import Nearest
from stages.report import read_dictionaries

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
XSS = ["<script>window.pwned=1</script>", '<img src=x onerror="window.pwned=1">', '"><', "</script><b>bold</b>"]
VOCAB = [" the", " cat", " sat", " on", "\n", "  ", "\t", "def", "(", ")", " base", "64", "QUJD", "==", "&amp;",
         " é", "🙂", " mat", ".", *XSS]

UNITS = {"kind": pl.Utf8, "index": pl.Int64, "density": pl.Float64, "max_activation": pl.Float64,
         "mean_activation": pl.Float64, "interpreted": pl.Boolean, "explanation": pl.Utf8, "explanation_error": pl.Utf8,
         "score_pearson": pl.Float64, "score_spearman": pl.Float64, "control_pearson": pl.Float64,
         "control_spearman": pl.Float64, "control_of": pl.Int64, "best_proxy": pl.Utf8, "best_proxy_f1": pl.Float64,
         "best_proxy_precision": pl.Float64, "best_proxy_recall": pl.Float64, "hist_counts": pl.List(pl.Int64),
         "logit_boost_tokens": pl.List(pl.Utf8), "logit_boost_values": pl.List(pl.Float64),
         "logit_suppress_tokens": pl.List(pl.Utf8), "logit_suppress_values": pl.List(pl.Float64)}
EXAMPLES = {"kind": pl.Utf8, "index": pl.Int64, "split": pl.Utf8, "group": pl.Utf8, "interval": pl.Int64,
            "rank": pl.Int64, "context": pl.Int64, "center": pl.Int64, "tokens": pl.List(pl.Utf8),
            "acts": pl.List(pl.Float64), "simulated": pl.List(pl.Float64)}
PROXIES = {"kind": pl.Utf8, "index": pl.Int64, "proxy": pl.Utf8, "precision": pl.Float64, "recall": pl.Float64,
           "f1": pl.Float64}


# ---------------------------------------------------------------- fixture builder
def _record(stage: str, inputs: dict[str, tuple[str, str]], run: str) -> dict:
    return {"stage": stage, "created_at": "2025-01-01T00:00:00+00:00", "params": {stage: {}},
            "inputs": {name: {"path": p, "md5": md5} for name, (p, md5) in inputs.items()},
            "code": {"git_commit": "0123456789abcdef", "git_dirty": False}, "environment": {}, "mlflow_run_id": run}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _lineage_records(root: Path, sizes: list[int]) -> None:
    """corpus → tokenizer → tokens → model → activations → each SAE, as the stages record them."""
    _write(root / "data/corpus/provenance.json", json.dumps(_record("corpus", {}, "run-corpus")))
    _write(root / "data/tokenizer.provenance.json",
           json.dumps(_record("tokenizer", {"corpus": ("data/corpus", "c0rpus.dir")}, "run-tokenizer")))
    _write(root / "data/tokenizer.json", "{}")
    tokens_rec = _record("tokenize", {"corpus": ("data/corpus", "c0rpus.dir"), "tokenizer": ("data/tokenizer.json", "t0k")},
                         "run-tokenize")
    _write(root / "data/tokens.zarr/zarr.json", json.dumps({"attributes": {"provenance": tokens_rec}}))
    _write(root / "models/transformer/provenance.json",
           json.dumps(_record("train_model", {"tokens": ("data/tokens.zarr", "t0kens.dir")}, "run-model")))
    acts = _record("cache_activations", {"tokens": ("data/tokens.zarr", "t0kens.dir"),
                                         "model": ("models/transformer", "m0del.dir")}, "run-acts")
    _write(root / "data/activations.zarr/zarr.json", json.dumps({"attributes": {"provenance": acts}}))
    for size in sizes:
        _write(root / f"models/sae/{size}/provenance.json",
               json.dumps(_record(f"train_sae@{size}", {"activations": ("data/activations.zarr", "acts.dir")}, f"run-sae-{size}")))


def _units(rng, size: int, n_neurons: int, n_features: int, first: bool) -> pl.DataFrame:
    """features.parquet: every feature and neuron; `n_features` random features, feature 0 and every neuron interpreted."""
    rows = []
    for kind, n, n_interp in (("feature", size, n_features), ("neuron", n_neurons, n_neurons)):
        order = rng.permutation(n)
        chosen = set(order[:n_interp].tolist()) | ({0} if kind == "feature" else set())  # 0: a split family
        for i in range(n):
            interp = i in chosen
            max_act = float(rng.uniform(0.5, 8))
            xss = first and kind == "feature" and i == 0
            failed = interp and not xss and i % 11 == 5
            score = float(rng.uniform(0.2, 0.9) if kind == "feature" else rng.uniform(-0.1, 0.6))
            rows.append({
                "kind": kind, "index": i, "density": float(10 ** rng.uniform(-5, -0.5)), "max_activation": max_act,
                "mean_activation": max_act / 5, "interpreted": interp,
                "explanation": None if not interp or failed else
                ("base64 text " + XSS[0] + XSS[1] if xss else f"{kind} {i}: the word ' cat' after ' the'"),
                "explanation_error": "too rare: 3 activating contexts" if failed else None,
                "score_pearson": score if interp and not failed else None,
                "score_spearman": score * 0.9 if interp and not failed else None,
                "control_pearson": float(rng.uniform(-0.1, 0.15)) if interp and not failed else None,
                "control_spearman": 0.0 if interp and not failed else None,
                "control_of": int((i + 1) % n) if interp and not failed else None,
                "best_proxy": ("base64" if xss else ["base64", "dna", "hex"][i % 3]) if interp else None,
                "best_proxy_f1": 0.91 if xss else float(rng.uniform(0, 0.5)) if interp else None,
                "best_proxy_precision": 0.9 if interp else None, "best_proxy_recall": 0.92 if interp else None,
                "hist_counts": rng.integers(0, 400, 30).tolist() if interp else [],
                "logit_boost_tokens": [" cat", XSS[0], "\n"] if xss else ([" mat", " the"] if interp else []),
                "logit_boost_values": [0.9, 0.5, 0.2] if xss else ([0.4, 0.3] if interp else []),
                "logit_suppress_tokens": [XSS[1]] if xss else [],
                "logit_suppress_values": [-0.7] if xss else [],
            })
    return pl.DataFrame(rows, schema=UNITS)


def _examples(rng, units: pl.DataFrame, shape: dict, first: bool) -> pl.DataFrame:
    """examples.parquet, shaped as interpret samples them: per split the top examples, a few per
    activation interval and random contexts; then the top tokens in other contexts (train only)."""
    n_int, window, center = shape["intervals"], shape["before"] + shape["after"] + 1, shape["before"]
    plan = [(split, group, interval, n) for split in ("train", "heldout") for group, interval, n in (
        ("top", n_int, shape["top"]), *(("interval", b, shape["per_interval"]) for b in range(1, n_int + 1)),
        ("random", None, shape["random"]))] + [("train", "token", None, shape["token"])]
    n_rows = sum(n for *_, n in plan)
    cols: dict[str, list] = {k: [] for k in EXAMPLES}
    interp = units.filter(pl.col("interpreted"))
    for kind, index, max_act in zip(interp["kind"], interp["index"], interp["max_activation"]):
        toks = rng.integers(0, len(VOCAB) - len(XSS), (n_rows, window))
        active = shape["active"][kind]
        acts = np.where(rng.random((n_rows, window)) < active, rng.uniform(0, max_act, (n_rows, window)), 0.0)
        r = 0
        for split, group, interval, n in plan:
            for rank in range(n):
                row_tokens = [VOCAB[t] for t in toks[r]]
                if first and kind == "feature" and index == 0 and r == 0:
                    row_tokens[center - 4: center] = XSS
                if interval:
                    acts[r, center] = max_act * (interval - rng.uniform(0, 1)) / n_int
                sim = np.round(acts[r] / max_act * 10).tolist() if split == "heldout" else None
                for k, v in (("kind", kind), ("index", index), ("split", split), ("group", group), ("interval", interval),
                             ("rank", rank), ("context", int(rng.integers(0, 10**6))), ("center", center),
                             ("tokens", row_tokens), ("acts", acts[r].tolist()), ("simulated", sim)):
                    cols[k].append(v)
                r += 1
    return pl.DataFrame(cols, schema=EXAMPLES)


SMALL = {"before": 8, "after": 3, "intervals": 3, "top": 2, "per_interval": 1, "random": 1, "token": 2,
         "active": {"feature": 0.2, "neuron": 0.2}}  # fraction of window tokens where a unit is active
# interpret's defaults: windows of 20 + 1 + 8 tokens; 10 top, 10 intervals × 2, 5 random per split; 3 × 2 token
DEFAULT = {"before": 20, "after": 8, "intervals": 10, "top": 10, "per_interval": 2, "random": 5, "token": 6,
           "active": {"feature": 0.2, "neuron": 0.2}}


def make_workspace(root: Path, sizes=(16, 32, 64), interpreted=(16, 32), n_neurons=8, n_features=6,
                   shape=SMALL, seed=0) -> Path:
    """A workspace as the pipeline leaves it; sizes not in `interpreted` have metrics only."""
    rng = np.random.default_rng(seed)
    _lineage_records(root, list(sizes))
    frontier = []
    for k, size in enumerate(sizes):
        ev = {"dict_size": size, "l0": 20.0 + 5 * k, "mse": 0.01 / (k + 1), "fvu": 0.3 / (k + 1),
              "loss_recovered": 0.7 + 0.08 * k, "loss_recovered_mean_ablation": 0.6 + 0.08 * k,
              "kl_divergence": 0.1, "dead_features": k, "ultralow_features": 2 * k, "dense_features": 1,
              "dead_fraction": k / size, "ultralow_fraction": 2 * k / size, "n_eval_tokens": 8000,
              "ultralow_threshold": 1 / 8000}
        _write(root / f"metrics/sae/{size}/eval.json", json.dumps(ev))
        _write(root / f"metrics/sae/{size}/train.json", json.dumps({"resampled_neurons": 3, "tokens_seen": 10**6}))
        frontier.append({key: ev[key] for key in ("dict_size", "l0", "loss_recovered")})
        centers = np.linspace(-3.9, -0.1, 20)
        pl.DataFrame({"log10_density": centers, "features": rng.integers(0, size // 4 + 1, 20)}).write_csv(
            _mkdir(root / "plots/density") / f"{size}.csv")
        if size not in interpreted:
            continue
        first = size == interpreted[0]
        out = _mkdir(root / f"reports/features/{size}")
        units = _units(rng, size, n_neurons, n_features, first)
        units.write_parquet(out / "features.parquet")
        _examples(rng, units, shape, first).write_parquet(out / "examples.parquet")
        interp = units.filter(pl.col("interpreted"))
        pl.DataFrame({"kind": [k for k in interp["kind"] for _ in range(2)],
                      "index": [i for i in interp["index"] for _ in range(2)],
                      "proxy": ["base64", "dna"] * interp.height, "precision": [0.9, 0.1] * interp.height,
                      "recall": [0.8, 0.2] * interp.height, "f1": [0.85, 0.13] * interp.height},
                     schema=PROXIES).write_parquet(out / "proxies.parquet")
        _write(out / "provenance.json", json.dumps(_record(
            f"interpret@{size}", {"sae": (f"models/sae/{size}", f"sae{size}.dir"),
                                  "activations": ("data/activations.zarr", "acts.dir")}, f"run-interp-{size}")))
        scores = {kind: interp.filter(pl.col("kind") == kind[:-1])["score_pearson"].drop_nulls()
                  for kind in ("features", "neurons")}
        stats = {kind: {"scored": int(v.len()), "interpreted": int(v.len()), "mean_pearson": float(v.mean()),
                        "median_pearson": float(v.median()), "mean_spearman": float(v.mean()) * 0.9,
                        "control_mean_pearson": 0.01} for kind, v in scores.items()}
        diff = {"mean": stats["features"]["mean_pearson"] - stats["neurons"]["mean_pearson"]}
        diff |= {"ci_low": diff["mean"] - 0.1, "ci_high": diff["mean"] + 0.1, "ci_level": 0.95}
        interp_json = {**stats, "difference": diff, "a_key_added_later": [1, 2],
                       "proxies": {"base64": {"positive_tokens": 9, "feature": 0, "feature_f1": 0.91, "neuron": 1}}}
        _write(root / f"metrics/sae/{size}/interp.json", json.dumps(interp_json))
    pl.DataFrame(frontier).write_csv(root / "plots/frontier.csv")
    schema = {"dict_size": pl.Int32, "feature": pl.Int32, "other_size": pl.Int32, "nearest": pl.Int32, "cosine": pl.Float32}
    nearest = [pl.DataFrame(schema=schema)]
    for big in sizes:
        for small in sizes:
            if small < big:
                idx = rng.integers(0, small, big)
                idx[:3] = 0  # features 0-2 of every larger dictionary are nearest to feature 0: a split
                nearest.append(pl.DataFrame({"dict_size": [big] * big, "feature": range(big), "other_size": [small] * big,
                                             "nearest": idx, "cosine": rng.uniform(0.3, 1.0, big)}, schema=schema))
    pl.concat(nearest).write_parquet(_mkdir(root / "reports/splitting") / "nearest.parquet")
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def build(root: Path, sizes=(16, 32, 64)) -> dict:
    """What the report stage does, minus MLflow: read the layout, build the site."""
    return build_site(root / "reports", read_dictionaries(list(sizes), root),
                      pl.read_csv(root / "plots/frontier.csv").to_dicts(),
                      pl.read_parquet(root / "reports/splitting/nearest.parquet"),
                      {"mlflow_run_id": "run-report", "code": {"git_commit": "0123456789abcdef", "git_dirty": True}})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = make_workspace(tmp_path_factory.mktemp("ws"))
    build(root)
    return root / "reports"


# ---------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser():
    """Chromium driven by playwright, or why there is none: then every browser test fails, never skips."""
    if not CHROMIUM.exists():
        yield f"{CHROMIUM} is missing: run `make test`, which installs Debian's chromium for these tests"
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        yield "the playwright package is missing: run `make test`, which installs the dev extras"
        return
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


class Watched:
    """A page that records console errors, script errors and every request it makes."""

    def __init__(self, browser):
        if isinstance(browser, str):
            pytest.fail(browser, pytrace=False)
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(10_000)
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, path: Path):
        self.page.goto(path.resolve().as_uri())
        return self.ready()

    def ready(self):
        """A unit page has its (gzipped) examples inflated by script: wait for them."""
        if self.page.locator("#examples-data").count():
            self.page.wait_for_selector("#examples[data-ready]", state="attached")
        return self.page

    def assert_clean(self) -> None:
        assert not self.errors, self.errors
        offsite = [u for u in self.requests if not u.startswith(("file://", "data:"))]
        assert not offsite, f"network requests: {offsite}"


def test_index_sorts_filters_and_leads_to_feature_pages(site, browser, tmp_path):
    w = Watched(browser)
    page = w.open(site / "index.html")
    page.screenshot(path=tmp_path / "index.png", full_page=True)
    assert page.locator("#units-table tbody tr").count() == 50  # paged: 2 × (size + neurons) units > 50
    total = int(page.locator("#count").inner_text().split(" of ")[1].split()[0])
    assert total == 16 + 8 + 32 + 8
    page.click("#next")
    assert page.locator("#pageinfo").inner_text() == "page 2 of 2" and page.locator("#units-table tbody tr").count() == 14
    page.click("#prev")

    def column(n: int) -> list[str]:
        return [c.inner_text() for c in page.locator(f"#units-table tbody tr td:nth-child({n})").all()]

    scores = column(5)                                         # by score, best first, missing last: the default
    numbers = [float(v) for v in scores if v != "–"]
    assert numbers == sorted(numbers, reverse=True) and scores[0] != "–" and scores[-1] == "–"
    page.click("th[data-key=score]")
    assert page.locator("th[data-key=score]").get_attribute("aria-sort") == "ascending"
    numbers = [float(v) for v in column(5) if v != "–"]
    assert numbers == sorted(numbers) and column(5)[0] != "–"
    page.click("th[data-key=max_activation]")
    assert [float(v) for v in column(4)] == sorted((float(v) for v in column(4)), reverse=True)

    page.fill("#q", "base64 text")                            # the XSS-laden explanation
    page.wait_for_function("document.querySelectorAll('#units-table tbody tr').length === 1")
    row = page.locator("#units-table tbody tr")
    assert "<script>window.pwned=1</script>" in row.inner_text()
    page.fill("#q", "")
    page.select_option("#kind", "neuron")
    page.wait_for_function("document.getElementById('count').textContent.startsWith('16 of')")
    page.select_option("#kind", "")
    page.check("#interpreted")
    page.wait_for_function("!document.getElementById('count').textContent.startsWith('64 of')")
    assert page.locator("#units-table tbody tr td:nth-child(2) a").count() == page.locator("#units-table tbody tr").count()
    page.screenshot(path=tmp_path / "index-table.png", full_page=False)

    page.uncheck("#interpreted")
    page.fill("#q", "base64 text")
    page.wait_for_function("document.querySelectorAll('#units-table tbody tr').length === 1")
    page.click("#units-table tbody tr a")
    page.wait_for_url("**/pages/16/feature-0.html")
    w.ready()
    assert page.locator("h1").inner_text().startswith("Feature 0")
    shaded = page.locator(".ex i[title]")
    assert shaded.count() > 10
    bg = shaded.first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert bg not in ("rgba(0, 0, 0, 0)", "transparent"), bg
    assert float(shaded.first.get_attribute("title").split()[0]) >= 0
    bars = page.locator("svg.chart .bars rect")
    assert bars.count() == 30 and all(float(b.get_attribute("height")) >= 0 for b in bars.all())
    assert page.locator("svg.chart").first.bounding_box()["height"] > 100   # it renders, at a readable size
    assert page.locator("ul.nearest a").count() >= 1          # feature 0 of 32 is nearest to it, and interpreted
    page.screenshot(path=tmp_path / "feature.png", full_page=True)
    w.assert_clean()


def test_untrusted_text_renders_as_text(site, browser, tmp_path):
    w = Watched(browser)
    for path in (site / PAGES / "16/feature-0.html", site / "index.html"):
        page = w.open(path)
        assert page.evaluate("typeof window.pwned") == "undefined"
        assert page.locator("img").count() == 0 and page.locator("main b").count() == 0
        text = page.locator("main").inner_text()
        assert XSS[0] in text
    page = w.open(site / PAGES / "16/feature-0.html")
    examples = page.locator(".ex").first.inner_text()
    assert all(x in examples for x in XSS), examples
    assert "↵" in page.locator(".examples").inner_text()      # newlines are visible
    page.screenshot(path=tmp_path / "xss.png", full_page=True)
    w.assert_clean()


def test_neuron_pages_match_feature_pages(site, browser, tmp_path):
    w = Watched(browser)
    page = w.open(next((site / PAGES / "32").glob("neuron-*.html")))
    assert page.locator("h1").inner_text().startswith("Neuron")
    assert page.locator("svg.chart .bars rect").count() == 30 and page.locator(".ex i[title]").count() > 10
    assert page.locator(".ex-list").count() >= 4                # top, intervals, random, token groups
    page.screenshot(path=tmp_path / "neuron.png", full_page=True)
    w.assert_clean()


# ---------------------------------------------------------------- without a browser
def test_sizes_without_interpretation_get_metrics_and_say_so(site):
    html = (site / "index.html").read_text()
    assert "95% CI" in html and "(feature 0)" in html       # size 32's interp.json: the best base64 feature
    assert 'id="size-64"' in html and "No interpretation outputs for this dictionary yet" in html
    assert "</script><b>" not in html and "<script>window.pwned" not in html  # escaped in the JSON too
    assert sorted(p.name for p in (site / PAGES).iterdir()) == ["16", "32", "assets", "provenance.json"]
    interpreted = pl.read_parquet(site / "features/16/features.parquet").filter(pl.col("interpreted")).height
    assert len(list((site / PAGES / "16").glob("*.html"))) == interpreted


def test_unit_pages_are_reproducible(site, tmp_path):
    """Only the index says when it was built: unchanged units keep byte-identical pages for DVC."""
    again = make_workspace(tmp_path)
    build(again)
    for page in (site / PAGES / "16").glob("*.html"):
        assert page.read_bytes() == (again / "reports" / PAGES / "16" / page.name).read_bytes(), page.name


def test_site_builds_with_no_interpretation_at_all(tmp_path):
    root = make_workspace(tmp_path, sizes=(16, 32), interpreted=())
    stats = build(root, sizes=(16, 32))
    html = (root / "reports/index.html").read_text()
    assert stats["pages"] == 0 and "No interpretation outputs yet" in html and "site.js" not in html
    assert html.count("No interpretation outputs for this dictionary yet") == 2
    assert "run-sae-32" in html and "run-corpus" in html      # the lineage, from the records


def test_lineage_follows_records_to_the_corpus(tmp_path):
    make_workspace(tmp_path, sizes=(16,), interpreted=(16,))
    chain = lineage(tmp_path, ["reports/features/16", "models/sae/16"])
    assert [r["path"] for r in chain] == ["reports/features/16", "models/sae/16", "data/activations.zarr", "data/tokens.zarr",
                                          "models/transformer", "data/corpus", "data/tokenizer.json"]
    assert chain[1]["md5"] == "sae16.dir" and chain[1]["mlflow_run_id"] == "run-sae-16" and all(r["found"] for r in chain)


def test_tokens_are_escaped_and_whitespace_visible():
    html = str(tokens.example(["<script>", "\n", " a", "&"], [0.0, 2.0, 0.0, 4.0], 4.0, center=0, simulated=[0, 5, 0, 10]))
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp;" in html
    assert '<i style=--a:.5 title="2 (sim 5)">↵</i>' in html
    assert html.count("<i ") == 3 and "</i> a<i" in html       # the inactive " a" stays bare text
    assert str(tokens.token_text("\t\r")) == '<span class="tok">\t␍</span>'


def test_svg_charts_handle_edge_cases():
    assert str(svg.bars([], 0, 1, "x", "y", "t")) == ""
    assert str(svg.bars([0, 0], 0, 0, "x", "y", "t")).count("<rect") == 2     # all-zero, zero-width range
    assert str(svg.frontier([(1.0, math.nan, "a")], "x", "y", "t")) == ""
    chart = str(svg.distributions({"<b>": [0.1, 0.5, 2.0], "empty": []}, -0.25, 1.0, 25, "r", "t"))
    assert "&lt;b&gt;" in chart and chart.count('class="step') == 1


def test_nearest_links_both_ways():
    table = pl.DataFrame({"dict_size": [32, 32, 32], "feature": [0, 1, 2], "other_size": [16, 16, 16],
                          "nearest": [5, 5, 7], "cosine": [0.9, 0.95, 0.5]})
    near = Nearest(table)
    up = near.around(16, 5, {32: {("feature", 1)}})
    assert up[0]["size"] == 32 and [f["index"] for f in up[0]["features"]] == [1, 0]
    assert up[0]["features"][0]["path"] == "32/feature-1.html" and up[0]["features"][1]["path"] is None
    assert near.around(32, 2, {})[0]["features"][0]["index"] == 7


def test_summary_reports_features_vs_neurons():
    interp = {512: {"features": {"scored": 200, "mean_pearson": 0.5, "control_mean_pearson": 0.01},
                    "neurons": {"scored": 512, "mean_pearson": 0.3},
                    "difference": {"mean": 0.2, "ci_low": 0.15, "ci_high": 0.25},
                    "proxies": {"base64": {"positive_tokens": 9, "feature": 7, "feature_f1": 0.9}}}}
    text = summary_markdown([{"dict_size": 512}], interp=interp)
    assert "| 512 | 200 | 0.50 | 512 | 0.30 | 0.01 | +0.20 (+0.15 to +0.25) |" in text
    assert "Features score higher than neurons at every size" in text and "`base64` best F1 0.90 (feature 7 of 512)" in text
    assert "Interpretability" not in summary_markdown([{"dict_size": 512}])
    other = {1024: {"features": {"scored": 190, "mean_pearson": 0.2, "control_mean_pearson": 0.02},
                    "neurons": {"scored": 500, "mean_pearson": 0.3}, "difference": {},
                    "proxies": {"hex": {"positive_tokens": 3, "feature": 5, "feature_f1": 0.4}}}}
    text = summary_markdown([{"dict_size": 1024}], interp=other)
    assert "| 1024 | 190 | 0.20 | 500 | 0.30 | 0.02 | – |" in text and "do not score higher" in text
    assert "`hex` best F1 0.40 (feature 5 of 1024)" in text


def test_default_scale_builds_fast_and_small(tmp_path):
    """4096 features + 512 neurons, 712 interpreted units × 76 examples of 29 tokens: one size of the default run."""
    root = make_workspace(tmp_path, sizes=(4096,), interpreted=(4096,), n_neurons=512, n_features=200, shape=DEFAULT)
    start = time.perf_counter()
    stats = build(root, sizes=(4096,))
    assert stats["pages"] == 200 + 512 + 1  # and feature 0, which the builder always interprets
    assert time.perf_counter() - start < 30, stats   # ~6 s here: the three default sizes build in well under a minute
    assert stats["bytes"] < 15e6, stats                # ~12 MB: the three default sizes weigh a few tens of MB
