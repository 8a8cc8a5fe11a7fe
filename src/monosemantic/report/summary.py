"""reports/summary.md: the headline numbers across dictionary sizes, as markdown for a PR."""

from __future__ import annotations

import math
from typing import Any

COLUMNS = [  # (header, eval.json / train.json key, format)
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
]


def cell(fmt: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def summary_markdown(dictionaries: list[dict], model: dict | None = None, splitting: dict | None = None,
                     families: list[dict] | None = None, universality: list[dict] | None = None,
                     interp: dict[int, dict] | None = None) -> str:
    """`dictionaries`: one merged train.json + eval.json per size; `interp`: interp.json per size."""
    lines = ["# monosemantic: summary", ""]
    if model:
        lines += [f"Subject model: eval loss {model['eval_loss']:.3f} nats/token (unigram entropy "
                  f"{model['unigram_entropy']:.3f}), {model['tokens_seen']:,} training tokens.", ""]
    n_eval = next((d["n_eval_tokens"] for d in dictionaries if "n_eval_tokens" in d), None)
    lines += ["## Dictionaries", ""]
    if n_eval:
        ultra = dictionaries[0].get("ultralow_threshold")
        lines += [f"On {n_eval:,} held-out tokens. Loss recovered = (L_zero − L_sae) / (L_zero − L_orig), the "
                  f"paper's definition; ultralow = alive with density ≤ {ultra:.2g}; dense = density > "
                  f"{dictionaries[0].get('dense_threshold', 0.1):g}.", ""]
    lines += ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---:|" * len(COLUMNS)]
    for d in sorted(dictionaries, key=lambda d: d["dict_size"]):
        lines.append("| " + " | ".join(cell(fmt, d.get(key)) for _, key, fmt in COLUMNS) + " |")
    rec = [d.get("loss_recovered") for d in sorted(dictionaries, key=lambda d: d["dict_size"])]
    if len(rec) > 1 and all(r is not None for r in rec):
        rising = all(b >= a for a, b in zip(rec, rec[1:]))
        lines += ["", f"Loss recovered {'rises' if rising else 'does not rise'} with dictionary size"
                      f"{' (as in the paper)' if rising else ' (the paper finds it does)'}."]
    if splitting:
        lines += ["", "## Feature splitting", "",
                  "Nearest feature (decoder cosine) of each feature of a larger dictionary in a smaller one.", "",
                  "| larger → smaller | median cosine | mean | ≥ 0.9 |", "|---|---:|---:|---:|"]
        for pair, v in splitting.items():
            if pair != "families":
                a, b = pair.split("_to_")
                lines.append(f"| {a} → {b} | {v['median_cosine']:.3f} | {v['mean_cosine']:.3f} | "
                             f"{v['fraction_above_0.9']:.1%} |")
    splits = [f for f in families or [] if any(len(c["features"]) > 1 for c in f["children"].values())]
    if splits:
        lines += ["", "Largest splits (a feature of the smallest dictionary and its nearest features in larger ones):", ""]
        for f in splits[:5]:
            grown = " → ".join(f"{len(c['features'])} in {size}" for size, c in f["children"].items())
            lines.append(f"- feature {f['feature']} of {f['dict_size']} → {grown}")
    if interp:
        lines += ["", *interpretability_markdown(interp)]
    for u in universality or []:
        lines += ["", "## Universality", "",
                  f"Two subject models differing only in seed, {u['dict_size']}-feature dictionaries: median best-match "
                  f"activation correlation {u['feature_median']:.2f} for features vs {u['neuron_median']:.2f} for "
                  f"neurons (paper: 0.72 vs 0.46)."]
    return "\n".join(lines) + "\n"


def interpretability_markdown(interp: dict[int, dict]) -> list[str]:
    """Features vs neurons, the paper's headline: mean simulation score of each, and the control."""
    lines = ["## Interpretability", "",
             "Simulation score: Pearson correlation of the activations a simulator predicts from the explanation "
             "alone with the true ones, on held-out examples. Control: another unit's explanation (chance level).", "",
             "| size | features | mean r | neurons | mean r | control r | features − neurons (CI) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    higher = []
    for size, m in sorted(interp.items()):
        f, n, d = (m.get(k) or {} for k in ("features", "neurons", "difference"))
        ci = f" ({cell('{:+.2f}', d.get('ci_low'))} to {cell('{:+.2f}', d.get('ci_high'))})" if "ci_low" in d else ""
        lines.append(f"| {size} | {cell('{}', scored(f))} | {cell('{:.2f}', f.get('mean_pearson'))} | "
                     f"{cell('{}', scored(n))} | {cell('{:.2f}', n.get('mean_pearson'))} | "
                     f"{cell('{:.2f}', control_mean(m))} | {cell('{:+.2f}', d.get('mean'))}{ci} |")
        if f.get("mean_pearson") is not None and n.get("mean_pearson") is not None:
            higher.append(f["mean_pearson"] > n["mean_pearson"])
    if higher:
        verdict = ("Features score higher than neurons at every size (as in the paper)." if all(higher) else
                   "Features do not score higher than neurons at every size (the paper finds they do).")
        lines += ["", verdict]
    proxies = [f"`{name}` best F1 {cell('{:.2f}', f1)} (feature {feature} of {size})"
               for size, m in sorted(interp.items()) for name, feature, f1 in best_proxies(m)]
    if proxies:
        lines += ["", "Hypothesis proxies: " + "; ".join(proxies) + "."]
    return lines


def scored(group: dict) -> int | None:
    """How many units of a group (features or neurons) have a score."""
    return group.get("scored")


def control_mean(interp: dict) -> float | None:
    """Mean score of the features' control (another feature's explanation): the chance level."""
    return (interp.get("features") or {}).get("control_mean_pearson")


def best_proxies(interp: dict) -> list[tuple[str, int | None, float | None]]:
    """(proxy, best feature, its F1) for each proxy."""
    return [(name, p.get("feature"), p.get("feature_f1")) for name, p in (interp.get("proxies") or {}).items()]
