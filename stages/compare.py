"""compare: every dictionary size side by side: the L0 / loss-recovered frontier and feature splitting."""

import shutil
from pathlib import Path

from monosemantic.errors import UserError
from monosemantic.evaluation import splitting
from monosemantic.provenance import atomic_output, read_json, write_json, write_record
from monosemantic.sae.export import load_sae
from stages._stage import run_stage

FRONTIER_KEYS = ("l0", "mse", "fvu", "loss_recovered", "loss_recovered_mean_ablation", "kl_divergence",
                 "dead_fraction", "ultralow_fraction")


def main() -> None:
    with run_stage("compare", "compare") as s:
        p, sizes = s.section, sorted(s.params.sae.dict_sizes)
        frontier, decoders = [], {}
        for size in sizes:
            path = Path(f"metrics/sae/{size}/eval.json")
            if not path.exists():
                raise UserError(f"{path} is missing: run evaluate@{size} first (`dvc repro`)")
            s.input(f"sae_{size}", f"models/sae/{size}")
            ev = read_json(path)
            frontier.append({"dict_size": size, **{k: ev[k] for k in FRONTIER_KEYS}})
            decoders[size] = load_sae(f"models/sae/{size}").W_dec.detach()
        table = splitting.nearest_table(decoders)
        fams = splitting.families(table, p.family_cosine)
        out = Path("reports/splitting")
        with atomic_output(out) as tmp:
            table.write_parquet(tmp / "nearest.parquet")
            write_json(tmp / "families.json", {"family_cosine": p.family_cosine, "families": fams[: p.top_families]})
            write_record(tmp, s.record(dict_sizes=sizes))
        s.plot("plots/frontier.csv", frontier)
        shutil.rmtree("plots/splitting", ignore_errors=True)  # sizes may have been dropped
        for pair, rows in _by_pair(splitting.cosine_histogram(table)).items():
            s.plot(f"plots/splitting/{pair}.csv", rows)
        summary = splitting.summary(table, fams)
        s.metrics("metrics/splitting.json", summary)
        for fam in [f for f in fams if any(len(c["features"]) > 1 for c in f["children"].values())][:3]:
            grown = ", ".join(f"{len(c['features'])} in {k}" for k, c in fam["children"].items())
            print(f"compare: feature {fam['feature']} of {fam['dict_size']} splits into {grown}")
        s.run.log_artifact(out)


def _by_pair(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r.pop("pair").replace(" ", "_"), []).append(r)
    return out


if __name__ == "__main__":
    main()
