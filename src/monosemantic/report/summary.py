"""reports/summary.md: the headline numbers of every dictionary (architecture × size), as markdown for a PR.

A dictionary's row is its train.json merged with its eval.json, plus `architecture` and
`dict_size` (see `row`); interp.json, splitting and families are keyed by architecture or by
dictionary name (`<architecture>-<size>`). Every comparison is computed from those numbers.
"""

from __future__ import annotations

import math
from typing import Any

from monosemantic.params import dictionary_name

COLUMNS = [  # (header, row key, format): train.json / eval.json keys, and what `row` adds
    ("architecture", "architecture", "{}"),
    ("size", "dict_size", "{:d}"),
    ("L0", "l0", "{:.1f}"),
    ("MSE", "mse", "{:.4g}"),
    ("FVU", "fvu", "{:.3f}"),
    ("loss recovered", "loss_recovered", "{:.1%}"),
    ("(mean abl.)", "loss_recovered_mean_ablation", "{:.1%}"),
    ("KL", "kl_divergence", "{:.4f}"),
    ("dead", "dead_features", "{:d}"),
    ("ultralow", "ultralow_features", "{:d}"),
    ("dense", "dense_features", "{:d}"),
    ("resampled", "resampled_neurons", "{:d}"),
    ("train tokens", "tokens_seen", "{:,d}"),
    ("features r", "features_mean_pearson", "{:.2f}"),  # interpretability: mean simulation score
]
SCORE_SYMBOLS = {"pearson": "r", "spearman": "ρ"}


def cell(fmt: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def row(architecture: str, size: int, metrics: dict, interp: dict | None = None) -> dict:
    """One dictionary's table row: train.json + eval.json (`metrics`), its architecture and size,
    and its features' mean simulation score from interp.json."""
    return {**metrics, "architecture": architecture, "dict_size": size,
            "features_mean_pearson": ((interp or {}).get("features") or {}).get("mean_pearson")}


def ordered(rows: list[dict]) -> list[dict]:
    """By architecture (in the order they first appear: params.yaml's), then by size; a row without
    an architecture is the default one's, `standard` (metrics from before there were others)."""
    rows = [{"architecture": "standard", **r} for r in rows]
    first: dict[str, int] = {}
    for r in rows:
        first.setdefault(r["architecture"], len(first))
    return sorted(rows, key=lambda r: (first[r["architecture"]], r["dict_size"]))


def architectures(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["architecture"] for r in ordered(rows)))


def compare_architectures(rows: list[dict]) -> list[dict]:
    """Per size that two or more architectures share: each one's row (architecture order), and
    which architecture recovers the most loss and which has the lowest FVU there."""
    out = []
    for size in sorted({r["dict_size"] for r in rows}):
        at = [r for r in ordered(rows) if r["dict_size"] == size]
        if len(at) > 1:
            out.append({"size": size, "rows": {r["architecture"]: r for r in at},
                        "best_loss": _best(at, "loss_recovered", max), "best_fvu": _best(at, "fvu", min)})
    return out


def _best(rows: list[dict], key: str, pick) -> str | None:
    have = [r for r in rows if _finite(r.get(key))]
    return pick(have, key=lambda r: r[key])["architecture"] if have else None


def frontier_cell(r: dict | None) -> str:
    """An architecture's point at one size: loss recovered at its L0, and its FVU."""
    if r is None:
        return "–"
    return f"{cell('{:.1%}', r.get('loss_recovered'))} at L0 {cell('{:.1f}', r.get('l0'))} (FVU {cell('{:.3f}', r.get('fvu'))})"


