"""A run's report: CSV tables, PNG figures (matplotlib, no display needed) and report.md that
shows them all. Reads nothing but the metrics and history it is given; every file is written
beside its place and renamed into it (pipeline.files.replace_atomically), so a full disk leaves neither
half a file nor a temporary one."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from pipeline.files import replace_atomically
from trainers.rundir import write_text


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_csvs(run_dir: Path, m: dict, classes: list[str]) -> None:
    def per_class(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["class", "precision", "recall", "f1", "support"])
            w.writeheader()
            w.writerows(m["per_class"])

    def confusion(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["true \\ predicted", *classes])
            for c, row in zip(classes, m["confusion"]):
                w.writerow([c, *row])

    replace_atomically(run_dir / "per_class.csv", per_class)
    replace_atomically(run_dir / "confusion.csv", confusion)


def _savefig(fig, path: Path) -> None:
    """Save `fig` as PNG into `path` and close it (also when the disk is full)."""
    try:
        replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        _plt().close(fig)


def plot_curves(history: list[dict], path: Path) -> None:
    plt = _plt()
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
    _savefig(fig, path)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    plt = _plt()
    cm = np.asarray(confusion, float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.35 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
           title="confusion matrix (row-normalised; numbers are videos)")
    ax.set_xticklabels(classes, rotation=90, fontsize=7)
    ax.set_yticklabels(classes, fontsize=7)
    if len(classes) <= 30:
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, int(v), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _savefig(fig, path)


def plot_per_class(per_class: list[dict], path: Path) -> None:
    """Precision / recall / F1 per class as a heatmap (the seed study's classification-report figure)."""
    plt = _plt()
    cols = ("precision", "recall", "f1")
    table = np.array([[r[c] for c in cols] for r in per_class])
    fig, ax = plt.subplots(figsize=(4.5, max(3.0, 0.25 * len(per_class) + 1.5)))
    im = ax.imshow(table, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set(xticks=range(3), yticks=range(len(per_class)), title="per-class report")
    ax.set_xticklabels(cols)
    ax.set_yticklabels([f"{r['class']} ({r['support']})" for r in per_class], fontsize=7)
    for (i, j), v in np.ndenumerate(table):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _savefig(fig, path)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def write(run_dir: Path, summary: dict, history: list[dict], classes: list[str]) -> Path:
    """Every table and figure of a finished run, and report.md linking them."""
    test = summary["test"]
    write_csvs(run_dir, test, classes)
    plot_curves(history, run_dir / "curves.png")
    plot_confusion(test["confusion"], classes, run_dir / "confusion.png")
    plot_per_class(test["per_class"], run_dir / "per_class.png")
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
    lines += [f"Best epoch {summary['best_epoch']} of {len(history)} (val top-1 {_fmt(summary['best_val_acc'])})"
              + (", stopped early" if summary["stopped_early"] else "") + f"; {summary['train_seconds']:.1f} s.", "",
              "| metric | val | test |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(summary['val'].get(k, float('nan')))} | {_fmt(test.get(k, float('nan')))} |"
              for k in keys if k in test]
    lines += ["", "## Training curves", "", "![curves](curves.png)", "", "## Confusion matrix (test)", "",
              "![confusion](confusion.png) — [CSV](confusion.csv)", "", "## Per-class report (test)", "",
              "![per class](per_class.png) — [CSV](per_class.csv)", "",
              "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
              for r in test["per_class"]]
    lines += ["", f"Run fingerprint `{summary['fingerprint']}` (config, split and the store's fingerprint). "
              "Config: `config.json`; lineage: `lineage.json`.", ""]
    path = run_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path
