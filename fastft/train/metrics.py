"""Classification metrics, computed without extra dependencies.

accuracy, macro precision/recall/F1, and ROC-AUC for binary tasks (rank statistic,
ties averaged).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastft.core.numerics import softmax  # noqa: F401 - re-exported; serving imports it from utils


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve of ``scores`` for the positive class 1 (None if one class)."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(labels: Sequence[int], probs: np.ndarray, num_labels: int | None = None) -> dict:
    """Metrics of predicted class probabilities ``probs`` (n, num_labels) against ``labels``.

    The macro averages are over the classes that occur among the labels or the predictions (as
    scikit-learn's): a class with neither would add a 0 and pull them down (a test set of only
    positives, all predicted right, had accuracy 1.0 and F1 0.5)."""
    y = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = num_labels or probs.shape[1]
    pred = probs.argmax(axis=1)
    precision, recall, f1 = [], [], []
    for c in sorted(set(y.tolist()) | set(pred.tolist())) or range(k):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    out = {
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_macro": float(np.mean(f1)),
        "n": int(len(y)),
    }
    if k == 2:
        out["roc_auc"] = roc_auc(y, probs[:, 1])
    return out


METRIC_NAMES = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "roc_auc", "loss")
