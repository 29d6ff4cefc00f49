"""A run: one model trained on one store and split, in its own folder, whatever the model.

    runs/<model>-<split>-<fingerprint>/
        config.json  lineage.json  last.pt  best.pt  history.json  metrics.json
        report.md  curves.png  confusion.{png,csv}  per_class.{png,csv}

A kind of task (trainers.tasks: a head on features, a video model on clips) describes one run as
a `Job`; `execute` runs any job: the fingerprint covers the training config, the split and the
store's fingerprint, so the same command again finds its finished run and does nothing and an
interrupted one resumes from last.pt. `metrics.json` is written last: a folder with it is a
finished run. A run holds `.lock` (rundir.claimed) while it writes, so a second har into the
same folder is refused. `load_run` and `evaluate_run` read any run back through the task
registry; config.json and lineage.json are untrusted input (every key checked).
"""
from __future__ import annotations

import logging
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

import numpy as np

from pipeline import lineage, store
from trainers import data, distributed, loop, metrics, report, rundir, tasks
from trainers.tracker import check_tracker, open_tracker

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    up_to_date: bool
    summary: dict
    warnings: list[str]


def evaluate(task: loop.Task, model, videos: np.ndarray, device, cfg: loop.LoopConfig) -> dict:
    """Every metric of `videos` (clips averaged per video); where the store's dataset has classes
    paired with their time-reversed twin (its attrs say which), also the accuracy on those."""
    probs = task.probabilities(model, videos, device, cfg)
    y = task.labels[videos]
    m = metrics.classification(y, probs, task.classes)
    pairs = task.view.reversed_pairs
    if pairs:
        keep = np.isin(np.asarray(task.classes)[y], pairs)
        m["reversed_pairs_top1"] = metrics.subset_accuracy(y, probs, keep)
    return m


def split_info(split: data.Split) -> dict:
    return {"name": split.name, "train": int(len(split.train)), "val": int(len(split.val)),
            "test": int(len(split.test)), "leakage": split.leakage, "val_carved_from_train": split.carved_val}


def warnings_for(split: data.Split, fs: data.StoreView) -> list[str]:
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
    more_stores: tuple[Path, ...] = ()   # a joint run's other stores (inputs its folder must not be)


def fingerprint(job: Job) -> str:
    """A run's fingerprint: its training config (settings that change results), split and store."""
    return lineage.fingerprint({"train": job.cfg.fingerprint_dict(), "split": job.split.name, "store": job.fingerprint,
                                "schema": 1})


def execute(job: Job, out: Path | None, on_epoch: Callable[[dict], None] | None = None,
            stop_after: int | None = None, tracker: str = "tensorboard") -> RunResult:
    """Run `job` in its directory: up to date if finished with the same fingerprint, resumed if
    interrupted, else trained; then evaluated and reported. The directory is checked first (never
    an input, the current folder or a folder of other files: pipeline.outputs) and locked for the
    whole run, so a second har writing it is refused with one line. `tracker` names the dashboard
    the epochs go to, live (trainers.tracker)."""
    check_tracker(tracker)  # a bad name or a missing optional library is refused before anything is written
    fp = fingerprint(job)
    run_dir = (Path(out) if out else Path("runs") / f"{job.name}-{job.split.name}-{fp[:10]}").absolute()
    if not distributed.world().main:  # under torchrun rank 0 checks, locks and writes; the others train
        return _execute(job, run_dir, fp, out is not None, on_epoch, stop_after, "none")
    with rundir.claimed(run_dir, "run", inputs=[job.store, *job.more_stores]):
        return _execute(job, run_dir, fp, out is not None, on_epoch, stop_after, tracker)


def _execute(job: Job, run_dir: Path, fp: str, named: bool, on_epoch: Callable[[dict], None] | None,
             stop_after: int | None, tracker: str) -> RunResult:
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
        lin = {"fingerprint": fp, "inputs": job.inputs, "params": job.cfg.as_dict(), "split": split_info(job.split),
               "versions": lineage.versions(), "created": lineage.now(), "predict": job.card}
        rundir.write_json(run_dir / "lineage.json", lin)
    board = open_tracker(tracker, run_dir, {**job.cfg.as_dict(), "model": job.name, "split": job.split.name}, fp) \
        if main else None
    failed = True
    try:
        res = _train_and_report(job, run_dir, fp, on_epoch, stop_after, warns, board)
        failed = False
        return res
    finally:
        if board is not None:
            board.close(failed)
            warns += board.warnings


