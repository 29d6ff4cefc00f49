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
    auc, ap, top5 = per_class_ranking(y, probs)
    out["per_class"] = [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                         "top5": top5[i], "auc": auc[i], "ap": ap[i], "support": int(n[i])}
                        for i, c in enumerate(classes)]
    out["confusion"] = confusion_matrix(y, pred, labels=labels).tolist()
    out["most_confused"] = most_confused(out["confusion"], classes)
    out["curves"] = curves(y, probs)
    return out


def per_class_ranking(y: np.ndarray, probs: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """Per class: one-vs-rest ROC AUC, average precision (the area under its PR curve) and top-5
    recall (its videos with the class among the 5 most probable); nan where the class has no
    videos (or, for the AUC, nothing else)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y)
    k = min(5, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    auc, ap, top5 = [], [], []
    for c in range(probs.shape[1]):
        pos = y == c
        both = 0 < pos.sum() < len(y)
        auc.append(float(roc_auc_score(pos, probs[:, c])) if both else float("nan"))
        ap.append(float(average_precision_score(pos, probs[:, c])) if pos.any() else float("nan"))
        top5.append(float((top[pos] == c).any(axis=1).mean()) if pos.any() else float("nan"))
    return auc, ap, top5


def most_confused(confusion: list[list[int]], classes: list[str], n: int = 20) -> list[dict]:
    """The `n` largest off-diagonal cells: videos of `true` predicted as `predicted`, with their
    share of `true`'s videos; ties by class order."""
    cm = np.asarray(confusion, np.int64)
    rows = cm.sum(axis=1)
    cells = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": classes[i], "predicted": classes[j], "videos": v, "share": float(v / rows[i])}
            for v, i, j in cells[:n]]


def confusion_order(confusion: list[list[int]]) -> list[int]:
    """An order of the classes that puts classes confused with each other next to each other:
    hierarchical clustering (average linkage) of the symmetrised, row-normalised confusions with
    scipy's optimal leaf ordering. Classes nobody confuses keep their relative order at the end."""
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    cm = np.asarray(confusion, float)
    n = len(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    np.fill_diagonal(norm, 0)
    sim = (norm + norm.T) / 2
    linked = np.flatnonzero(sim.sum(axis=1) > 0)
    if len(linked) < 3:
        return [*linked.tolist(), *[i for i in range(n) if i not in set(linked.tolist())]]
    sub = sim[np.ix_(linked, linked)]
    dist = 1 - sub / sub.max()
    np.fill_diagonal(dist, 0)
    z = linkage(squareform(dist, checks=False), method="average")
    order = linked[leaves_list(optimal_leaf_ordering(z, squareform(dist, checks=False)))].tolist()
    return order + [i for i in range(n) if i not in set(order)]


def curves(y: np.ndarray, probs: np.ndarray, points: int = 101) -> dict:
    """Micro-averaged ROC and precision-recall curves (every video x class decision pooled), on a
    fixed grid of `points` so a 101-class run stores 2 x 101 numbers per curve, not millions."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.asarray(y)
    if len(y) == 0:
        return {}
    onehot = np.zeros_like(probs, dtype=bool)
    onehot[np.arange(len(y)), y] = True
    grid = np.linspace(0, 1, points)
    fpr, tpr, _ = roc_curve(onehot.ravel(), probs.ravel())
    precision, recall, _ = precision_recall_curve(onehot.ravel(), probs.ravel())
    order = np.argsort(recall, kind="stable")
    # precision at each recall: the best precision at that recall or beyond (the interpolated PR curve)
    best = np.maximum.accumulate(precision[order][::-1])[::-1]
    return {"roc": {"fpr": grid.tolist(), "tpr": np.interp(grid, fpr, tpr).tolist()},
            "pr": {"recall": grid.tolist(), "precision": np.interp(grid, recall[order], best).tolist()}}


def subset_accuracy(y: np.ndarray, probs: np.ndarray, keep: np.ndarray) -> float:
    """Top-1 accuracy over the rows where `keep` is true (nan when none)."""
    keep = np.asarray(keep, bool)
    return float((probs[keep].argmax(axis=1) == np.asarray(y)[keep]).mean()) if keep.any() else float("nan")


def summary(values: list[float]) -> dict:
    """Mean and (population) standard deviation of fold results."""
    a = np.asarray(values, float)
    return {"mean": float(a.mean()), "std": float(a.std()), "folds": len(a), "values": [float(v) for v in a]}
