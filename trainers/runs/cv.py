"""Cross-validation of a head (`har cv`): every leave-one-group-out fold (25 on UCF50) or the
official splits 1-3, each fold a run of its own (resumable, up to date on rerun) under the cv
folder, and the mean +- std of their test metrics in cv.json.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.core import lineage
from trainers.data import views
from pipeline.core.registry import Registry
from trainers.runs import metrics, rundir
from trainers.runs.report import fmt
from trainers.training.head_task import HeadRunConfig, feature_store_for, train_head

FOLDS = Registry.of("folds", {"logo": "leave one group out", "official": "the dataset's official splits"})


@dataclass
class CVResult:
    out: Path
    folds: list[dict]
    summary: dict


METRICS = ("top1", "top5", "precision_macro", "recall_macro", "f1_macro", "roc_auc_ovr_macro", "reversed_pairs_top1")


def markdown(summary: dict, rows: list[dict], keys: list[str]) -> str:
    """cv.md: one row per fold, then mean +- std of every metric (population std over the folds)."""
    lines = [f"# Cross-validation: {summary['head']}, {summary['folds']} folds", "",
             f"Features `{summary['features']}`; each fold is a run folder here.", "",
             "| fold | test videos | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    lines += [f"| {r['fold']} | {r['test_videos']} | " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    lines += ["| **mean +- std** | | " + " | ".join(
        f"**{summary[k]['mean']:.4f} +- {summary[k]['std']:.4f}**" if summary[k]["folds"] else "n/a" for k in keys)
        + " |"]
    return "\n".join(lines) + "\n"


def cv(cfg: HeadRunConfig, folds: str, on_fold: Callable[[dict], None] | None = None) -> CVResult:
    """Train the head on every fold (leave-one-group-out, or the official splits 1-3); each fold is
    a run (resumable, up to date on rerun) under the cv directory; mean +- std of test metrics."""
    if folds not in FOLDS:
        raise ValueError(f"--folds {folds!r} is not supported; allowed: {', '.join(FOLDS)}")
    cfg = replace(cfg, train=cfg.train.resolved())
    cfg.train.validate()
    path = feature_store_for(cfg.features, cfg.dataset, cfg.backbone).absolute()
    fs = views.open_view(path, "features")  # its splits and fingerprint; each fold's run reads the features
    prefix = "logo" if folds == "logo" else "official"
    names = sorted(n for n in fs.splits if n.startswith(prefix))
    if not names:
        have = ", ".join(views.split_names(fs))
        why = "it has no groups" if folds == "logo" else "its dataset has no official splits (UCF101 and HMDB51 do)"
        raise ValueError(f"--folds {folds}: {path.name} has no such splits ({why}); its splits: {have}")
    fp = lineage.fingerprint({"train": replace(cfg.train, split=None).fingerprint_dict(), "features": fs.fingerprint,
                              "folds": folds})
    out = Path(cfg.out) if cfg.out else Path("runs") / f"cv-{cfg.train.head}-{folds}-{fp[:10]}"
    with rundir.claimed(out, "cv", inputs=[path]):
        return _cv(cfg, path, names, folds, out, on_fold)


def _cv(cfg: HeadRunConfig, path: Path, names: list[str], folds: str, out: Path,
        on_fold: Callable[[dict], None] | None) -> CVResult:
    rows = []
    for name in names:
        res = train_head(replace(cfg, features=path, dataset=None, out=out / name,
                                 train=replace(cfg.train, split=name)))
        t = res.summary["test"]
        row = {"fold": name, "test_videos": t["videos"], **{k: t[k] for k in METRICS if k in t},
               "up_to_date": res.up_to_date}
        rows.append(row)
        if on_fold:
            on_fold(row)
    keys = [k for k in METRICS if k in rows[0]]
    summary = {"head": cfg.train.head, "features": str(path), "folds": folds,
               **{k: metrics.summary([r[k] for r in rows if k in r and not np.isnan(r[k])]) for k in keys}}
    rundir.write_json(out / "cv.json", {"summary": summary, "folds": rows})
    rundir.write_text(out / "cv.md", markdown(summary, rows, keys))
    return CVResult(out.absolute(), rows, summary)

