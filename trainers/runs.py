"""A run: one head trained on one feature store and split, in its own directory.

    runs/<head>-<split>-<fingerprint>/
        config.json  lineage.json  last.pt  best.pt  history.json  metrics.json
        report.md  curves.png  confusion.{png,csv}  per_class.{png,csv}

The fingerprint covers the training config and the feature store's fingerprint: the same
command again finds its finished run and does nothing; an interrupted one resumes from last.pt.
`metrics.json` is written last: a directory with it is a finished run.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline import lineage, store
from pipeline.synth import reversed_classes
from trainers import data, distributed, heads, loop, metrics, report

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    train: loop.TrainConfig
    features: Path | None = None     # the feature store; or
    dataset: str | None = None       # the latest feature store made for this dataset
    backbone: str | None = None      # ... with this backbone (default: the latest of any)
    out: Path | None = None          # run directory; default runs/<head>-<split>-<fingerprint[:10]>
    ram_limit: int | None = None     # bytes of features kept in RAM; above it they are memory-mapped


@dataclass
class RunResult:
    run_dir: Path
    up_to_date: bool
    summary: dict
    warnings: list[str]


def feature_store_for(features: Path | None, dataset: str | None, backbone: str | None = None) -> Path:
    if (features is None) == (dataset is None):
        raise ValueError("give exactly one of --features PATH or --dataset NAME")
    if features is not None:
        return Path(features)
    return store.latest_store(dataset, "features" if backbone is None else f"features-{backbone}")


def evaluate(task: loop.Task, model, videos: np.ndarray, device, cfg: loop.LoopConfig, dataset: str | None) -> dict:
    """Every metric of `videos` (clips averaged per video); on the synthetic set also the accuracy
    on its reversed-order class pairs."""
    probs = task.predict(model, videos, device, cfg)
    y = task.labels[videos]
    m = metrics.classification(y, probs, task.classes)
    pairs = reversed_classes(task.classes) if dataset == "synthetic" else []
    if pairs:
        keep = np.isin(np.asarray(task.classes)[y], pairs)
        m["reversed_pairs_top1"] = metrics.subset_accuracy(y, probs, keep)
    return m


def _split_info(split: data.Split) -> dict:
    return {"name": split.name, "train": int(len(split.train)), "val": int(len(split.val)),
            "test": int(len(split.test)), "leakage": split.leakage, "val_carved_from_train": split.carved_val}


def warnings_for(split: data.Split, fs: data.FeatureSet) -> list[str]:
    out = []
    if split.leakage > 0:
        out.append(f"split {split.name!r} leaks groups: {split.leakage:.0%} of its test videos have a clip of the same "
                   "group in train (near-duplicates), so its accuracy is inflated; the group-disjoint split has none")
    if not fs.attrs.get("pretrained", True):
        out.append(f"features of {fs.path.name} come from a RANDOMLY initialised {fs.attrs.get('backbone')} "
                   "(no ImageNet weights were available): fine for checking the chain, not for real accuracy")
    if (~fs.ok).any():
        out.append(f"{int((~fs.ok).sum())} videos failed extraction and are in no split: "
                   + ", ".join(fs.failed()[:5]) + (" ..." if (~fs.ok).sum() > 5 else ""))
    return out


def model_card(fs: data.FeatureSet) -> dict:
    """What `har predict` needs to turn a video into this run's input the way the store did."""
    a = fs.attrs
    return {"recipe": a["recipe"], "backbone": a["backbone"], "weights": a["weights"],
            "resize": a.get("resize", "weights"), "classes": fs.classes, "frames": fs.frames, "dim": fs.dim}


