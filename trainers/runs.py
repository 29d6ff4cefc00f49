"""A run: one head trained on one feature store and split, in its own directory.

    runs/<head>-<split>-<fingerprint>/
        config.json  lineage.json  last.pt  best.pt  history.json  metrics.json
        report.md  curves.png  confusion.{png,csv}  per_class.{png,csv}

The fingerprint covers the training config and the feature store's fingerprint: the same
command again finds its finished run and does nothing; an interrupted one resumes from last.pt.
`metrics.json` is written last: a directory with it is a finished run. A run holds `.lock`
(rundir.claimed) while it writes, so a second har into the same directory is refused; config.json
and lineage.json are read back as untrusted input (every key checked, `load_run`).
"""
from __future__ import annotations

import logging
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path

import numpy as np

from pipeline import lineage, store
from pipeline.synth import reversed_classes
from trainers import data, distributed, heads, limits, loop, metrics, report, rundir

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
    interrupted, else trained; then evaluated and reported. The directory is checked first (never
    an input, the current folder or a folder of other files: pipeline.outputs) and locked for the
    whole run, so a second har writing it is refused with one line."""
    fp = lineage.fingerprint({"train": job.cfg.fingerprint_dict(), "split": job.split.name, "store": job.fingerprint,
                              "schema": 1})
    run_dir = (Path(out) if out else Path("runs") / f"{job.name}-{job.split.name}-{fp[:10]}").absolute()
    if not distributed.world().main:  # under torchrun rank 0 checks, locks and writes; the others train
        return _execute(job, run_dir, fp, out is not None, on_epoch, stop_after)
    with rundir.claimed(run_dir, "run", inputs=[job.store]):
        return _execute(job, run_dir, fp, out is not None, on_epoch, stop_after)


def _execute(job: Job, run_dir: Path, fp: str, named: bool, on_epoch: Callable[[dict], None] | None,
             stop_after: int | None) -> RunResult:
    warns = list(job.warnings)
    done = run_dir / "metrics.json"
    if done.exists():
        old = rundir.read_json(done, "delete it and run the same command again to finish the run")
        if old.get("fingerprint") == fp:
            return RunResult(run_dir, True, old, warns)
        if named:
            raise ValueError(f"--out {run_dir} holds another run (different config or data); "
                             "choose another directory or remove it")
    run_dir.mkdir(parents=True, exist_ok=True)
    main = distributed.world().main  # under torchrun, rank 0 alone writes
    if main:
        rundir.write_json(run_dir / "config.json", {"store": str(job.store), **job.cfg.as_dict()})
        lin = {"fingerprint": fp, "inputs": job.inputs, "params": job.cfg.as_dict(), "split": _split_info(job.split),
               "versions": lineage.versions(), "created": lineage.now(), "predict": job.card}
        rundir.write_json(run_dir / "lineage.json", lin)
    fit = loop.fit(job.cfg, job.task, job.split, run_dir, fp, on_epoch=on_epoch, stop_after=stop_after)
    if not main:
        return RunResult(run_dir, False, {}, [])
    rundir.write_json(run_dir / "history.json", fit.history)
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
    rundir.write_json(done, summary)
    return RunResult(run_dir, False, summary, warns)


def check_head_fits(cfg: loop.TrainConfig, dim: int, classes: int, frames: int, device, where: str = "",
                    batch: int | None = None) -> None:
    """ValueError, before anything is allocated, when the head cannot fit in `device`'s available
    memory: to train it (`batch` given: 16 bytes a parameter plus a batch) or to use it (4 bytes a
    parameter). `where` prefixes the message (the file the config came from)."""
    o = cfg.head_options
    if batch is None:
        params = heads.param_count(cfg.head, dim, classes, frames, o)
        need, doing = params * limits.BYTES_PER_PARAM, f"loading the {cfg.head} head ({params:,} parameters)"
    else:
        params, need = heads.training_bytes(cfg.head, dim, classes, frames, o, batch)
        doing = f"training the {cfg.head} head ({params:,} parameters; weights, gradients, Adam moments and a batch)"
    limits.check_fits(need, device, f"{where}--hidden {o.hidden} --layers {o.layers}: {doing}",
                      "choose a smaller --hidden, --layers or --batch-size" if batch
                      else "use a machine with more memory, or restore config.json if it was changed")


def train_head(cfg: RunConfig, on_epoch: Callable[[dict], None] | None = None,
               stop_after: int | None = None) -> RunResult:
    cfg.train.validate()
    path = feature_store_for(cfg.features, cfg.dataset, cfg.backbone).absolute()
    fs = data.load(path, cfg.ram_limit)
    split = data.make_split(fs, cfg.train.split)
    check_head_fits(cfg.train, fs.dim, len(fs.classes), fs.frames, loop.resolve_device(cfg.train.device),
                    batch=cfg.train.batch_size)
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


RUN_REMEDY = "train the run again or restore the file"
# what a run's lineage.json names as its input: (store key, fingerprint key) of a head run, of a video-model run
INPUT_KEYS = (("features_store", "features_fingerprint"), ("frames_store", "frames_fingerprint"))


def _accepts(hint, value) -> bool:
    """Is `value` (from JSON) of the plain type `hint` (int, float, str, bool, or a union with None)?"""
    for t in typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,):
        if (t is type(None) and value is None) or (t is bool and isinstance(value, bool)) \
                or (t is str and isinstance(value, str)) \
                or (t in (int, float) and isinstance(value, int) and not isinstance(value, bool)) \
                or (t is float and isinstance(value, float)):
            return True
    return False


def config_from(cls, raw: dict, path: Path, prefix: str = ""):
    """The frozen config `cls` from a JSON object: every field there, no other key, each of its
    type (nested configs too); RunError naming the file and the key otherwise."""
    names = [f.name for f in fields(cls)]
    hints = typing.get_type_hints(cls)
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise rundir.RunError(f"{path}: unknown key {prefix}{unknown[0]}; allowed: {', '.join(names)}; {RUN_REMEDY}")
    missing = [k for k in names if k not in raw]
    if missing:
        raise rundir.RunError(f"{path}: key {prefix}{missing[0]} is missing; {RUN_REMEDY}")
    values = {}
    for k in names:
        hint, v = hints[k], raw[k]
        if is_dataclass(hint):
            if not isinstance(v, dict):
                raise rundir.RunError(f"{path}: {prefix}{k} is {v!r:.60}, not an object; {RUN_REMEDY}")
            values[k] = config_from(hint, v, path, f"{prefix}{k}.")
        elif _accepts(hint, v):
            values[k] = v
        else:
            raise rundir.RunError(f"{path}: {prefix}{k} is {v!r:.60}; allowed: {hint}; {RUN_REMEDY}")
    return cls(**values)


def load_run(run_dir: Path) -> tuple[loop.LoopConfig, dict]:
    """(training config, lineage) of a run directory: a TrainConfig for a head run, an E2EConfig
    for a video-model run; ValueError when it is not a finished run, and RunError naming the file
    and the key when config.json or lineage.json is damaged or foreign."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists() or not (run_dir / "best.pt").exists():
        raise ValueError(f"{run_dir} is not a finished har run (no config.json / best.pt); "
                         "`har train-head` or `har train-e2e` makes one")
    path = run_dir / "config.json"
    raw = rundir.read_json(path, RUN_REMEDY)
    raw.pop("store", None)
    if "model" in raw:
        from trainers.e2e import E2EConfig  # e2e builds on this module

        cfg = config_from(E2EConfig, raw, path)
    else:
        cfg = config_from(loop.TrainConfig, raw, path)
    try:
        cfg.check_values()
    except ValueError as e:
        raise rundir.RunError(f"{path}: {e}; {RUN_REMEDY}") from None
    lpath = run_dir / "lineage.json"
    lin = rundir.read_json(lpath, RUN_REMEDY)
    inputs = lin.get("inputs")
    kind = next((pair for pair in INPUT_KEYS if isinstance(inputs, dict)
                 and all(isinstance(inputs.get(k), str) for k in pair)), None)
    if kind is None:
        raise rundir.RunError(f"{lpath}: key inputs must name the store trained on ({' and '.join(INPUT_KEYS[0])}, "
                              f"or {' and '.join(INPUT_KEYS[1])}); {RUN_REMEDY}")
    if (kind == INPUT_KEYS[1]) != ("model" in raw):
        raise rundir.RunError(f"{lpath}: inputs names a {kind[0].split('_')[0]} store but {path.name} is a "
                              f"{'video-model' if 'model' in raw else 'head'} config; {RUN_REMEDY}")
    if lin.get("predict") is not None and not isinstance(lin["predict"], dict):
        raise rundir.RunError(f"{lpath}: key predict is not an object; {RUN_REMEDY}")
    return cfg, lin


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
        check_head_fits(cfg, source.dim, len(source.classes), source.frames, loop.resolve_device(cfg.device),
                        f"{Path(run_dir) / 'config.json'}: ")
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
    cfg.train.validate()
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
    with rundir.claimed(out, "cv", inputs=[path]):
        return _cv(cfg, path, fs, names, folds, out, on_fold)


def _cv(cfg: RunConfig, path: Path, fs: data.FeatureSet, names: list[str], folds: str, out: Path,
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

