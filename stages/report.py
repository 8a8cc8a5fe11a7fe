"""report: reports/summary.md and the feature browser (reports/index.html, reports/pages/).

Every dictionary params.yaml lists (sae.architectures × sae.dict_sizes, each named
`<architecture>-<size>`), side by side. Builds from whatever the other stages wrote: a dictionary
without interpretation outputs still gets its metrics, and the pages say what is missing.
"""

from pathlib import Path

import polars as pl

from monosemantic.params import dictionary_name
from monosemantic.provenance import PROVENANCE_FILE, read_json
from monosemantic.report.lineage import lineage
from monosemantic.report.site import PAGES, Dictionary, build_site
from monosemantic.report.summary import summary_markdown
from stages._stage import require_current, run_stage

REPORTS = Path("reports")
SUMMARY = REPORTS / "summary.md"
NEAREST = REPORTS / "splitting/nearest.parquet"
FRONTIER = Path("plots/frontier")  # <architecture>.csv, one row per size


def _json(path: Path) -> dict | None:
    return read_json(path) if path.exists() else None


def read_dictionaries(dictionaries: list[tuple[str, int]], root: Path = Path(".")) -> list[Dictionary]:
    """Each (architecture, size)'s outputs, from their places in the pipeline's layout under `root`."""
    out = []
    for architecture, size in dictionaries:
        name = dictionary_name(architecture, size)
        metrics = {**(_json(root / f"metrics/sae/{name}/train.json") or {}),
                   **(_json(root / f"metrics/sae/{name}/eval.json") or {})}
        density = root / f"plots/density/{name}.csv"
        features = root / REPORTS / "features" / name
        # The interpret record leads to the dictionary's own, so its hash is the one interpret used.
        starts = ([f"{REPORTS}/features/{name}"] if (features / PROVENANCE_FILE).exists() else []) + [f"models/sae/{name}"]
        out.append(Dictionary(architecture=architecture, size=size, metrics=metrics,
                              density=pl.read_csv(density).to_dicts() if density.exists() else [],
                              interp=_json(root / f"metrics/sae/{name}/interp.json"),
                              features=features if (features / "features.parquet").exists() else None,
                              lineage=lineage(root, starts)))
    return out


def read_frontier(architectures: list[str], root: Path = Path(".")) -> dict[str, list[dict]]:
    """plots/frontier/<architecture>.csv of each architecture params.yaml lists (not a dropped one's)."""
    paths = {a: root / FRONTIER / f"{a}.csv" for a in architectures}
    return {a: pl.read_csv(p).to_dicts() for a, p in paths.items() if p.exists()}


def read_families(architectures: list[str], root: Path = Path(".")) -> list[dict]:
    """The largest splitting families of each architecture params.yaml lists (compare's per-architecture files)."""
    paths = [root / REPORTS / "splitting/families" / f"{a}.json" for a in architectures]
    return [f for p in paths if p.exists() for f in read_json(p)["families"]]


def main() -> None:
    with run_stage("report", None, also=("sae.architectures", "sae.dict_sizes")) as s:
        sae = s.params.sae
        dictionaries = read_dictionaries([(a, size) for a in sae.architectures for size in sorted(sae.dict_sizes)])
        for d in dictionaries:
            if d.features is not None:
                require_current(d.features, f"models/sae/{d.name}", f"interpret@{d.name}")
                s.input(f"features_{d.name}", d.features)
        if NEAREST.exists():
            s.input("splitting", NEAREST.parent)
        universality = [read_json(p) for p in sorted(Path("metrics/universality").glob("*.json"))]
        text = summary_markdown([d.row() for d in dictionaries],
                                _json(Path("metrics/transformer.json")), _json(Path("metrics/splitting.json")),
                                read_families(sae.architectures),
                                universality, {d.name: d.interp for d in dictionaries if d.interp})
        SUMMARY.parent.mkdir(parents=True, exist_ok=True)
        tmp = SUMMARY.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(SUMMARY)
        print(f"report: summary written to {SUMMARY}")
        built = build_site(REPORTS, dictionaries, read_frontier(sae.architectures),
                           pl.read_parquet(NEAREST) if NEAREST.exists() else None, s.record())
        print(f"report: {REPORTS / 'index.html'} and {built['pages']} pages in {REPORTS / PAGES}/ "
              f"({built['bytes'] / 1e6:.1f} MB, {built['seconds']:.1f} s)")
        for path in (SUMMARY, REPORTS / "index.html", REPORTS / PAGES):
            s.run.log_artifact(path)


if __name__ == "__main__":
    main()
