"""Interpret one dictionary: sample, explain, simulate, score, and test the hypothesis proxies.

Its features and the subject model's MLP neurons go through the same protocol, so the two can
be compared (the paper's headline: features are more interpretable than neurons). Every score is
earned on held-out documents, shown in a seeded random order: simulation (Pearson on the true
activations, Spearman on them quantised to 0-10 as the paper reports), detection (does the
explanation tell activating excerpts from the others) and fuzzing (does it tell the activating
tokens from others highlighted in their place), the last two after EleutherAI's delphi.

Besides a random sample of features (and every neuron), the units the report names get examples and
explanations too: each proxy's best feature and neuron, and the features the caller names (the largest
splitting families). Column `chosen_for` says why; the headline scores average the sample only, so the
named units, picked for being good at something, cannot raise them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from monosemantic.errors import UserError
from monosemantic.interpret.baseline import Explanation
from monosemantic.interpret.logits import logit_effects, top_effects
from monosemantic.interpret.proxies import Detector, token_labels
from monosemantic.interpret.sampling import GROUPS, SPLITS, Scan, context_sides, scan
from monosemantic.interpret.scoring import bootstrap_difference, classification, pearson, quantise, spearman, summarize
from monosemantic.params import InterpretParams
from monosemantic.compute import Compute
from monosemantic.sae.model import Dictionary


@dataclass
class Result:
    features: pl.DataFrame   # one row per feature and per neuron
    examples: pl.DataFrame   # one row per example window of an interpreted unit
    proxies: pl.DataFrame    # one row per unit and proxy
    metrics: dict[str, Any]


def interpret_dictionary(acts, first_row: int, tokens: np.ndarray, ctx: int, sae: Dictionary, model: nn.Module,
                         strings: list[str], proxies: dict[str, Detector], backend, p: InterpretParams,
                         compute: Compute = Compute(), separator: int | None = None,
                         named: dict[int, str] | None = None, keep: np.ndarray | None = None) -> Result:
    """Scan `tokens` (whole contexts, consecutive in the packed stream) and their activations
    ``acts[first_row:]``; `strings` is each token id's text, `backend` a Baseline or an LLMBackend,
    `separator` the id of the token that ends each document (tokenizer.separator; None: the token
    whose text is "<|endoftext|>"); `named` maps features to interpret besides the sample to why (e.g.
    "splitting"); `keep` the tokens that count (None: all; see sampling.scan). The encoding runs on
    `compute`'s device; the statistics over its output, on the CPU."""
    n_feat, d = sae.d_sae, sae.d_in
    kinds = np.array(["feature"] * n_feat + ["neuron"] * (d if p.neurons else 0))
    index = np.concatenate([np.arange(n_feat), np.arange(d if p.neurons else 0)])
    keys = 2 * index + (kinds == "neuron")  # seeds each unit's draws: a neuron's are the same for every dictionary
    rng = np.random.default_rng(p.seed)

    sae = sae.to(compute.device)  # nn.Module.to: in place

    def encode(x: torch.Tensor, units: torch.Tensor | None) -> torch.Tensor:
        """Features (the dictionary's own encoder, any architecture) then neurons (x itself)."""
        x = compute.to_device(x)
        feats = None if units is None else units[units < n_feat].to(compute.device)
        neurons = (torch.arange(d if p.neurons else 0) if units is None else units[units >= n_feat] - n_feat)
        with torch.no_grad(), compute.autocast():
            out = torch.cat([sae.encode_units(x, feats), x[:, neurons.to(compute.device)]], 1)
        return out.float().cpu()

    chosen_for: dict[int, list[str]] = {}

    def choose(active: np.ndarray, fired: np.ndarray, true_positives: np.ndarray) -> np.ndarray:
        eligible = active.min(0) >= p.min_contexts
        feats = np.flatnonzero(eligible[:n_feat])
        if 0 < p.features < len(feats):
            feats = np.sort(rng.choice(feats, size=p.features, replace=False))
        for u in np.concatenate([feats, n_feat + np.flatnonzero(eligible[n_feat:])]):
            chosen_for.setdefault(int(u), []).append("sample")
        f1 = _proxy_scores(true_positives, fired, labels.sum(0))[2]
        for name, units in _leaders(f1, n_feat, list(proxies)).items():
            for u in units.values():
                chosen_for.setdefault(u, []).append(f"proxy:{name}")
        for f, why in (named or {}).items():
            chosen_for.setdefault(int(f), []).append(why)
        return np.array(sorted(chosen_for), dtype=np.int64)

    n_ctx = len(tokens) // ctx
    labels = token_labels(tokens.reshape(n_ctx, ctx), strings, list(proxies.values()))
    if keep is not None:  # a left-out token is no proxy positive either, as scan counts them (choose's F1 too)
        labels &= np.asarray(keep[: len(labels)], dtype=bool)[:, None]
    sides, n_docs = context_sides(tokens, ctx, _separator(separator, strings), p)
    s = scan(acts, first_row, tokens, ctx, sides, encode, len(kinds), choose, labels, p, keep, keys)
    ex, units = s.examples, s.interpreted
    rare = s.active_contexts.min(0) < p.min_contexts  # a named unit may be: it gets examples, not an explanation
    truth10 = quantise(ex.acts, s.max[ex.unit][:, None])

    # Logit effects of each interpreted unit's output direction.
    with torch.no_grad():
        directions = torch.cat([sae.W_dec.detach().cpu(), torch.eye(d)])[torch.from_numpy(units)]
    effects = logit_effects(model, directions)
    boosted = top_effects(effects, p.logit_tokens) if effects is not None else None

    # Explain from the training windows; score on the held-out ones in a seeded random order (in rank
    # order, best first, an LLM simulator could score well from the order alone).
    jobs, heldout = {}, []
    for i, u in enumerate(units):
        train, test = (ex.unit == u) & (ex.split == 0), (ex.unit == u) & (ex.split == 1)
        heldout.append(np.random.default_rng([p.seed, 2, keys[u]]).permutation(np.flatnonzero(test)))
        if rare[u]:
            continue
        job = {"name": f"{kinds[u]} {index[u]}", "tokens": ex.tokens[train], "before": ex.before[train],
               "acts10": ex.acts[train] / s.max[u] * 10}
        if boosted is not None:
            job["boosted"] = [strings[t] for t in boosted[0][i].tolist()]
            job["suppressed"] = [strings[t] for t in boosted[2][i].tolist()]
        jobs[i] = job
    explain = list(jobs)
    print(f"interpret: explaining {len(explain)} units ({(kinds[units[explain]] == 'feature').sum()} features) "
          f"with the {type(backend).__name__} backend", flush=True)
    explanations: list = [None] * len(units)  # None: too rare to explain
    for i, e in zip(explain, backend.explain_all(list(jobs.values()))):
        explanations[i] = e
    sampled = np.array(["sample" in chosen_for[int(u)] for u in units], dtype=bool)
    control_of = _control(kinds[units], sampled, rare[units])
    # Simulate each explanation on its own unit's held-out windows, and as the control on another's;
    # a failed explanation (an error message) is simulated nowhere.
    pairs = [(i, i) for i in explain] + [(control_of[i], i) for i in explain]
    pairs = [(e, i) for e, i in pairs if isinstance(explanations[e], Explanation)]
    sims = dict(zip(pairs, backend.simulate_all(
        [(explanations[e], ex.tokens[heldout[i]], ex.before[heldout[i]]) for e, i in pairs])))
    simulated = [sims.get((i, i)) for i in range(len(units))]
    control = [sims.get((c, i)) for i, c in enumerate(control_of)]
    fuzz_rngs = [np.random.default_rng([p.seed, 4, k]) for k in keys[units]]
    judged = _judge(backend, explanations, ex, heldout, truth10, fuzz_rngs)

    rows = {u: {} for u in range(len(kinds))}
    simulated_rows = np.full(ex.acts.shape, np.nan, dtype=np.float32)
    for i, u in enumerate(units):
        r, h = rows[u], heldout[i]
        r["chosen_for"] = chosen_for[int(u)]
        expl = explanations[i]
        if expl is None:
            continue
        r["control_of"] = int(index[units[control_of[i]]])
        if not isinstance(expl, Explanation):
            r["explanation_error"] = expl
            continue
        r["explanation"], r["explanation_form"] = expl.text, json.dumps(expl.form) if expl.form else None
        r |= judged[i]
        if isinstance(simulated[i], str):
            r["explanation_error"] = f"simulation failed: {simulated[i]}"
            continue
        simulated_rows[h] = simulated[i]
        true, true10 = ex.acts[h], truth10[h]
        r["score_pearson"], r["score_spearman"] = pearson(simulated[i], true), spearman(simulated[i], true10)
        for g, name in enumerate(GROUPS):
            in_group = ex.group[h] == g
            r[f"score_{name}_pearson"] = pearson(simulated[i][in_group], true[in_group]) if in_group.any() else None
        if isinstance(control[i], np.ndarray):
            r["control_pearson"], r["control_spearman"] = pearson(control[i], true), spearman(control[i], true10)
    for u in np.flatnonzero(rare):
        rows[u]["explanation_error"] = (f"too rare: {s.active_contexts[0, u]} and {s.active_contexts[1, u]} "
                                        f"activating contexts (explainer, held-out side), under "
                                        f"interpret.min_contexts={p.min_contexts}")

    proxy_table, best = _proxies(s, list(proxies), kinds, index)
    features = _features_table(s, kinds, index, rows, best, boosted, strings)
    examples = _examples_table(ex, kinds, index, strings, simulated_rows)
    leaders: dict[str, dict[str, int]] = {}  # as choose picked them
    for u, why in chosen_for.items():
        for name in (w.removeprefix("proxy:") for w in why if w.startswith("proxy:")):
            leaders.setdefault(name, {})[str(kinds[u])] = u
    metrics = _metrics(features, proxy_table, list(proxies), leaders, s, p, p.backend)
    metrics["split"] = {"documents": n_docs, **{f"{name}_contexts": int((sides == k).sum())
                                                for k, name in ((0, "explainer"), (1, "heldout"), (-1, "unused"))}}
    return Result(features, examples, proxy_table, metrics)


