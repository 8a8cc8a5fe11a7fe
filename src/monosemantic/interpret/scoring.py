"""Scores of explanations: correlation of simulated with true activations, a judge's answers against the
truth (detection and fuzzing, as in EleutherAI's delphi), and their comparison."""

from __future__ import annotations

import numpy as np


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """0 where either side is constant: a flat prediction carries no information."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(x) < 2:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank."""
    values, inverse, counts = np.unique(np.asarray(x).ravel(), return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (first + (counts - 1) / 2)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(ranks(x), ranks(y))


def quantise(acts: np.ndarray, peak: float | np.ndarray) -> np.ndarray:
    """Activations on the simulator's 0-10 scale: scaled by the unit's max and rounded, as in the paper."""
    peak = np.asarray(peak, dtype=np.float64)
    scaled = np.divide(np.asarray(acts, dtype=np.float64) * 10, peak, out=np.zeros(np.shape(acts)), where=peak > 0)
    return np.clip(np.rint(scaled), 0, 10)


def auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC: the chance that a positive scores above a negative (ties count half); None without both."""
    truth = np.asarray(truth, dtype=bool).ravel()
    pos, neg = int(truth.sum()), int((~truth).sum())
    if not pos or not neg:
        return None
    return float((ranks(score)[truth].sum() - pos * (pos - 1) / 2) / (pos * neg))


def classification(truth: np.ndarray, predicted: np.ndarray, score: np.ndarray) -> dict[str, float | None]:
    """Balanced accuracy and F1 of a judge's yes/no answers, AUC of its scores; None where a class is missing
    (balanced accuracy is 0.5 for a judge that cannot tell, whatever the share of positives)."""
    truth, predicted = np.asarray(truth, dtype=bool).ravel(), np.asarray(predicted, dtype=bool).ravel()
    pos, neg = int(truth.sum()), int((~truth).sum())
    tp, tn = int((truth & predicted).sum()), int((~truth & ~predicted).sum())
    return {"balanced_accuracy": (tp / pos + tn / neg) / 2 if pos and neg else None,
            "f1": 2 * tp / (pos + int(predicted.sum())) if pos else None,
            "auc": auc(truth, score)}


def summarize(scores: np.ndarray) -> dict[str, float | int]:
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if not len(scores):
        return {"n": 0}
    return {"n": len(scores), "mean": float(scores.mean()), "median": float(np.median(scores)),
            "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0}


def bootstrap_difference(a: np.ndarray, b: np.ndarray, n: int, seed: int, level: float = 0.95) -> dict[str, float]:
    """mean(a) − mean(b) with a percentile bootstrap interval (each group resampled on its own)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return {}
    rng = np.random.default_rng(seed)
    diffs = (a[rng.integers(0, len(a), (n, len(a)))].mean(1) - b[rng.integers(0, len(b), (n, len(b)))].mean(1))
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(a.mean() - b.mean()), "ci_low": float(lo), "ci_high": float(hi), "ci_level": level}