def _train_and_report(job: Job, run_dir: Path, fp: str, on_epoch: Callable[[dict], None] | None,
                      stop_after: int | None, warns: list[str], board) -> RunResult:
    main, done = board is not None, run_dir / "metrics.json"
    # videos (clips, for a video model) an epoch trains on; a joint task's mixing rule may repeat some
    count = getattr(job.task, "epoch_videos", None)
    per_epoch = count(job.cfg, job.split.train) if count is not None else len(job.split.train)

    def epoch_done(row: dict) -> None:
        board.epoch(row, per_epoch / max(row["seconds"], 1e-9))
        if on_epoch:
            on_epoch(row)

    fit = loop.fit(job.cfg, job.task, job.split, run_dir, fp, on_epoch=epoch_done if main else on_epoch,
                   stop_after=stop_after)
    if not main:
        return RunResult(run_dir, False, {}, [])
    rundir.write_json(run_dir / "history.json", fit.history)
    if stop_after is not None and fit.history and len(fit.history) < job.cfg.epochs and not fit.stopped_early:
        return RunResult(run_dir, False, {"interrupted_after": len(fit.history)}, warns)
    device = loop.resolve_device(job.cfg.device)
    model = loop.load_best(job.task.build(job.cfg, None), run_dir, device)
    val = job.split.val if len(job.split.val) else job.split.train
    measure = getattr(job.task, "evaluate", None) or (lambda *a: evaluate(job.task, *a))  # a joint task: per dataset
    summary = {"fingerprint": fp, "model": job.name, "describe": job.describe, **job.extra,
               "config": job.cfg.as_dict(), "split": split_info(job.split), "failed_videos": list(job.failed),
               "best_epoch": fit.best_epoch, "best_val_acc": fit.best_val_acc, "epochs_run": len(fit.history),
               "stopped_early": fit.stopped_early, "train_seconds": sum(h["seconds"] for h in fit.history),
               "device": str(device), "precision": loop.precision_of(job.cfg, device),
               "val": measure(model, val, device, job.cfg),
               "test": measure(model, job.split.test, device, job.cfg)}
    if hasattr(job.task, "report"):
        job.task.report(run_dir, summary, fit.history)
    else:
        report.write(run_dir, summary, fit.history, job.task.classes)
    rundir.write_json(done, summary)  # the run is finished whatever the dashboard does next
    board.finish(summary, run_dir / "confusion.png")
    return RunResult(run_dir, False, summary, warns)


RUN_REMEDY = "train the run again or restore the file"


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
    later = getattr(cls, "ADDED_LATER", {})  # settings newer than the run: it ran with their neutral value
    missing = [k for k in names if k not in raw and k not in later]
    if missing:
        raise rundir.RunError(f"{path}: key {prefix}{missing[0]} is missing; {RUN_REMEDY}")
    values = {}
    for k in names:
        if k not in raw:
            values[k] = later[k]
            continue
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


def load_run(run_dir: Path) -> tuple[loop.LoopConfig, dict, tasks.TaskKind]:
    """(training config, lineage, kind of task) of a run folder; ValueError when it is not a
    finished run, and RunError naming the file and the key when config.json or lineage.json is
    damaged or foreign."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists() or not (run_dir / "best.pt").exists():
        raise ValueError(f"{run_dir} is not a finished har run (no config.json / best.pt); "
                         "`har train-head` or `har train-e2e` makes one")
    path, lpath = run_dir / "config.json", run_dir / "lineage.json"
    raw = rundir.read_json(path, RUN_REMEDY)
    raw.pop("store", None)
    lin = rundir.read_json(lpath, RUN_REMEDY)
    kind = tasks.for_inputs(lin.get("inputs"))
    if kind is None:
        names = "; or ".join(" and ".join(k.inputs) for k in tasks.kinds())
        raise rundir.RunError(f"{lpath}: key inputs must name the store trained on ({names}); {RUN_REMEDY}")
    cfg = config_from(kind.config, raw, path)
    try:
        cfg.check_values()
    except ValueError as e:
        raise rundir.RunError(f"{path}: {e}; {RUN_REMEDY}") from None
    if lin.get("predict") is not None and not isinstance(lin["predict"], dict):
        raise rundir.RunError(f"{lpath}: key predict is not an object; {RUN_REMEDY}")
    return cfg, lin, kind


def evaluate_run(run_dir: Path, role: str = "test") -> dict:
    """Recompute a split part's metrics from best.pt and the store the run trained on."""
    if role not in data.SPLIT_ROLES:
        raise ValueError(f"--split {role!r} is not supported; allowed: {', '.join(data.SPLIT_ROLES)}")
    cfg, lin, kind = load_run(run_dir)
    path, recorded = tasks.store_of(lin["inputs"], kind)
    task = kind.open(path, cfg, Path(run_dir))
    try:
        if task.view.fingerprint != recorded:
            raise store.StoreError(f"{path} changed since run {Path(run_dir).name} was trained (fingerprint "
                                   f"{task.view.fingerprint[:12]} != {recorded[:12]}); train again")
        split = task.make_split(cfg.split) if hasattr(task, "make_split") else data.make_split(task.view, cfg.split)
        videos = {"train": split.train, "val": split.val, "test": split.test}[role]
        device = loop.resolve_device(cfg.device)
        model = loop.load_best(task.build(cfg, None), Path(run_dir), device)
        result = task.evaluate(model, videos, device, cfg) if hasattr(task, "evaluate") else evaluate(task, model, videos, device, cfg)
    finally:
        task.close()  # a clip task's loader workers
    return {"split": split.name, "part": role, **result}
