"""A run's report: CSV tables, PNG figures (matplotlib, no display needed) and report.md that
shows them all. Reads nothing but the metrics and history it is given; every file is written
beside its place and renamed into it (pipeline.core.files.replace_atomically), so a full disk leaves neither
half a file nor a temporary one."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from pipeline.core.files import replace_atomically
from trainers.runs.rundir import write_text


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


PER_CLASS_COLUMNS = ["class", "precision", "recall", "f1", "top5", "auc", "ap", "support"]


def write_csvs(run_dir: Path, m: dict, classes: list[str]) -> None:
    """per_class.csv (one row per class, plain numbers: sort it in any spreadsheet), confusion.csv
    (rows true, columns predicted, in class order) and most_confused.csv."""
    def per_class(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=PER_CLASS_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(m["per_class"])

    def confusion(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["true \\ predicted", *classes])
            for c, row in zip(classes, m["confusion"]):
                w.writerow([c, *row])

    def pairs(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["true", "predicted", "videos", "share"])
            w.writeheader()
            w.writerows(m.get("most_confused", []))

    replace_atomically(run_dir / "per_class.csv", per_class)
    replace_atomically(run_dir / "confusion.csv", confusion)
    replace_atomically(run_dir / "most_confused.csv", pairs)


def save_figure(fig, path: Path) -> None:
    """Save `fig` as PNG into `path` and close it (also when the disk is full)."""
    try:
        # bbox tight: nothing is clipped, whatever the length of a title or a class name
        replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))
    finally:
        pyplot().close(fig)


def plot_curves(history: list[dict], path: Path) -> None:
    plt = pyplot()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    a.plot(ep, [h["val_loss"] for h in history], label="val")
    a.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    b.plot(ep, [h["train_acc"] for h in history], label="train")
    b.plot(ep, [h["val_acc"] for h in history], label="val (clean view, video level)")
    b.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def _label_size(n: int) -> float:
    return 7 if n <= 30 else 6 if n <= 60 else 5


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    """Row-normalised confusion matrix with classes ordered so confusions sit together
    (metrics.confusion_order); counts written in the cells up to 30 classes; legible to 101."""
    from trainers.runs.metrics import confusion_order

    plt = pyplot()
    order = confusion_order(confusion)
    cm = np.asarray(confusion, float)[np.ix_(order, order)]
    names = [classes[i] for i in order]
    n = len(names)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.32 * n + 2) if n <= 30 else 0.15 * n + 3
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true")
    ax.set_title("test confusion matrix, row-normalised\n(classes ordered so that confusions sit together; "
                 + ("numbers are videos)" if n <= 30 else "counts in confusion.csv)"), fontsize=9)
    ax.set_xticklabels(names, rotation=90, fontsize=_label_size(n))
    ax.set_yticklabels(names, fontsize=_label_size(n))
    if n > 30:  # a faint grid every 10 classes keeps rows and columns findable
        for k in range(10, n, 10):
            ax.axhline(k - 0.5, color="grey", linewidth=0.3)
            ax.axvline(k - 0.5, color="grey", linewidth=0.3)
    else:
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, int(v), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    save_figure(fig, path)


def plot_per_class(per_class: list[dict], path: Path) -> None:
    """Precision / recall / F1 per class as a heatmap (the seed study's classification-report figure)."""
    plt = pyplot()
    cols = ("precision", "recall", "f1")
    n = len(per_class)
    table = np.array([[r[c] for c in cols] for r in per_class])
    fig, ax = plt.subplots(figsize=(4.8, max(3.0, (0.25 if n <= 30 else 0.16) * n + 1.5)))
    im = ax.imshow(table, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set(xticks=range(3), yticks=range(n))
    ax.set_title("per-class report (test)", fontsize=9)
    ax.set_xticklabels(cols)
    ax.set_yticklabels([f"{r['class']} ({r['support']})" for r in per_class], fontsize=_label_size(n))
    for (i, j), v in np.ndenumerate(table):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6 if n <= 60 else 5)
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, path)


