"""Cross-validation of a head (`har cv`): every leave-one-group-out fold (25 on UCF50) or the
official splits 1-3, each fold a run of its own (resumable, up to date on rerun) under the cv
folder, and the mean +- std of their test metrics in cv.json.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline import lineage
from trainers import data, metrics, rundir
from trainers.head_task import RunConfig, feature_store_for, train_head

FOLDS = ("logo", "official")


@dataclass
class CVResult:
    out: Path
    folds: list[dict]
    summary: dict


def cv(cfg: RunConfig, folds: str, on_fold: Callable[[dict], None] | None = None) -> CVResult:
    """Train the head on every fold (leave-one-group-out, or the official splits 1-3); each fold is
    a run (resumable, up to date on rerun) under the cv directory; mean +- std of test metrics."""
    if folds not in FOLDS:
        raise ValueError(f"--folds {folds!r} is not supported; allowed: {', '.join(FOLDS)}")
    cfg.train.validate()
    path = feature_store_for(cfg.features, cfg.dataset, cfg.backbone).absolute()
    fs = data.open_view(path, "features")  # its splits and fingerprint; each fold's run reads the features
    prefix = "logo" if folds == "logo" else "official"
    names = sorted(n for n in fs.splits if n.startswith(prefix))
    if not names:
        have = ", ".join(data.split_names(fs))
        why = "it has no groups" if folds == "logo" else "its dataset has no official splits (UCF101 and HMDB51 do)"
        raise ValueError(f"--folds {folds}: {path.name} has no such splits ({why}); its splits: {have}")
    fp = lineage.fingerprint({"train": replace(cfg.train, split=None).fingerprint_dict(), "features": fs.fingerprint,
                              "folds": folds})
    out = Path(cfg.out) if cfg.out else Path("runs") / f"cv-{cfg.train.head}-{folds}-{fp[:10]}"
    with rundir.claimed(out, "cv", inputs=[path]):
        return _cv(cfg, path, names, folds, out, on_fold)


def _cv(cfg: RunConfig, path: Path, names: list[str], folds: str, out: Path,
        on_fold: Callable[[dict], None] | None) -> CVResult:
    rows = []
    for name in names:
        res = train_head(replace(cfg, features=path, dataset=None, out=out / name,
                                 train=replace(cfg.train, split=name)))
        t = res.summary["test"]
        row = {"fold": name, "test_videos": t["videos"], "top1": t["top1"], "top5": t["top5"],
               "f1_macro": t["f1_macro"], "up_to_date": res.up_to_date}
        if "reversed_pairs_top1" in t:
            row["reversed_pairs_top1"] = t["reversed_pairs_top1"]
        rows.append(row)
        if on_fold:
            on_fold(row)
    keys = [k for k in ("top1", "top5", "f1_macro", "reversed_pairs_top1") if k in rows[0]]
    summary = {"head": cfg.train.head, "features": str(path), "folds": folds,
               **{k: metrics.summary([r[k] for r in rows if not np.isnan(r[k])]) for k in keys}}
    rundir.write_json(out / "cv.json", {"summary": summary, "folds": rows})
    return CVResult(out.absolute(), rows, summary)

