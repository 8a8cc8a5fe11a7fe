"""report: reports/summary.md from the metrics every other stage wrote."""

from pathlib import Path

from monosemantic.provenance import read_json
from monosemantic.report.summary import summary_markdown
from stages._stage import run_stage

OUT = Path("reports/summary.md")


def main() -> None:
    with run_stage("report", None) as s:
        dictionaries = []
        for size in sorted(s.params.sae.dict_sizes):
            merged = {}
            for name in ("train", "eval"):
                path = Path(f"metrics/sae/{size}/{name}.json")
                merged |= read_json(path) if path.exists() else {}
            dictionaries.append({"dict_size": size, **merged})
        optional = {p: read_json(p) if Path(p).exists() else None
                    for p in ("metrics/transformer.json", "metrics/splitting.json", "reports/splitting/families.json")}
        universality = [read_json(p) for p in sorted(Path("metrics/universality").glob("*.json"))]
        text = summary_markdown(dictionaries, optional["metrics/transformer.json"], optional["metrics/splitting.json"],
                                (optional["reports/splitting/families.json"] or {}).get("families"), universality)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        tmp = OUT.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(OUT)
        s.run.log_artifact(OUT)
        print(f"report: summary written to {OUT}")


if __name__ == "__main__":
    main()
