"""compare: every dictionary side by side: the L0 / loss-recovered / FVU frontier of each architecture,
and feature splitting across the sizes of each architecture."""

import shutil
from pathlib import Path

import polars as pl

from monosemantic.errors import UserError
from monosemantic.evaluation import splitting
from monosemantic.params import dictionary_name
from monosemantic.provenance import atomic_output, read_json, write_json, write_record
from monosemantic.sae.export import load_sae
from stages._stage import run_stage

FRONTIER_KEYS = ("l0", "mse", "fvu", "loss_recovered", "loss_recovered_mean_ablation", "kl_divergence",
                 "dead_fraction", "ultralow_fraction", "dense_fraction")


def main() -> None:
    with run_stage("compare", "compare", also=("sae.architectures", "sae.dict_sizes")) as s:
        p, sizes = s.section, sorted(s.params.sae.dict_sizes)
        frontiers, tables, fams, summaries = {}, [], [], {}
        for arch in s.params.sae.architectures:
            frontier, decoders = [], {}
            for size in sizes:
                name = dictionary_name(arch, size)
                path = Path(f"metrics/sae/{name}/eval.json")
                if not path.exists():
                    raise UserError(f"{path} is missing: run evaluate@{name} first (`dvc repro`)")
                s.input(f"sae_{name}", f"models/sae/{name}")
                ev = read_json(path)
                frontier.append({"dict_size": size, **{k: ev[k] for k in FRONTIER_KEYS}})
                decoders[size] = load_sae(f"models/sae/{name}").W_dec.detach()
            frontiers[arch] = frontier
            table = splitting.nearest_table(decoders)
            arch_fams = splitting.families(table, p.family_cosine)
            tables.append(table.select(pl.lit(arch).alias("architecture"), pl.all()))
            fams += [{"architecture": arch, **f} for f in arch_fams[: p.top_families]]
            summaries[arch] = splitting.summary(table, arch_fams)
            for fam in splitting.splits(arch_fams)[:3]:
                grown = ", ".join(f"{len(c['features'])} in {k}" for k, c in fam["children"].items())
                print(f"compare: {arch} feature {fam['feature']} of {fam['dict_size']} splits into {grown}")
        out = Path("reports/splitting")
        with atomic_output(out) as tmp:
            pl.concat(tables).write_parquet(tmp / "nearest.parquet")
            write_json(tmp / "families.json", {"family_cosine": p.family_cosine, "families": fams})
            write_record(tmp, s.record(dictionaries=s.params.sae.names()))
        for folder in ("plots/frontier", "plots/splitting"):  # architectures or sizes may have been dropped
            shutil.rmtree(folder, ignore_errors=True)
        for arch, frontier in frontiers.items():
            s.plot(f"plots/frontier/{arch}.csv", frontier)
        for table in tables:
            for pair, rows in _by_pair(splitting.cosine_histogram(table)).items():
                s.plot(f"plots/splitting/{table['architecture'][0]}_{pair}.csv", rows)
        s.metrics("metrics/splitting.json", summaries)
        s.run.log_artifact(out)


def _by_pair(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r.pop("pair").replace(" ", "_"), []).append(r)
    return out


if __name__ == "__main__":
    main()
