"""The feature browser, in a real browser (Debian's chromium through playwright), from file://.

The fixture builder writes a workspace in the pipeline's layout (two architectures × three
sizes, dictionaries named `<architecture>-<size>`) with the interpret stage's schema, corpus
tokens and explanations full of HTML, so escaping is tested where it matters.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from monosemantic.params import dictionary_name
from monosemantic.report import svg, tokens
from monosemantic.report.lineage import lineage
from monosemantic.report.site import PAGES, build_site
from monosemantic.report.summary import row, summary_markdown
from monosemantic.report.units import NEURONS, Nearest, page_path
from stages.report import read_dictionaries, read_frontier

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
XSS = ["<script>window.pwned=1</script>", '<img src=x onerror="window.pwned=1">', '"><', "</script><b>bold</b>"]
VOCAB = [" the", " cat", " sat", " on", "\n", "  ", "\t", "def", "(", ")", " base", "64", "QUJD", "==", "&amp;",
         " é", "🙂", " mat", ".", *XSS]

UNITS = {"kind": pl.Utf8, "index": pl.Int64, "density": pl.Float64, "max_activation": pl.Float64,
         "mean_activation": pl.Float64, "interpreted": pl.Boolean, "chosen_for": pl.List(pl.Utf8), "explanation": pl.Utf8, "explanation_error": pl.Utf8,
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


def _lineage_records(root: Path, names: list[str]) -> None:
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
    for name in names:
        _write(root / f"models/sae/{name}/provenance.json",
               json.dumps(_record(f"train_sae@{name}", {"activations": ("data/activations.zarr", "acts.dir")}, f"run-sae-{name}")))


def _units(rng, size: int, n_neurons: int, n_features: int, first: bool, neuron_seed: int) -> pl.DataFrame:
    """features.parquet: every feature and neuron; `n_features` random features, feature 0 and every neuron
    interpreted; the neurons' rows drawn from `neuron_seed` (as interpret, the same beside every dictionary)."""
    rows = []
    for kind, n, n_interp in (("feature", size, n_features), ("neuron", n_neurons, n_neurons)):
        rng = rng if kind == "feature" else np.random.default_rng(neuron_seed)
        order = rng.permutation(n)
        sample = set(order[:n_interp].tolist())
        chosen = sample | ({0} if kind == "feature" else set())  # 0: a split family, and base64's best
        for i in range(n):
            interp = i in chosen
            why = (["sample"] if i in sample else []) + (["splitting", "proxy:base64"] if kind == "feature" and i == 0
                                                         else [])
            max_act = float(rng.uniform(0.5, 8))
            xss = first and kind == "feature" and i == 0
            failed = interp and not xss and i % 11 == 5
            score = float(rng.uniform(0.2, 0.9) if kind == "feature" else rng.uniform(-0.1, 0.6))
            rows.append({
                "kind": kind, "index": i, "density": float(10 ** rng.uniform(-5, -0.5)), "max_activation": max_act,
                "mean_activation": max_act / 5, "interpreted": interp, "chosen_for": why,
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


def _examples(rng, units: pl.DataFrame, shape: dict, first: bool, neuron_seed: int) -> pl.DataFrame:
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
        rng = rng if kind == "feature" else np.random.default_rng([neuron_seed, index])
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


ARCHS = ("standard", "topk")
SIZES = (16, 32, 64)
INTERPRETED = ("standard-16", "standard-32", "topk-32")
# Per architecture, eval.json at the k-th size: topk recovers more loss at a lower L0 at every size.
EVAL = {"standard": lambda k: {"l0": 20.0 + 5 * k, "loss_recovered": 0.7 + 0.08 * k, "fvu": 0.3 / (k + 1)},
        "topk": lambda k: {"l0": 8.0, "loss_recovered": 0.75 + 0.07 * k, "fvu": 0.25 / (k + 1)}}
FRONTIER_KEYS = ("l0", "mse", "fvu", "loss_recovered", "loss_recovered_mean_ablation", "kl_divergence",
                 "dead_fraction", "ultralow_fraction", "dense_fraction")


def make_workspace(root: Path, archs=ARCHS, sizes=SIZES, interpreted=INTERPRETED, n_neurons=8, n_features=6,
                   shape=SMALL, seed=0, other_neurons=()) -> Path:
    """A workspace as the pipeline leaves it; dictionaries not in `interpreted` have metrics only, and those in
    `other_neurons` neurons unlike the rest's (interpret gives every dictionary the same ones)."""
    rng = np.random.default_rng(seed)
    _lineage_records(root, [dictionary_name(a, s) for a in archs for s in sizes])
    for a, arch in enumerate(archs):
        frontier = []
        for k, size in enumerate(sizes):
            name = dictionary_name(arch, size)
            ev = {"dict_size": size, "mse": 0.01 / (k + 1), "loss_recovered_mean_ablation": 0.6 + 0.08 * k,
                  "kl_divergence": 0.1, "dead_features": k + a, "ultralow_features": 2 * k, "dense_features": 1 + a,
                  "dead_fraction": (k + a) / size, "ultralow_fraction": 2 * k / size, "dense_fraction": (1 + a) / size,
                  "n_eval_tokens": 8000, "ultralow_threshold": 1 / 8000, "dense_threshold": 0.1, **EVAL.get(arch, EVAL["standard"])(k)}
            _write(root / f"metrics/sae/{name}/eval.json", json.dumps(ev))
            _write(root / f"metrics/sae/{name}/train.json",
                   json.dumps({"dict_size": size, "penalty": 0.01, "resampled_neurons": 3 if arch == "standard" else 0,
                               "tokens_seen": 10**6}))
            frontier.append({"dict_size": size, **{key: ev[key] for key in FRONTIER_KEYS}})
            centers = np.linspace(-3.9, -0.1, 20)
            pl.DataFrame({"log10_density": centers, "features": rng.integers(0, size // 4 + 1, 20)}).write_csv(
                _mkdir(root / "plots/density") / f"{name}.csv")
            if name in interpreted:
                _interpretation(root, rng, name, size, n_neurons, n_features, shape, first=name == interpreted[0],
                                neuron_seed=seed + 1000 + (name in other_neurons))
        pl.DataFrame(frontier).write_csv(_mkdir(root / "plots/frontier") / f"{arch}.csv")
    schema = {"architecture": pl.Utf8, "dict_size": pl.Int32, "feature": pl.Int32, "other_size": pl.Int32,
              "nearest": pl.Int32, "cosine": pl.Float32}
    nearest = [pl.DataFrame(schema=schema)]
    for arch in archs:  # within an architecture, across its sizes; each architecture's nearest differ
        for big in sizes:
            for small in sizes:
                if small < big:
                    idx = rng.integers(0, small, big)
                    idx[:3] = 0  # features 0-2 of every larger dictionary are nearest to feature 0: a split
                    nearest.append(pl.DataFrame({"architecture": [arch] * big, "dict_size": [big] * big,
                                                 "feature": range(big), "other_size": [small] * big, "nearest": idx,
                                                 "cosine": rng.uniform(0.3, 1.0, big)}, schema=schema))
    pl.concat(nearest).write_parquet(_mkdir(root / "reports/splitting") / "nearest.parquet")
    return root


def _interpretation(root: Path, rng, name: str, size: int, n_neurons: int, n_features: int, shape: dict,
                    first: bool, neuron_seed: int) -> None:
    """interpret@<name>'s outputs: reports/features/<name>/ and metrics/sae/<name>/interp.json."""
    out = _mkdir(root / f"reports/features/{name}")
    units = _units(rng, size, n_neurons, n_features, first, neuron_seed)
    units.write_parquet(out / "features.parquet")
    _examples(rng, units, shape, first, neuron_seed).write_parquet(out / "examples.parquet")
    interp = units.filter(pl.col("interpreted"))
    pl.DataFrame({"kind": [k for k in interp["kind"] for _ in range(2)],
                  "index": [i for i in interp["index"] for _ in range(2)],
                  "proxy": ["base64", "dna"] * interp.height, "precision": [0.9, 0.1] * interp.height,
                  "recall": [0.8, 0.2] * interp.height, "f1": [0.85, 0.13] * interp.height},
                 schema=PROXIES).write_parquet(out / "proxies.parquet")
    _write(out / "provenance.json", json.dumps(_record(
        f"interpret@{name}", {"sae": (f"models/sae/{name}", f"sae-{name}.dir"),
                              "activations": ("data/activations.zarr", "acts.dir")}, f"run-interp-{name}")))
    sample = interp.filter(pl.col("chosen_for").list.contains("sample"))
    scores = {kind: sample.filter(pl.col("kind") == kind[:-1])["score_pearson"].drop_nulls()
              for kind in ("features", "neurons")}
    stats = {kind: {"scored": int(v.len()), "interpreted": int(v.len()), "mean_pearson": float(v.mean()),
                    "median_pearson": float(v.median()), "mean_spearman": float(v.mean()) * 0.9,
                    "control_mean_pearson": 0.01} for kind, v in scores.items()}
    diff = {"mean": stats["features"]["mean_pearson"] - stats["neurons"]["mean_pearson"]}
    diff |= {"ci_low": diff["mean"] - 0.1, "ci_high": diff["mean"] + 0.1, "ci_level": 0.95}
    interp_json = {"dict_size": size, **stats, "difference": diff, "a_key_added_later": [1, 2],
                   "proxies": {"base64": {"positive_tokens": 9, "feature": 0, "feature_f1": 0.91, "neuron": 1}}}
    _write(root / f"metrics/sae/{name}/interp.json", json.dumps(interp_json))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def build(root: Path, archs=ARCHS, sizes=SIZES) -> dict:
    """What the report stage does, minus MLflow: read the layout, build the site."""
    return build_site(root / "reports", read_dictionaries([(a, s) for a in archs for s in sizes], root),
                      read_frontier(list(archs), root), pl.read_parquet(root / "reports/splitting/nearest.parquet"),
                      {"mlflow_run_id": "run-report", "code": {"git_commit": "0123456789abcdef", "git_dirty": True}})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = make_workspace(tmp_path_factory.mktemp("ws"))
    build(root)
    return root / "reports"


# ---------------------------------------------------------------- links and named units
LINK = re.compile(r'(?:href|src)="([^"]*)"')
NAMED = re.compile(r"\b(feature|neuron) (\d+) of ([A-Za-z0-9_.]+-\d+)\b")


def broken_links(reports: Path) -> list[str]:
    """Every link of the site (href and src of each HTML file, and the index table's page links, which
    its script turns into hrefs) whose file, or anchor in that file, does not exist."""
    broken = []
    files = [reports / "index.html", *sorted((reports / PAGES).rglob("*.html"))]
    for f in files:
        html = f.read_text()
        targets = [t for t in LINK.findall(html) if not t.startswith("data:")]
        if f.name == "index.html" and (table := re.search(r'id="unit-data">(.*?)</script>', html, re.S)):
            data = json.loads(table.group(1))
            page = data["columns"].index("page")
            targets += [f"{PAGES}/{r[page]}" for r in data["rows"] if r[page]]
        for t in targets:
            path, _, anchor = t.partition("#")
            target = (f.parent / path).resolve() if path else f
            if not target.is_file() or (anchor and f'id="{anchor}"' not in target.read_text()):
                broken.append(f"{f.relative_to(reports)}: {t}")
    return broken


def named_units(summary: str) -> set[tuple[str, str, int]]:
    """(dictionary, kind, index) of every unit summary.md names ("feature 502 of standard-512")."""
    return {(name, kind, int(i)) for kind, i, name in NAMED.findall(summary)}


def pageless(reports: Path, units: set[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    return sorted(u for u in units if not (reports / PAGES / page_path(*u)).is_file())


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
    assert page.locator("#units-table tbody tr").count() == 50  # paged: 3 × (size + neurons) units > 50
    total = int(page.locator("#count").inner_text().split(" of ")[1].split()[0])
    assert total == 16 + 8 + 32 + 8 + 32 + 8                   # standard-16, standard-32, topk-32
    page.click("#next")
    assert page.locator("#pageinfo").inner_text() == "page 2 of 3" and page.locator("#units-table tbody tr").count() == 50
    page.click("#prev")

    def column(n: int) -> list[str]:
        return [c.inner_text() for c in page.locator(f"#units-table tbody tr td:nth-child({n})").all()]

    scores = column(5)                                         # by score, best first, missing last: the default
    numbers = [float(v) for v in scores if v != "–"]
    assert numbers == sorted(numbers, reverse=True) and scores[0] != "–"
    page.click("th[data-key=score]")
    assert page.locator("th[data-key=score]").get_attribute("aria-sort") == "ascending"
    numbers = [float(v) for v in column(5) if v != "–"]
    assert numbers == sorted(numbers) and column(5)[0] != "–"
    page.click("th[data-key=max_activation]")
    assert [float(v) for v in column(4)] == sorted((float(v) for v in column(4)), reverse=True)
    page.click("th[data-key=order]")                           # dictionaries in the site's order, not by name
    assert column(1)[0] == "standard-16"

    page.select_option("#dictionary", "topk-32")
    page.wait_for_function("document.getElementById('count').textContent.startsWith('40 of')")
    assert set(column(1)) == {"topk-32"}
    page.select_option("#dictionary", "")
    page.fill("#q", "base64 text")                            # the XSS-laden explanation
    page.wait_for_function("document.querySelectorAll('#units-table tbody tr').length === 1")
    row = page.locator("#units-table tbody tr")
    assert "<script>window.pwned=1</script>" in row.inner_text()
    page.fill("#q", "")
    page.select_option("#kind", "neuron")
    page.wait_for_function("document.getElementById('count').textContent.startsWith('24 of')")
    page.select_option("#kind", "")
    page.check("#interpreted")
    page.wait_for_function("!document.getElementById('count').textContent.startsWith('104 of')")
    assert page.locator("#units-table tbody tr td:nth-child(2) a").count() == page.locator("#units-table tbody tr").count()
    page.screenshot(path=tmp_path / "index-table.png", full_page=False)

    page.uncheck("#interpreted")
    page.fill("#q", "base64 text")
    page.wait_for_function("document.querySelectorAll('#units-table tbody tr').length === 1")
    page.click("#units-table tbody tr a")
    page.wait_for_url("**/pages/standard-16/feature-0.html")
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
    links = [a.get_attribute("href") for a in page.locator("ul.nearest a").all()]
    assert links and all(h.startswith("../standard-32/") for h in links), links  # topk-32 has a feature 0 too
    page.click("ul.nearest a >> nth=0")
    page.wait_for_url("**/pages/standard-32/feature-*.html")
    page.screenshot(path=tmp_path / "feature.png", full_page=True)
    w.assert_clean()


def test_frontier_shows_each_architecture_side_by_side(site, browser, tmp_path):
    w = Watched(browser)
    page = w.open(site / "index.html")
    for chart in ("#frontier-loss_recovered", "#frontier-fvu"):
        series = page.locator(f"{chart} svg g.series")
        assert [g.get_attribute("data-series") for g in series.all()] == ["standard", "topk"]
        points = [series.nth(i).locator(".point") for i in range(2)]
        assert [p.count() for p in points] == [3, 3]           # one per size
        colours = [p.first.evaluate("e => getComputedStyle(e).fill") for p in points]
        shapes = [p.first.evaluate("e => e.tagName") for p in points]
        assert colours[0] != colours[1] and shapes[0] != shapes[1], (colours, shapes)
        assert [t.text_content() for t in page.locator(f"{chart} svg .legend text").all()] == ["standard", "topk"]
        assert page.locator(f"{chart} svg").bounding_box()["height"] > 100
    header = [th.inner_text() for th in page.locator("table.metrics >> nth=0 >> thead th").all()]
    assert header[:2] == ["architecture", "size"] and "dead" in header and "dense" in header
    cells = [(r.locator("td").nth(0).inner_text(), r.locator("td").nth(1).inner_text())
             for r in page.locator("table.metrics >> nth=0 >> tbody tr").all()]
    assert cells == [(a, str(s)) for a in ARCHS for s in SIZES]
    page.click("table.metrics >> nth=0 >> tbody tr >> nth=3 >> a")  # topk-16's section
    assert page.evaluate("location.hash") == "#dict-topk-16"
    compared = page.locator("table.compared tbody tr")
    assert compared.count() == 3 and all(r.locator("td").nth(3).inner_text() == "topk" for r in compared.all())
    interp = [[td.inner_text() for td in r.locator("td").all()[:2]] for r in page.locator("table.interp tbody tr").all()]
    assert interp == [["standard", "16"], ["standard", "32"], ["topk", "32"]]
    page.locator("#dictionaries").screenshot(path=tmp_path / "frontier.png")
    w.assert_clean()


def test_untrusted_text_renders_as_text(site, browser, tmp_path):
    w = Watched(browser)
    for path in (site / PAGES / "standard-16/feature-0.html", site / "index.html"):
        page = w.open(path)
        assert page.evaluate("typeof window.pwned") == "undefined"
        assert page.locator("img").count() == 0 and page.locator("main b").count() == 0
        text = page.locator("main").inner_text()
        assert XSS[0] in text
    page = w.open(site / PAGES / "standard-16/feature-0.html")
    examples = page.locator(".ex").first.inner_text()
    assert all(x in examples for x in XSS), examples
    assert "↵" in page.locator(".examples").inner_text()      # newlines are visible
    page.screenshot(path=tmp_path / "xss.png", full_page=True)
    w.assert_clean()


def test_neuron_pages_match_feature_pages(site, browser, tmp_path):
    w = Watched(browser)
    page = w.open(next((site / PAGES / NEURONS).glob("neuron-*.html")))
    h1 = page.locator("h1").inner_text()
    assert h1.startswith("Neuron") and "interpreted beside standard-16, standard-32, topk-32" in h1
    assert page.locator(".crumbs a").count() == 4               # all units, and each dictionary it was beside
    assert page.locator("svg.chart .bars rect").count() == 30 and page.locator(".ex i[title]").count() > 10
    assert page.locator(".ex-list").count() >= 4                # top, intervals, random, token groups
    page.screenshot(path=tmp_path / "neuron.png", full_page=True)
    w.assert_clean()


# ---------------------------------------------------------------- without a browser
def test_dictionaries_without_interpretation_get_metrics_and_say_so(site):
    html = (site / "index.html").read_text()
    assert "95% CI" in html and '(<a href="pages/standard-32/feature-0.html">feature 0</a>)' in html  # best base64 feature
    assert 'id="dict-standard-64"' in html and 'id="dict-topk-16"' in html and "more than 0.1 of tokens" in html
    assert "No interpretation outputs for this dictionary yet" in html and "interpret@topk-64" in html
    assert "</script><b>" not in html and "<script>window.pwned" not in html  # escaped in the JSON too
    assert sorted(p.name for p in (site / PAGES).iterdir()) == sorted(["assets", "provenance.json", NEURONS,
                                                                        *INTERPRETED])
    for name in INTERPRETED:  # its features' pages; the neurons', shared, once
        units = pl.read_parquet(site / f"features/{name}/features.parquet").filter(pl.col("interpreted"))
        assert len(list((site / PAGES / name).glob("*.html"))) == units.filter(pl.col("kind") == "feature").height
        assert len(list((site / PAGES / NEURONS).glob("*.html"))) == units.filter(pl.col("kind") == "neuron").height


def test_neurons_that_differ_only_in_rounding_share_their_pages(tmp_path):
    """A neuron's mean over a bfloat16 or float32 store may round in another order beside another dictionary."""
    root = make_workspace(tmp_path)
    path = root / "reports/features/topk-32/features.parquet"
    units = pl.read_parquet(path)
    nudged = pl.when(pl.col("kind") == "neuron").then(pl.col("mean_activation") * (1 + 1e-13))
    units.with_columns(nudged.otherwise(pl.col("mean_activation")).alias("mean_activation")).write_parquet(path)
    assert not pl.read_parquet(path).equals(units)
    build(root)
    pages = root / "reports" / PAGES
    assert list((pages / NEURONS).glob("*.html")) and not list((pages / "topk-32").glob("neuron-*"))


@pytest.mark.parametrize("odd", ["standard-32", "standard-16"])
def test_dictionaries_share_the_neuron_pages_only_where_their_neurons_are_the_same(tmp_path, odd):
    """Neurons interpreted otherwise beside one dictionary (LLM replies not all from one cache), the first or
    not, keep their own pages there; the other two share theirs; the index links each dictionary's neurons
    to the pages that show them."""
    root = make_workspace(tmp_path, other_neurons=(odd,))
    stats = build(root)
    pages, rest = root / "reports" / PAGES, [n for n in INTERPRETED if n != odd]
    own = sorted(p.name for p in (pages / odd).glob("neuron-*.html"))
    assert own and own == sorted(p.name for p in (pages / NEURONS).glob("*.html"))
    assert not any(list((pages / name).glob("neuron-*")) for name in rest)
    html = (pages / NEURONS / own[0]).read_text()
    assert f"interpreted beside {', '.join(rest)}</small>" in html and odd not in html
    assert f"interpreted beside {odd}</small>" in (pages / odd / own[0]).read_text()
    assert not broken_links(root / "reports")
    index = (root / "reports/index.html").read_text()
    assert f'"{odd}/{own[0]}"' in index and f'"{NEURONS}/{own[0]}"' in index
    assert stats["pages"] == sum(1 for p in pages.rglob("*.html"))


def test_the_score_tables_control_is_the_features_as_in_the_summary(site):
    """summary.md's "control r" is the features' control; the site's table must not mix in the neurons'."""
    index = (site / "index.html").read_text()
    rows = re.findall(r"<tr><th>(features|neurons|control)</th><td>(\d+)</td><td>(?:<span[^>]*>)?([^<]*)<", index)
    assert rows and len(rows) % 3 == 0
    for (_, n_features, _), (_, n_neurons, _), (_, n_control, control) in zip(*[iter(rows)] * 3):
        assert n_control == n_features != n_neurons and control.strip() == "0.01"


def test_every_link_of_the_site_resolves(site, tmp_path):
    assert not broken_links(site)
    shutil.copytree(site, tmp_path / "reports")                # the check finds a page that is missing
    (tmp_path / "reports" / PAGES / "standard-32/feature-0.html").unlink()
    assert "index.html: pages/standard-32/feature-0.html" in broken_links(tmp_path / "reports")


def test_every_unit_the_summary_names_has_a_page(site):
    root = site.parent
    dictionaries = read_dictionaries([(a, s) for a in ARCHS for s in SIZES], root)
    families = [{"architecture": "standard", "dict_size": 16, "feature": 0,
                 "children": {"32": {"features": [0, 1, 2], "mean_cosine": 0.8}}}]
    text = summary_markdown([d.row() for d in dictionaries], splitting={}, families=families,
                            interp={d.name: d.interp for d in dictionaries if d.interp})
    named = named_units(text)
    assert {("standard-16", "feature", 0), ("standard-32", "feature", 0), ("topk-32", "feature", 0)} <= named
    assert not pageless(site, named)
    assert pageless(site, {("standard-64", "feature", 0)})      # standard-64 was not interpreted


def test_unit_pages_say_why_the_unit_was_chosen(site):
    html = (site / PAGES / "standard-16/feature-0.html").read_text()
    assert "<dt>chosen for</dt><dd>" in html and "a splitting family, best for proxy base64" in html


def test_feature_pages_link_only_within_their_architecture(site):
    """nearest.parquet has the same (size, feature) pairs in both architectures: links must not mix them."""
    def nearest(name: str, feature: int) -> str:
        html = (site / PAGES / name / f"feature-{feature}.html").read_text()
        return html[html.index("<h2>Nearest features"):].split("</section>")[0]

    standard = nearest("standard-16", 0)
    assert "topk" not in standard and re.findall(r'href="\.\./([^/]+)/', standard) and \
        set(re.findall(r'href="\.\./([^/]+)/', standard)) == {"standard-32"}
    topk = nearest("topk-32", 0)
    assert "standard" not in topk and "topk-16" in topk and "topk-64" in topk   # neither has pages: no links
    assert "href" not in topk


def test_unit_pages_are_reproducible(site, tmp_path):
    """Only the index says when it was built: unchanged units keep byte-identical pages for DVC."""
    again = make_workspace(tmp_path)
    build(again)
    for page in (site / PAGES / "standard-16").glob("*.html"):
        assert page.read_bytes() == (again / "reports" / PAGES / "standard-16" / page.name).read_bytes(), page.name


def test_site_builds_with_no_interpretation_at_all(tmp_path):
    root = make_workspace(tmp_path, sizes=(16, 32), interpreted=())
    stats = build(root, sizes=(16, 32))
    html = (root / "reports/index.html").read_text()
    assert stats["pages"] == 0 and "No interpretation outputs yet" in html and "site.js" not in html
    assert html.count("No interpretation outputs for this dictionary yet") == 4
    assert 'id="interpretability"' not in html
    assert "run-sae-topk-32" in html and "run-corpus" in html      # the lineage, from the records


def test_lineage_follows_records_to_the_corpus(tmp_path):
    make_workspace(tmp_path, archs=("topk",), sizes=(16,), interpreted=("topk-16",))
    chain = lineage(tmp_path, ["reports/features/topk-16", "models/sae/topk-16"])
    assert [r["path"] for r in chain] == ["reports/features/topk-16", "models/sae/topk-16", "data/activations.zarr",
                                          "data/tokens.zarr", "models/transformer", "data/corpus", "data/tokenizer.json"]
    assert chain[1]["md5"] == "sae-topk-16.dir" and chain[1]["mlflow_run_id"] == "run-sae-topk-16"
    assert all(r["found"] for r in chain)


def test_tokens_are_escaped_and_whitespace_visible():
    html = str(tokens.example(["<script>", "\n", " a", "&"], [0.0, 2.0, 0.0, 4.0], 4.0, center=0, simulated=[0, 5, 0, 10]))
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp;" in html
    assert '<i style=--a:.5 title="2 (sim 5)">↵</i>' in html
    assert html.count("<i ") == 3 and "</i> a<i" in html       # the inactive " a" stays bare text
    assert str(tokens.token_text("\t\r")) == '<span class="tok">\t␍</span>'


def test_svg_charts_handle_edge_cases():
    assert str(svg.bars([], 0, 1, "x", "y", "t")) == ""
    assert str(svg.bars([0, 0], 0, 0, "x", "y", "t")).count("<rect") == 2     # all-zero, zero-width range
    assert str(svg.frontier({"a": [(1.0, math.nan, "16")]}, "x", "y", "t")) == ""
    chart = str(svg.distributions({"<b>": [0.1, 0.5, 2.0], "empty": []}, -0.25, 1.0, 25, "r", "t"))
    assert "&lt;b&gt;" in chart and chart.count('class="step') == 1
    # one series per architecture, each its own class and marker; a series with no finite point is left out
    chart = str(svg.frontier({"standard": [(20, 0.7, "16"), (25, 0.8, "32")], "<topk>": [(8, 0.75, "16")],
                              "jumprelu": [(math.inf, 0.9, "16")]}, "L0", "loss recovered", "t"))
    assert re.findall(r'data-series="([^"]+)"', chart) == ["standard", "&lt;topk&gt;"]
    assert chart.count('class="point s0"') == 2 + 1 and chart.count('class="point s1"') == 1 + 1  # + the legend's
    assert chart.count("<circle") == 2 + 1 and "jumprelu" not in chart


def test_nearest_links_stay_within_an_architecture():
    table = pl.DataFrame({"architecture": ["standard"] * 3 + ["topk"] * 2, "dict_size": [32, 32, 32, 32, 32],
                          "feature": [0, 1, 2, 3, 4], "other_size": [16] * 5, "nearest": [5, 5, 7, 5, 9],
                          "cosine": [0.9, 0.95, 0.5, 0.99, 0.4]})
    near = Nearest(table)
    pages = {"standard-32": {("feature", 1)}, "topk-32": {("feature", 3)}}
    up = near.around("standard", 16, 5, pages)
    assert len(up) == 1 and up[0]["name"] == "standard-32" and [f["index"] for f in up[0]["features"]] == [1, 0]
    assert up[0]["features"][0]["path"] == "standard-32/feature-1.html" and up[0]["features"][1]["path"] is None
    assert [f["index"] for f in near.around("topk", 16, 5, pages)[0]["features"]] == [3]
    assert near.around("topk", 16, 5, pages)[0]["features"][0]["path"] == "topk-32/feature-3.html"
    assert near.around("standard", 32, 2, {})[0]["features"][0]["index"] == 7
    assert near.around("topk", 32, 4, {})[0]["name"] == "topk-16" and near.around("topk", 32, 2, {}) == []


def test_summary_reports_features_vs_neurons():
    interp = {"standard-512": {"features": {"scored": 200, "mean_pearson": 0.5, "mean_spearman": 0.45,
                                            "control_mean_pearson": 0.01},
                               "neurons": {"scored": 512, "mean_pearson": 0.3},
                               "difference": {"mean": 0.2, "ci_low": 0.15, "ci_high": 0.25},
                               "proxies": {"base64": {"positive_tokens": 9, "feature": 7, "feature_f1": 0.9}}}}
    text = summary_markdown([row("standard", 512, {}, interp["standard-512"])], interp=interp)
    assert "| standard-512 | 200 | 0.50 | 512 | 0.30 | 0.01 | +0.20 (+0.15 to +0.25) | 0.45 |" in text
    assert "features mean ρ |" in text                          # any other mean_* score gets a column
    assert "| standard | 512 |" in text and text.splitlines()[6].endswith("| 0.50 |")  # features r, in the table
    assert "Features score higher than neurons in every dictionary" in text
    assert "`base64` best F1 0.90 (feature 7 of standard-512)" in text
    assert "Interpretability" not in summary_markdown([row("standard", 512, {})])
    other = {"topk-1024": {"features": {"scored": 190, "mean_pearson": 0.2, "control_mean_pearson": 0.02},
                           "neurons": {"scored": 500, "mean_pearson": 0.3}, "difference": {},
                           "proxies": {"hex": {"positive_tokens": 3, "feature": 5, "feature_f1": 0.4}}}}
    text = summary_markdown([row("topk", 1024, {})], interp=other)
    assert "| topk-1024 | 190 | 0.20 | 500 | 0.30 | 0.02 | – |" in text and "do not score higher" in text
    assert "`hex` best F1 0.40 (feature 5 of topk-1024)" in text


def test_summary_compares_architectures_from_the_data():
    def rows(topk_wins_small: bool) -> list[dict]:
        lr = {("standard", 512): 0.80, ("standard", 4096): 0.90, ("topk", 512): 0.85 if topk_wins_small else 0.75,
              ("topk", 4096): 0.88}
        return [row(a, s, {"l0": 30.0 if a == "topk" else 40.0 + s / 1024, "loss_recovered": lr[(a, s)],
                           "fvu": 1 - lr[(a, s)], "dead_features": 1, "dense_features": 2})
                for a in ("topk", "standard") for s in (4096, 512)]      # any order in: architecture order kept

    text = summary_markdown(rows(True))
    table = [line for line in text.splitlines() if line.startswith(("| topk |", "| standard |"))]
    assert [line.split(" | ")[:2] for line in table] == [["| topk", "512"], ["| topk", "4096"],
                                                          ["| standard", "512"], ["| standard", "4096"]]
    assert "## Architectures compared" in text and "| size | topk | standard | most loss recovered | lowest FVU |" in text
    assert "| 512 | 85.0% at L0 30.0 (FVU 0.150) | 80.0% at L0 40.5 (FVU 0.200) | topk | topk |" in text
    assert "| 4096 | 88.0% at L0 30.0 (FVU 0.120) | 90.0% at L0 44.0 (FVU 0.100) | standard | standard |" in text
    assert "Most loss recovered: topk at 1 of 2 sizes; standard at 1 of 2 sizes." in text
    assert "At 4096, standard recovers the most loss but at a higher L0 (44.0 vs 30.0)" in text
    assert "topk: loss recovered rises with dictionary size" in text
    text = summary_markdown(rows(False))
    assert "Most loss recovered: standard at 2 of 2 sizes." in text and "At 512, standard recovers" in text
    assert "Architectures compared" not in summary_markdown([r for r in rows(True) if r["architecture"] == "topk"])

    splitting = {"standard": {"4096_to_512": {"median_cosine": 0.8, "mean_cosine": 0.7, "fraction_above_0.9": 0.25},
                              "families": {"split_into_4096": 3}},
                 "topk": {"4096_to_512": {"median_cosine": 0.6, "mean_cosine": 0.5, "fraction_above_0.9": 0.1}}}
    families = [{"architecture": a, "dict_size": 512, "feature": f, "children": {"4096": {"features": [1, 2, 3][:n],
                                                                                         "mean_cosine": 0.9}}}
                for a, f, n in (("standard", 4, 3), ("topk", 9, 2), ("topk", 1, 1))]
    text = summary_markdown(rows(True), splitting=splitting, families=families)
    assert "| standard | 4096 → 512 | 0.800 | 0.700 | 25.0% |" in text and "| topk | 4096 → 512 | 0.600 |" in text
    assert "- standard: feature 4 of standard-512 → 3 in 4096" in text and "- topk: feature 9 of topk-512 → 2 in 4096" in text
    assert "feature 1 of topk-512" not in text                   # one child: not a split


def test_summary_of_the_workspace(tmp_path):
    """What the stage writes for the fixture: every dictionary by architecture, and topk ahead at every size."""
    root = make_workspace(tmp_path, sizes=(16, 32), interpreted=("standard-16",))
    dictionaries = read_dictionaries([(a, s) for a in ARCHS for s in (16, 32)], tmp_path)
    text = summary_markdown([d.row() for d in dictionaries], interp={d.name: d.interp for d in dictionaries if d.interp})
    assert "| standard | 16 | 20.0 |" in text and "| topk | 32 | 8.0 |" in text
    assert "Most loss recovered: topk at 2 of 2 sizes." in text and "Lowest FVU: topk at 2 of 2 sizes." in text
    assert "| standard-16 |" in text                            # interpretability, per dictionary
    (root / "plots/frontier/jumprelu.csv").write_text("dict_size,l0\n16,1\n")   # an architecture dropped from params
    assert list(read_frontier(list(ARCHS), root)) == list(ARCHS)


def test_default_scale_builds_small(tmp_path):
    """4096 features + 512 neurons, 712 interpreted units × 76 examples of 29 tokens: one dictionary of the default run."""
    root = make_workspace(tmp_path, archs=("standard",), sizes=(4096,), interpreted=("standard-4096",), n_neurons=512,
                          n_features=200, shape=DEFAULT)
    stats = build(root, archs=("standard",), sizes=(4096,))  # its time is the report stage's, in the run's log
    assert stats["pages"] == 200 + 512 + 1  # and feature 0, which the builder always interprets
    assert stats["bytes"] < 15e6, stats                # ~12 MB: the default dictionaries weigh a few tens of MB