@dataclass
class Job:
    """One training run, whatever is trained: everything `execute` needs."""
    name: str                   # head or video model: the run directory's prefix
    cfg: loop.LoopConfig        # its split already resolved
    task: loop.Task
    split: data.Split
    store: Path                 # the feature or frame store trained on
    fingerprint: str            # of that store
    inputs: dict                # lineage inputs
    describe: str               # one line for the report: what on what
    extra: dict                 # summary fields of this kind of run
    card: dict | None = None    # what `har predict` needs
    failed: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def execute(job: Job, out: Path | None, on_epoch: Callable[[dict], None] | None = None,
            stop_after: int | None = None) -> RunResult:
    """Run `job` in its directory: up to date if finished with the same fingerprint, resumed if
    interrupted, else trained; then evaluated and reported."""
    fp = lineage.fingerprint({"train": job.cfg.fingerprint_dict(), "split": job.split.name, "store": job.fingerprint,
                              "schema": 1})
    run_dir = (Path(out) if out else Path("runs") / f"{job.name}-{job.split.name}-{fp[:10]}").absolute()
    warns = list(job.warnings)
    done = run_dir / "metrics.json"
    if done.exists():
        old = json.loads(done.read_text())
        if old.get("fingerprint") == fp:
            return RunResult(run_dir, True, old, warns)
        if out is not None:
            raise ValueError(f"--out {run_dir} holds another run (different config or data); "
                             "choose another directory or remove it")
    run_dir.mkdir(parents=True, exist_ok=True)
    main = distributed.world().main  # under torchrun, rank 0 alone writes
    if main:
        (run_dir / "config.json").write_text(json.dumps({"store": str(job.store), **job.cfg.as_dict()}, indent=2,
                                                        default=str))
        lin = {"fingerprint": fp, "inputs": job.inputs, "params": job.cfg.as_dict(), "split": _split_info(job.split),
               "versions": lineage.versions(), "created": lineage.now(), "predict": job.card}
        (run_dir / "lineage.json").write_text(json.dumps(lin, indent=2, default=str))
    fit = loop.fit(job.cfg, job.task, job.split, run_dir, fp, on_epoch=on_epoch, stop_after=stop_after)
    if not main:
        return RunResult(run_dir, False, {}, [])
    (run_dir / "history.json").write_text(json.dumps(fit.history, indent=2))
    if stop_after is not None and fit.history and len(fit.history) < job.cfg.epochs and not fit.stopped_early:
        return RunResult(run_dir, False, {"interrupted_after": len(fit.history)}, warns)
    device = loop.resolve_device(job.cfg.device)
    model = loop.load_best(job.task.build(job.cfg, None), run_dir, device)
    val = job.split.val if len(job.split.val) else job.split.train
    dataset = job.extra.get("dataset")
    summary = {"fingerprint": fp, "model": job.name, "describe": job.describe, **job.extra,
               "config": job.cfg.as_dict(), "split": _split_info(job.split), "failed_videos": list(job.failed),
               "best_epoch": fit.best_epoch, "best_val_acc": fit.best_val_acc, "epochs_run": len(fit.history),
               "stopped_early": fit.stopped_early, "train_seconds": sum(h["seconds"] for h in fit.history),
               "device": str(device), "precision": loop.precision_of(job.cfg, device),
               "val": evaluate(job.task, model, val, device, job.cfg, dataset),
               "test": evaluate(job.task, model, job.split.test, device, job.cfg, dataset)}
    report.write(run_dir, summary, fit.history, job.task.classes)
    done.write_text(json.dumps(summary, indent=2, default=str))
    return RunResult(run_dir, False, summary, warns)


def train_head(cfg: RunConfig, on_epoch: Callable[[dict], None] | None = None,
               stop_after: int | None = None) -> RunResult:
    cfg.train.validate()
    path = feature_store_for(cfg.features, cfg.dataset, cfg.backbone).absolute()
    fs = data.load(path, cfg.ram_limit)
    split = data.make_split(fs, cfg.train.split)
    pretrained = bool(fs.attrs.get("pretrained", True))
    job = Job(name=cfg.train.head, cfg=replace(cfg.train, split=split.name), task=loop.FeatureTask(fs), split=split,
              store=path, fingerprint=fs.fingerprint,
              inputs={"features_store": str(path), "features_fingerprint": fs.fingerprint,
                      "features_lineage": fs.attrs.get("lineage")},
              describe=f"head `{cfg.train.head}` on `{path}` (backbone {fs.attrs.get('backbone')}, "
                       f"{'ImageNet' if pretrained else 'RANDOM'} weights)",
              extra={"features": str(path), "features_fingerprint": fs.fingerprint, "dataset": fs.attrs.get("dataset"),
                     "backbone": fs.attrs.get("backbone"), "pretrained": pretrained},
              card=model_card(fs), failed=tuple(fs.failed()), warnings=tuple(warnings_for(split, fs)))
    return execute(job, cfg.out, on_epoch, stop_after)


