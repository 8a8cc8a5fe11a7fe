"""compare: feature splitting across the sizes of each architecture, from the decoders alone.

Each architecture's largest families go to their own file, reports/splitting/families/<architecture>.json:
interpret@<architecture>-<size> reads only its own, so a new or retrained architecture leaves the other
architectures' interpretation untouched (DVC sees their file unchanged and skips them).
"""

import shutil
from pathlib import Path

import polars as pl

from monosemantic.evaluation import splitting
from monosemantic.params import dictionary_name
from monosemantic.provenance import atomic_output, write_json, write_record
from monosemantic.sae.export import load_sae
from stages._stage import run_stage

SPLITTING = Path("reports/splitting")


def main() -> None:
    with run_stage("compare", "compare", also=("sae.architectures", "sae.dict_sizes")) as s:
        p, sizes = s.section, sorted(s.params.sae.dict_sizes)
        tables, fams, summaries = [], {}, {}
        for arch in s.params.sae.architectures:
            decoders = {}
            for size in sizes:
                name = dictionary_name(arch, size)
                s.input(f"sae_{name}", f"models/sae/{name}")
                decoders[size] = load_sae(f"models/sae/{name}").W_dec.detach()
            table = splitting.nearest_table(decoders)
            arch_fams = splitting.families(table, p.family_cosine)
            tables.append(table.select(pl.lit(arch).alias("architecture"), pl.all()))
            fams[arch] = [{"architecture": arch, **f} for f in arch_fams[: p.top_families]]
            summaries[arch] = splitting.summary(table, arch_fams)
            for fam in splitting.splits(arch_fams)[:3]:
                grown = ", ".join(f"{len(c['features'])} in {k}" for k, c in fam["children"].items())
                print(f"compare: {arch} feature {fam['feature']} of {fam['dict_size']} splits into {grown}")
        with atomic_output(SPLITTING) as tmp:
            pl.concat(tables).write_parquet(tmp / "nearest.parquet")
            for arch, arch_fams in fams.items():
                write_json(tmp / "families" / f"{arch}.json", {"family_cosine": p.family_cosine, "families": arch_fams})
            write_record(tmp, s.record(dictionaries=s.params.sae.names()))
        shutil.rmtree("plots/splitting", ignore_errors=True)  # architectures or sizes may have been dropped
        for table in tables:
            for pair, rows in _by_pair(splitting.cosine_histogram(table)).items():
                s.plot(f"plots/splitting/{table['architecture'][0]}_{pair}.csv", rows)
        s.metrics("metrics/splitting.json", summaries)
        s.run.log_artifact(SPLITTING)


def _by_pair(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r.pop("pair").replace(" ", "_"), []).append(r)
    return out


if __name__ == "__main__":
    main()