def summary_markdown(dictionaries: list[dict], model: dict | None = None, splitting: dict | None = None,
                     families: list[dict] | None = None, universality: list[dict] | None = None,
                     interp: dict[str, dict] | None = None) -> str:
    """`dictionaries`: one `row` per dictionary; `splitting`: metrics/splitting.json (per architecture);
    `families`: compare's families/<architecture>.json lists, joined; `interp`: interp.json per dictionary name."""
    dictionaries = ordered(dictionaries)
    lines = ["# monosemantic: summary", ""]
    if model:
        lines += [f"Subject model: eval loss {model['eval_loss']:.3f} nats/token (unigram entropy "
                  f"{model['unigram_entropy']:.3f}), {model['tokens_seen']:,} training tokens.", ""]
    evaluated = next((d for d in dictionaries if d.get("n_eval_tokens")), None)  # the first may not be, yet
    lines += ["## Dictionaries", ""]
    if evaluated:
        ultra = evaluated.get("ultralow_threshold")
        lines += [f"On {evaluated['n_eval_tokens']:,} held-out tokens. Loss recovered = (L_zero − L_sae) / "
                  "(L_zero − L_orig), the paper's definition; "
                  + (f"ultralow = alive with density ≤ {ultra:.2g}; " if ultra is not None else "")
                  + f"dense = density > {evaluated.get('dense_threshold', 0.1):g}; features r = mean simulation "
                  "score of the interpreted features.", ""]
    lines += ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|---:|" + "---:|" * (len(COLUMNS) - 2)]
    for d in dictionaries:
        lines.append("| " + " | ".join(cell(fmt, d.get(key)) for _, key, fmt in COLUMNS) + " |")
    for arch in architectures(dictionaries):
        rec = [d.get("loss_recovered") for d in dictionaries if d["architecture"] == arch]
        if len(rec) > 1 and all(r is not None for r in rec):
            rising = all(b >= a for a, b in zip(rec, rec[1:]))
            lines += ["", f"{arch}: loss recovered {'rises' if rising else 'does not rise'} with dictionary size"
                          f"{' (as in the paper)' if rising else ' (the paper finds it does)'}."]
    lines += architectures_markdown(dictionaries)
    lines += splitting_markdown(splitting, families)
    if interp:
        lines += ["", *interpretability_markdown(interp, dictionaries)]
    for u in universality or []:
        lines += ["", "## Universality", "",
                  f"Two subject models differing only in seed, {u['dict_size']}-feature standard dictionaries: median "
                  f"best-match activation correlation {u['feature_median']:.2f} for features vs {u['neuron_median']:.2f} "
                  f"for neurons (paper: 0.72 vs 0.46)."]
    return "\n".join(lines) + "\n"


def architectures_markdown(dictionaries: list[dict]) -> list[str]:
    """At each size two or more architectures share: loss recovered at the L0 each reached, and the best."""
    compared = compare_architectures(dictionaries)
    if not compared:
        return []
    archs = architectures(dictionaries)
    lines = ["", "## Architectures compared", "",
             "At each dictionary size: loss recovered at the L0 each architecture reached (its FVU in brackets). "
             "Sizes match, L0 need not: the L0 frontier (plots/frontier/, the site's charts) compares sparsity too.", "",
             "| size | " + " | ".join(archs) + " | most loss recovered | lowest FVU |",
             "|---:|" + "---|" * len(archs) + "---|---|"]
    for c in compared:
        lines.append(f"| {c['size']} | " + " | ".join(frontier_cell(c["rows"].get(a)) for a in archs)
                     + f" | {c['best_loss'] or '–'} | {c['best_fvu'] or '–'} |")
    for key, what in (("best_loss", "Most loss recovered"), ("best_fvu", "Lowest FVU")):
        wins = [c[key] for c in compared if c[key]]
        if wins:
            counts = {a: wins.count(a) for a in archs if a in wins}
            lines += ["", f"{what}: " + "; ".join(f"{a} at {n} of {len(compared)} sizes" for a, n in counts.items())
                      + "."]
    for c in compared:  # where the best buys its loss recovered with more active features, say so
        best = c["rows"].get(c["best_loss"]) if c["best_loss"] else None
        others = [r.get("l0") for a, r in c["rows"].items() if a != c["best_loss"] and _finite(r.get("l0"))]
        if best and _finite(best.get("l0")) and others and best["l0"] > min(others):
            lines += ["", f"At {c['size']}, {c['best_loss']} recovers the most loss but at a higher L0 "
                          f"({best['l0']:.1f} vs {min(others):.1f}): not a like-for-like win."]
    return lines


def splitting_markdown(splitting: dict | None, families: list[dict] | None) -> list[str]:
    """Feature splitting within each architecture, across its sizes (metrics/splitting.json, reports/splitting/families/)."""
    lines = []
    pairs = [(arch, pair, v) for arch, per in (splitting or {}).items() if isinstance(per, dict)
             for pair, v in per.items() if isinstance(v, dict) and "median_cosine" in v]  # not "families"
    if pairs:
        lines += ["", "## Feature splitting", "",
                  "Nearest feature (decoder cosine) of each feature of a larger dictionary in a smaller one of the "
                  "same architecture.", "",
                  "| architecture | larger → smaller | median cosine | mean | ≥ 0.9 |", "|---|---|---:|---:|---:|"]
        for arch, pair, v in pairs:
            a, b = pair.split("_to_")
            lines.append(f"| {arch} | {a} → {b} | {v['median_cosine']:.3f} | {v['mean_cosine']:.3f} | "
                         f"{v['fraction_above_0.9']:.1%} |")
    splits = [f for f in families or [] if any(len(c["features"]) > 1 for c in f["children"].values())]
    if splits:
        lines += ["", "Largest splits (a feature of an architecture's smallest dictionary and its nearest features in "
                      "its larger ones):", ""]
        for arch in dict.fromkeys(f.get("architecture", "standard") for f in splits):
            for f in [f for f in splits if f.get("architecture", "standard") == arch][:3]:
                grown = " → ".join(f"{len(c['features'])} in {size}" for size, c in f["children"].items())
                lines.append(f"- {arch}: {unit('feature', f['feature'], dictionary_name(arch, f['dict_size']))} → {grown}")
    return lines