def _separator(separator: int | None, strings: list[str]) -> int:
    if separator is None:
        if "<|endoftext|>" not in strings:
            raise UserError("no token '<|endoftext|>' to tell where documents end: pass separator=, the id of "
                            "tokenizer.separator, to interpret_dictionary")
        return strings.index("<|endoftext|>")
    if not 0 <= separator < len(strings):
        raise UserError(f"separator id {separator} is not a token id (0..{len(strings) - 1})")
    return separator


def _judge(backend, explanations: list, ex, heldout: list[np.ndarray], truth10: np.ndarray,
           rngs: list[np.random.Generator]) -> dict[int, dict]:
    """Detection on every held-out window of each explained unit and fuzzing on the activating ones, in the
    windows' shuffled order (fuzzing's draws from each unit's own `rngs`): each unit's score columns, and
    what failed."""
    judged = [i for i, e in enumerate(explanations) if isinstance(e, Explanation)]
    detections = dict(zip(judged, backend.detect_all(
        [(explanations[i], ex.tokens[heldout[i]], ex.before[heldout[i]]) for i in judged])))
    fuzz = {i: _fuzz_set(truth10[heldout[i]], rngs[i]) for i in judged}
    shown = {i: heldout[i][rows] for i, (rows, _, _) in fuzz.items() if len(rows)}
    fuzzes = dict(zip(shown, backend.fuzz_all(
        [(explanations[i], ex.tokens[w], ex.before[w], fuzz[i][1]) for i, w in shown.items()])))
    out = {}
    for i in judged:
        r, failed = {}, []
        for task, answers, truth in (("detection", detections[i], truth10[heldout[i]].max(1) >= 1),
                                     ("fuzzing", fuzzes.get(i), fuzz[i][2])):
            if isinstance(answers, str):
                failed.append(f"{task} failed: {answers}")
            elif answers is not None:
                r |= {f"{task}_{k}": v for k, v in classification(truth, *answers).items()}
        out[i] = r | {"judge_error": "; ".join(failed) or None}
    return out


