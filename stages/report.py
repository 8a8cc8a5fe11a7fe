"""report: reports/summary.md and the feature browser (reports/index.html, reports/pages/).

Builds from whatever the other stages wrote: a size without interpretation outputs still
gets its metrics, and the pages say what is missing.
"""

from pathlib import Path

import polars as pl

from monosemantic.errors import UserError
from monosemantic.provenance import PROVENANCE_FILE, hash_path, read_json, read_record
from monosemantic.report.lineage import lineage
from monosemantic.report.site import PAGES, Dictionary, build_site
from monosemantic.report.summary import summary_markdown
from stages._stage import run_stage

REPORTS = Path("reports")
SUMMARY = REPORTS / "summary.md"
NEAREST = REPORTS / "splitting/nearest.parquet"
FRONTIER = Path("plots/frontier.csv")


def _json(path: Path) -> dict | None:
    return read_json(path) if path.exists() else None


def read_dictionaries(sizes: list[int], root: Path = Path(".")) -> list[Dictionary]:
    """Each size's outputs, from their places in the pipeline's layout under `root`."""
    out = []
    for size in sizes:
        metrics = {**(_json(root / f"metrics/sae/{size}/train.json") or {}),
                   **(_json(root / f"metrics/sae/{size}/eval.json") or {})}
        density = root / f"plots/density/{size}.csv"
        features = root / REPORTS / "features" / str(size)
        # The interpret record leads to the dictionary's own, so its hash is the one interpret used.
        starts = ([f"{REPORTS}/features/{size}"] if (features / PROVENANCE_FILE).exists() else []) + [f"models/sae/{size}"]
        out.append(Dictionary(size=size, metrics=metrics,
                              density=pl.read_csv(density).to_dicts() if density.exists() else [],
                              interp=_json(root / f"metrics/sae/{size}/interp.json"),
                              features=features if (features / "features.parquet").exists() else None,
                              lineage=lineage(root, starts)))
    return out


def _require_current(output: Path, source: str, stage: str) -> None:
    """Refuse to show `output` if it was made from another `source` than today's (a failed re-run
    of `stage` leaves the previous outputs in place)."""
    used = {e.get("path"): e.get("md5") for e in ((read_record(output) or {}).get("inputs") or {}).values()}
    if source in used and Path(source).exists() and used[source] != hash_path(source):
        raise UserError(f"{output} was made from an earlier {source} (md5 {used[source]}, now {hash_path(source)}): "
                        f"re-run `dvc repro {stage}` before the report")


def main() -> None:
    with run_stage("report", None) as s:
        dictionaries = read_dictionaries(sorted(s.params.sae.dict_sizes))
        for d in dictionaries:
            if d.features is not None:
                _require_current(d.features, f"models/sae/{d.size}", f"interpret@{d.size}")
                s.input(f"features_{d.size}", d.features)
        if NEAREST.exists():
            s.input("splitting", NEAREST.parent)
        universality = [read_json(p) for p in sorted(Path("metrics/universality").glob("*.json"))]
        text = summary_markdown([{"dict_size": d.size, **d.metrics} for d in dictionaries],
                                _json(Path("metrics/transformer.json")), _json(Path("metrics/splitting.json")),
                                (_json(REPORTS / "splitting/families.json") or {}).get("families"),
                                universality, {d.size: d.interp for d in dictionaries if d.interp})
        SUMMARY.parent.mkdir(parents=True, exist_ok=True)
        tmp = SUMMARY.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(SUMMARY)
        print(f"report: summary written to {SUMMARY}")
        built = build_site(REPORTS, dictionaries, pl.read_csv(FRONTIER).to_dicts() if FRONTIER.exists() else [],
                           pl.read_parquet(NEAREST) if NEAREST.exists() else None, s.record())
        print(f"report: {REPORTS / 'index.html'} and {built['pages']} pages in {REPORTS / PAGES}/ "
              f"({built['bytes'] / 1e6:.1f} MB, {built['seconds']:.1f} s)")
        for path in (SUMMARY, REPORTS / "index.html", REPORTS / PAGES):
            s.run.log_artifact(path)


if __name__ == "__main__":
    main()