def interp_columns(interp: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(header, group, key) of every mean score interp.json has for features and neurons
    (mean_pearson first, then any other mean_* key, in the order they appear)."""
    out = []
    for group in ("features", "neurons"):
        keys = dict.fromkeys(["mean_pearson", *(k for m in interp.values() for k in (m.get(group) or {})
                                                if k.startswith("mean_"))])
        for key in keys:
            score = key.removeprefix("mean_")
            out.append((f"{group} mean {SCORE_SYMBOLS.get(score, score)}", group, key))
    return out


def interpretability_markdown(interp: dict[str, dict], dictionaries: list[dict] | None = None) -> list[str]:
    """Features vs neurons, the paper's headline, per dictionary (grouped by architecture): the mean
    simulation score of each (and every other mean score interp.json has), and the control."""
    order = [dictionary_name(d["architecture"], d["dict_size"]) for d in ordered(dictionaries or [])]
    names = [n for n in order if n in interp] + [n for n in interp if n not in order]
    extra = [c for c in interp_columns(interp) if c[2] != "mean_pearson"]
    lines = ["## Interpretability", "",
             "Simulation score: Pearson correlation of the activations a simulator predicts from the explanation "
             "alone with the true ones, on held-out examples. Control: another unit's explanation (chance level).", "",
             "| dictionary | features | mean r | neurons | mean r | control r | features − neurons (CI) |"
             + "".join(f" {h} |" for h, _, _ in extra),
             "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra)]
    higher = []
    for n in names:
        m = interp[n]
        f, nr, d = (m.get(k) or {} for k in ("features", "neurons", "difference"))
        ci = f" ({cell('{:+.2f}', d.get('ci_low'))} to {cell('{:+.2f}', d.get('ci_high'))})" if "ci_low" in d else ""
        lines.append(f"| {n} | {cell('{}', scored(f))} | {cell('{:.2f}', f.get('mean_pearson'))} | "
                     f"{cell('{}', scored(nr))} | {cell('{:.2f}', nr.get('mean_pearson'))} | "
                     f"{cell('{:.2f}', control_mean(m))} | {cell('{:+.2f}', d.get('mean'))}{ci} |"
                     + "".join(f" {cell('{:.2f}', (m.get(g) or {}).get(k))} |" for _, g, k in extra))
        if f.get("mean_pearson") is not None and nr.get("mean_pearson") is not None:
            higher.append(f["mean_pearson"] > nr["mean_pearson"])
    if higher:
        verdict = ("Features score higher than neurons in every dictionary (as in the paper)." if all(higher) else
                   "Features do not score higher than neurons in every dictionary (the paper finds they do).")
        lines += ["", verdict]
    proxies = [f"`{proxy}` best F1 {cell('{:.2f}', f1)} ({unit('feature', feature, n)})" if feature is not None
               else f"`{proxy}`: no feature of {n} fires on its tokens"
               for n in names for proxy, feature, f1 in best_proxies(interp[n])]
    if proxies:
        lines += ["", "Hypothesis proxies: " + "; ".join(proxies) + "."]
    return lines


def unit(kind: str, index: int, dictionary: str) -> str:
    """How the summary names a unit; interpret gives each one it names a page (reports/pages/<dictionary>/)."""
    return f"{kind} {index} of {dictionary}"


def scored(group: dict) -> int | None:
    """How many units of a group (features or neurons) have a score."""
    return group.get("scored")


def control_mean(interp: dict) -> float | None:
    """Mean score of the features' control (another feature's explanation): the chance level."""
    return (interp.get("features") or {}).get("control_mean_pearson")


def best_proxies(interp: dict) -> list[tuple[str, int | None, float | None]]:
    """(proxy, best feature, its F1) for each proxy."""
    return [(name, p.get("feature"), p.get("feature_f1")) for name, p in (interp.get("proxies") or {}).items()]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