def _fuzz_set(truth10: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuzzing excerpts from held-out windows ``[E, W]`` on the 0-10 scale: which rows, the highlighted
    tokens, and whether the highlight is right. Each activating window appears once, so no excerpt can be
    compared with a copy of itself: half of them (at random) highlight the tokens that activate (1 or more
    of 10), the others as many tokens that do not, where the window has any."""
    rows = np.flatnonzero(truth10.max(1) >= 1)
    marked = truth10[rows] >= 1
    right = np.ones(len(rows), dtype=bool)
    for j in rng.permutation(len(rows))[: len(rows) // 2]:
        others = np.flatnonzero(~marked[j])
        if len(others):
            picked = rng.choice(others, size=min(int(marked[j].sum()), len(others)), replace=False)
            marked[j] = False
            marked[j, picked] = True
            right[j] = False
    return rows, marked, right


def _control(kinds: np.ndarray, sampled: np.ndarray, rare: np.ndarray) -> list[int]:
    """For each interpreted unit (`kinds`, `sampled`, `rare`: theirs), another of its kind whose explanation
    serves as a chance-level control: the sample's in a cycle (a random sample: never itself, and the same
    whichever units are named), a named unit's from the sample."""
    out = list(range(len(kinds)))
    for kind in ("feature", "neuron"):
        pool = [i for i in range(len(kinds)) if kinds[i] == kind and sampled[i]]
        for a, b in zip(pool, pool[1:] + pool[:1]):
            out[a] = b
        named = [i for i in range(len(kinds)) if kinds[i] == kind and not sampled[i] and not rare[i]]
        for j, a in enumerate(named):
            out[a] = pool[j % len(pool)] if pool else named[(j + 1) % len(named)]
    return out


