"""frontier: every dictionary on one sparsity/fidelity frontier per architecture (L0 against loss
recovered and FVU across its sizes), from evaluate's metrics: plots/frontier/<architecture>.csv."""

import shutil
from pathlib import Path

from monosemantic.errors import UserError
from monosemantic.params import dictionary_name
from monosemantic.provenance import read_json
from stages._stage import run_stage

FRONTIER_KEYS = ("l0", "mse", "fvu", "loss_recovered", "loss_recovered_mean_ablation", "kl_divergence",
                 "dead_fraction", "ultralow_fraction", "dense_fraction")


def main() -> None:
    with run_stage("frontier", None, also=("sae.architectures", "sae.dict_sizes")) as s:
        frontiers = {}
        for arch in s.params.sae.architectures:
            frontiers[arch] = []
            for size in sorted(s.params.sae.dict_sizes):
                name = dictionary_name(arch, size)
                path = Path(f"metrics/sae/{name}/eval.json")
                if not path.exists():
                    raise UserError(f"{path} is missing: run evaluate@{name} first (`dvc repro`)")
                ev = read_json(path)
                frontiers[arch].append({"dict_size": size, **{k: ev[k] for k in FRONTIER_KEYS}})
        shutil.rmtree("plots/frontier", ignore_errors=True)  # architectures or sizes may have been dropped
        for arch, rows in frontiers.items():
            s.plot(f"plots/frontier/{arch}.csv", rows)
        print(f"frontier: {len(frontiers)} architectures × {len(s.params.sae.dict_sizes)} sizes in plots/frontier/")


if __name__ == "__main__":
    main()
