"""Classification metrics: pure functions of true labels and predicted probabilities
(scikit-learn underneath). Nothing here reads files or models."""
from __future__ import annotations

import numpy as np


def topk_accuracy(y: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the k most probable. k >= classes gives 1.0."""
    if len(y) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(y)[:, None]).any(axis=1).mean())


def roc_auc_macro(y: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest ROC AUC averaged over the classes that have both positives and negatives in y
    (a class absent from a small test set has no AUC; it is skipped, not counted as 0.5)."""
    from sklearn.metrics import roc_auc_score

    aucs = [roc_auc_score(y == c, probs[:, c]) for c in range(probs.shape[1]) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def classification(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Every summary number of a run, and the per-class table and confusion matrix.

    >>> classification(np.array([0, 1]), np.array([[.9, .1], [.6, .4]]), ["a", "b"])["top1"]
    0.5
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y = np.asarray(y)
    pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    out = {"videos": int(len(y)), "top1": topk_accuracy(y, probs, 1), "top5": topk_accuracy(y, probs, 5),
           "roc_auc_ovr_macro": roc_auc_macro(y, probs)}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    p, r, f, n = precision_recall_fscore_support(y, pred, labels=labels, average=None, zero_division=0)
    out["per_class"] = [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                         "support": int(n[i])} for i, c in enumerate(classes)]
    out["confusion"] = confusion_matrix(y, pred, labels=labels).tolist()
    return out


def subset_accuracy(y: np.ndarray, probs: np.ndarray, keep: np.ndarray) -> float:
    """Top-1 accuracy over the rows where `keep` is true (nan when none)."""
    keep = np.asarray(keep, bool)
    return float((probs[keep].argmax(axis=1) == np.asarray(y)[keep]).mean()) if keep.any() else float("nan")


def summary(values: list[float]) -> dict:
    """Mean and (population) standard deviation of fold results."""
    a = np.asarray(values, float)
    return {"mean": float(a.mean()), "std": float(a.std()), "folds": len(a), "values": [float(v) for v in a]}