def _proxy_scores(tp: np.ndarray, fired: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, ...]:
    """Precision, recall and F1 ``[units, proxies]`` of "the unit fires" (activation > 0) against each proxy's
    tokens, from the tokens where both hold (`tp`), where the unit fires and where the proxy holds."""
    fired, positives = np.asarray(fired, dtype=np.float64)[:, None], np.asarray(positives)[None, :]
    precision = np.divide(tp, fired, out=np.zeros_like(tp), where=fired > 0)
    recall = np.divide(tp, positives, out=np.zeros_like(tp), where=positives > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return precision, recall, f1


def _leaders(f1: np.ndarray, n_feat: int, names: list[str]) -> dict[str, dict[str, int]]:
    """Per proxy, the feature and the neuron (unit numbers) with the highest F1, where it is above 0."""
    out: dict[str, dict[str, int]] = {}
    for j, name in enumerate(names):
        for kind, lo, hi in (("feature", 0, n_feat), ("neuron", n_feat, len(f1))):
            if hi > lo and f1[lo:hi, j].max() > 0:
                out.setdefault(name, {})[kind] = lo + int(f1[lo:hi, j].argmax())
    return out


def _proxies(s: Scan, names: list[str], kinds, index) -> tuple[pl.DataFrame, dict]:
    """Each unit's precision, recall and F1 for each proxy, and its best proxy."""
    precision, recall, f1 = _proxy_scores(s.true_positives, s.density * s.n_tokens, s.label_counts)
    table = pl.DataFrame({
        "kind": np.repeat(kinds, len(names)), "index": np.repeat(index, len(names)),
        "proxy": pl.Series(np.tile(np.array(names, dtype=object), len(kinds)), dtype=pl.String),
        "precision": precision.ravel(), "recall": recall.ravel(), "f1": f1.ravel(),
    })
    best = {}
    for unit in np.flatnonzero(f1.max(1, initial=0) > 0):
        k = int(f1[unit].argmax())
        best[int(unit)] = {"best_proxy": names[k], "best_proxy_f1": float(f1[unit, k]),
                           "best_proxy_precision": float(precision[unit, k]),
                           "best_proxy_recall": float(recall[unit, k])}
    return table, best


_JUDGE_COLUMNS = [f"{task}_{m}" for task in ("detection", "fuzzing") for m in ("balanced_accuracy", "f1", "auc")]
_COLUMNS = {"explanation": pl.String, "explanation_error": pl.String, "explanation_form": pl.String,
            "score_pearson": pl.Float64, "score_spearman": pl.Float64, "score_top_pearson": pl.Float64,
            "score_interval_pearson": pl.Float64, "score_random_pearson": pl.Float64,
            "score_token_pearson": pl.Float64, **{c: pl.Float64 for c in _JUDGE_COLUMNS}, "judge_error": pl.String,
            "control_pearson": pl.Float64, "control_spearman": pl.Float64, "control_of": pl.Int64,
            "best_proxy": pl.String, "best_proxy_f1": pl.Float64, "best_proxy_precision": pl.Float64,
            "best_proxy_recall": pl.Float64}


def _features_table(s: Scan, kinds, index, rows: dict, best: dict, boosted, strings) -> pl.DataFrame:
    n = len(kinds)
    slot = np.full(n, -1)
    slot[s.interpreted] = np.arange(len(s.interpreted))

    def effects(k: int, as_tokens: bool) -> list[list]:
        if boosted is None:
            return [[] for _ in range(n)]
        vals = boosted[k].tolist()
        return [([strings[t] for t in vals[slot[u]]] if as_tokens else vals[slot[u]]) if slot[u] >= 0 else []
                for u in range(n)]

    data = {
        "kind": kinds, "index": index, "density": s.density, "max_activation": s.max.astype(np.float64),
        "mean_activation": s.mean, "interpreted": slot >= 0,
        "chosen_for": pl.Series([rows[u].get("chosen_for", []) for u in range(n)], dtype=pl.List(pl.String)),
        **{c: pl.Series([(rows[u] | best.get(u, {})).get(c) for u in range(n)], dtype=t) for c, t in _COLUMNS.items()},
        "hist_counts": [s.histograms[slot[u]].tolist() if slot[u] >= 0 else [] for u in range(n)],
        "logit_boost_tokens": effects(0, True), "logit_boost_values": effects(1, False),
        "logit_suppress_tokens": effects(2, True), "logit_suppress_values": effects(3, False),
    }
    return pl.DataFrame(data, schema_overrides={"hist_counts": pl.List(pl.Int64),
                                                "logit_boost_tokens": pl.List(pl.String),
                                                "logit_boost_values": pl.List(pl.Float64),
                                                "logit_suppress_tokens": pl.List(pl.String),
                                                "logit_suppress_values": pl.List(pl.Float64)})


def _examples_table(ex, kinds, index, strings, simulated) -> pl.DataFrame:
    held = ex.split == 1
    return pl.DataFrame({
        "kind": kinds[ex.unit], "index": index[ex.unit],
        "split": np.array(SPLITS, dtype=object)[ex.split], "group": np.array(GROUPS, dtype=object)[ex.group],
        "interval": pl.Series([int(i) if i > 0 else None for i in ex.interval], dtype=pl.Int64),
        "rank": ex.rank, "context": ex.context, "center": ex.center,
        "tokens": [[strings[t] for t in row] for row in ex.tokens.tolist()],
        "acts": ex.acts.astype(np.float64).tolist(),
        "simulated": pl.Series([row.tolist() if h else None for row, h in zip(simulated.astype(np.float64), held)],
                               dtype=pl.List(pl.Float64)),
    }, schema_overrides={"split": pl.String, "group": pl.String, "tokens": pl.List(pl.String),
                         "acts": pl.List(pl.Float64)})


def _metrics(features: pl.DataFrame, proxies: pl.DataFrame, names: list[str], leaders: dict[str, dict[str, int]],
             s: Scan, p: InterpretParams, backend: str) -> dict:
    """Scores over the random sample only; `leaders`: each proxy's best unit per kind, as choose picked them."""
    out: dict[str, Any] = {"backend": backend, "n_tokens": s.n_tokens}
    scored = {}
    for kind in ("feature", "neuron"):
        mine = features.filter(pl.col("kind") == kind)
        rows = mine.filter(pl.col("chosen_for").list.contains("sample"))
        pearsons = rows["score_pearson"].drop_nulls().to_numpy()
        scored[kind] = pearsons
        out[kind + "s"] = {
            "interpreted": mine.filter(pl.col("interpreted")).height, "sampled": rows.height, "scored": len(pearsons),
            "failed": rows.filter(pl.col("explanation_error").is_not_null()).height,
            "too_rare": int(((s.active_contexts.min(0) < p.min_contexts)
                             & (features["kind"] == kind).to_numpy()).sum()),
            **{f"{k}_pearson": v for k, v in summarize(pearsons).items() if k != "n"},
            **{f"{k}_spearman": v for k, v in summarize(rows["score_spearman"].drop_nulls().to_numpy()).items()
               if k in ("mean", "median")},
            "control_mean_pearson": summarize(rows["control_pearson"].drop_nulls().to_numpy()).get("mean"),
            "control_mean_spearman": summarize(rows["control_spearman"].drop_nulls().to_numpy()).get("mean"),
            **{f"mean_{c}": summarize(rows[c].drop_nulls().to_numpy()).get("mean") for c in _JUDGE_COLUMNS},
        }
    out["difference"] = bootstrap_difference(scored["feature"], scored["neuron"], p.bootstrap, p.seed)
    out["proxies"] = {}
    for name, positives in zip(names, s.label_counts):
        entry = {"positive_tokens": int(positives)}
        for kind, unit in leaders.get(name, {}).items():
            top = proxies.row(unit * len(names) + names.index(name), named=True)  # a row per unit and proxy
            entry |= {kind: top["index"], f"{kind}_f1": top["f1"], f"{kind}_precision": top["precision"],
                      f"{kind}_recall": top["recall"]}
        out["proxies"][name] = entry
    return out