def plot_roc_pr(m: dict, path: Path) -> None:
    """Micro-averaged ROC and precision-recall curves of the test videos (metrics.curves)."""
    plt = pyplot()
    c = m.get("curves") or {}
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    if c:
        a.plot(c["roc"]["fpr"], c["roc"]["tpr"], label=f"micro-average (macro AUC {fmt(m.get('roc_auc_ovr_macro'))})")
        b.plot(c["pr"]["recall"], c["pr"]["precision"],
               label=f"micro-average (mean AP {fmt(float(np.nanmean([r['ap'] for r in m['per_class']])))})")
    a.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    a.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one vs rest)", xlim=(0, 1), ylim=(0, 1.02))
    b.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is a else "lower left", fontsize=8)
    save_figure(fig, path)


def fmt(v, digits: int = 4, missing: str = "n/a") -> str:
    """A table cell: floats to `digits` places, None and nan as `missing`, anything else as text."""
    if v is None:
        return missing
    if isinstance(v, float):
        return missing if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def write(run_dir: Path, summary: dict, history: list[dict], classes: list[str]) -> Path:
    """Every table and figure of a finished run, and report.md linking them."""
    test = summary["test"]
    write_csvs(run_dir, test, classes)
    plot_curves(history, run_dir / "curves.png")
    plot_confusion(test["confusion"], classes, run_dir / "confusion.png")
    plot_per_class(test["per_class"], run_dir / "per_class.png")
    plot_roc_pr(test, run_dir / "roc_pr.png")
    keys = ("top1", "top5", "precision_macro", "recall_macro", "f1_macro", "precision_weighted", "recall_weighted",
            "f1_weighted", "roc_auc_ovr_macro", "reversed_pairs_top1", "videos")
    lines = [f"# Run {run_dir.name}", "",
             f"{summary['describe'][0].upper()}{summary['describe'][1:]}, "
             f"split `{summary['split']['name']}`: {summary['split']['train']} train / {summary['split']['val']} val / "
             f"{summary['split']['test']} test videos.", ""]
    if summary["split"]["leakage"] > 0:
        lines += [f"**Warning: {summary['split']['leakage']:.0%} of the test videos have a clip of the same group "
                  "in train (near-duplicates); the accuracy below is inflated. Use a group-disjoint split.**", ""]
    if summary.get("failed_videos"):
        lines += [f"{len(summary['failed_videos'])} videos failed extraction and are in no split: "
                  + ", ".join(summary["failed_videos"][:10]), ""]
    lines += [f"Best epoch {summary['best_epoch']} of {len(history)} (val top-1 {fmt(summary['best_val_acc'])})"
              + (", stopped early" if summary["stopped_early"] else "") + f"; {summary['train_seconds']:.1f} s.", "",
              "| metric | val | test |", "|---|---|---|"]
    lines += [f"| {k} | {fmt(summary['val'].get(k, float('nan')))} | {fmt(test.get(k, float('nan')))} |"
              for k in keys if k in test]
    lines += ["", "## Training curves", "", "![curves](curves.png)", "", "## Confusion matrix (test)", "",
              "![confusion](confusion.png) — [CSV](confusion.csv)", ""]
    pairs = test.get("most_confused", [])
    if pairs:
        lines += ["### Most confused pairs (test)", "", "| true | predicted as | videos | share of true |",
                  "|---|---|---|---|"]
        lines += [f"| {p['true']} | {p['predicted']} | {p['videos']} | {p['share']:.0%} |" for p in pairs[:10]]
        lines += ["", "All of them: [most_confused.csv](most_confused.csv).", ""]
    lines += ["## ROC and precision-recall (test)", "", "![ROC and PR](roc_pr.png)", "",
              "## Per-class report (test)", "",
              "![per class](per_class.png) — [CSV](per_class.csv) (sortable: one row per class)", "",
              "| class | precision | recall | F1 | top-5 | AUC | AP | support |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {fmt(r.get('top5'))} | "
              f"{fmt(r.get('auc'))} | {fmt(r.get('ap'))} | {r['support']} |" for r in test["per_class"]]
    lines += ["", f"Run fingerprint `{summary['fingerprint']}` (config, split and the store's fingerprint). "
              "Config: `config.json`; lineage: `lineage.json`.", ""]
    path = run_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path