def load_run(run_dir: Path) -> tuple[loop.LoopConfig, dict]:
    """(training config, lineage) of a run directory: a TrainConfig for a head run, an E2EConfig
    for a video-model run; ValueError when it is not a finished run."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists() or not (run_dir / "best.pt").exists():
        raise ValueError(f"{run_dir} is not a finished har run (no config.json / best.pt); "
                         "`har train-head` or `har train-e2e` makes one")
    raw = json.loads((run_dir / "config.json").read_text())
    raw.pop("store", None)
    lin = json.loads((run_dir / "lineage.json").read_text())
    if "model" in raw:
        from trainers.e2e import E2EConfig  # e2e builds on this module

        return E2EConfig(**raw), lin
    raw["head_options"] = heads.HeadConfig(**raw["head_options"])
    return loop.TrainConfig(**raw), lin


def evaluate_run(run_dir: Path, role: str = "test") -> dict:
    """Recompute a split part's metrics from best.pt and the store the run trained on."""
    if role not in data.SPLIT_ROLES:
        raise ValueError(f"--split {role!r} is not supported; allowed: {', '.join(data.SPLIT_ROLES)}")
    cfg, lin = load_run(run_dir)
    inputs = lin["inputs"]
    if "frames_store" in inputs:
        from trainers import clips, e2e

        path, recorded = Path(inputs["frames_store"]), inputs["frames_fingerprint"]
        source = clips.open_store(path)
        task, fingerprint = e2e.ClipTask(source, cfg), source.attrs["lineage"]["fingerprint"]
    else:
        path, recorded = Path(inputs["features_store"]), inputs["features_fingerprint"]
        source = data.load(path)
        task, fingerprint = loop.FeatureTask(source), source.fingerprint
    try:
        if fingerprint != recorded:
            raise store.StoreError(f"{path} changed since run {Path(run_dir).name} was trained (fingerprint "
                                   f"{fingerprint[:12]} != {recorded[:12]}); train again")
        split = data.make_split(source, cfg.split)
        videos = {"train": split.train, "val": split.val, "test": split.test}[role]
        device = loop.resolve_device(cfg.device)
        model = loop.load_best(task.build(cfg, None), Path(run_dir), device)
        metrics = evaluate(task, model, videos, device, cfg, source.attrs.get("dataset"))
    finally:
        if hasattr(task, "close"):  # a clip task's loader workers
            task.close()
    return {"split": split.name, "part": role, **metrics}


# ---- cross-validation -------------------------------------------------------------------------------

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
    path = feature_store_for(cfg.features, cfg.dataset, cfg.backbone).absolute()
    fs = data.load(path, cfg.ram_limit)
    prefix = "logo" if folds == "logo" else "official"
    names = sorted(n for n in fs.splits if n.startswith(prefix))
    if not names:
        have = ", ".join(data.split_names(fs))
        why = "it has no groups" if folds == "logo" else "its dataset has no official splits (UCF101 and HMDB51 do)"
        raise ValueError(f"--folds {folds}: {path.name} has no such splits ({why}); its splits: {have}")
    fp = lineage.fingerprint({"train": replace(cfg.train, split=None).fingerprint_dict(), "features": fs.fingerprint,
                              "folds": folds})
    out = Path(cfg.out) if cfg.out else Path("runs") / f"cv-{cfg.train.head}-{folds}-{fp[:10]}"
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
    (out / "cv.json").write_text(json.dumps({"summary": summary, "folds": rows}, indent=2))
    return CVResult(out.absolute(), rows, summary)

