"""A run: one model trained on one store and split, in its own folder, whatever the model.

    runs/<model>-<split>-<fingerprint>/
        config.json  lineage.json  last.pt  best.pt  history.json  metrics.json
        report.md  curves.png  confusion.{png,csv}  per_class.{png,csv}

A kind of task (trainers.training.tasks: a head on features, a video model on clips) describes one run as
a `Job`; `execute` runs any job: the fingerprint covers the training config, the split and the
store's fingerprint, so the same command again finds its finished run and does nothing and an
interrupted one resumes from last.pt. `metrics.json` is written last: a folder with it is a
finished run. A run holds `.lock` (rundir.claimed) while it writes, so a second har into the
same folder is refused. `load_run` and `evaluate_run` read any run back through the task
registry; config.json and lineage.json are untrusted input (every key checked), and so is
metrics.json wherever it is read back (`read_metrics`: compare, cv, serve, an up-to-date rerun).
"""
from __future__ import annotations

import logging
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

from pipeline.core import lineage
from pipeline.stores import store
from trainers.training import checkpoint, config, distributed, loop, tasks
from trainers.data import views
from trainers.runs import rundir
from trainers.runs.tracker import check_tracker, open_tracker

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    up_to_date: bool
    summary: dict
    warnings: list[str]


def split_info(split: views.Split) -> dict:
    return {"name": split.name, "train": int(len(split.train)), "val": int(len(split.val)),
            "test": int(len(split.test)), "leakage": split.leakage, "val_carved_from_train": split.carved_val}


def warnings_for(split: views.Split, fs: views.StoreView) -> list[str]:
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
    task: tasks.Task
    split: views.Split
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
    an input, the current folder or a folder of other files: pipeline.core.outputs) and locked for the
    whole run, so a second har writing it is refused with one line. `tracker` names the dashboard
    the epochs go to, live (trainers.runs.tracker)."""
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
            return RunResult(run_dir, True, _finished(job, run_dir), warns)
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


def _finished(job: Job, run_dir: Path) -> dict:
    """The summary of a finished run, read back as untrusted input: metrics.json checked
    (`read_metrics`) and best.pt loaded as every reader loads it (weights_only=True, into this run's
    model), so "up to date" is never said over a run that predict, evaluate or export would refuse.
    A best.pt that is not har's is not har's to replace: RunError, and nothing is trained over it."""
    summary = read_metrics(run_dir)
    best = run_dir / "best.pt"
    remedy = (f"restore it, or delete {run_dir} and run the same command again (har does not train over a file "
              "it did not write)")
    checkpoint.load_weights(job.task.build(job.cfg, None), checkpoint.read(best, "cpu", remedy), best, remedy)
    return summary


def _train_and_report(job: Job, run_dir: Path, fp: str, on_epoch: Callable[[dict], None] | None,
                      stop_after: int | None, warns: list[str], board) -> RunResult:
    main, done = board is not None, run_dir / "metrics.json"
    # videos (clips, for a video model) an epoch trains on; a joint task's mixing rule may repeat some
    per_epoch = job.task.epoch_videos(job.cfg, job.split.train)

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
    measure = job.task.evaluate  # a joint task: per dataset
    summary = {"fingerprint": fp, "model": job.name, "describe": job.describe, **job.extra,
               "config": job.cfg.as_dict(), "split": split_info(job.split), "failed_videos": list(job.failed),
               "best_epoch": fit.best_epoch, "best_val_acc": fit.best_val_acc, "epochs_run": len(fit.history),
               "stopped_early": fit.stopped_early, "train_seconds": sum(h["seconds"] for h in fit.history),
               "device": str(device), "precision": loop.precision_of(job.cfg, device),
               "val": measure(model, val, device, job.cfg),
               "test": measure(model, job.split.test, device, job.cfg)}
    job.task.report(run_dir, summary, fit.history)  # a joint task: one per dataset and the table of them
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
    later = config.added_later(cls)  # settings newer than the run: it ran with their neutral value
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


# every evaluation's summary numbers (metrics.classification; a joint run's means), each a rate from 0
# to 1 or NaN (undefined: no test video of a class, one class only)
RATES = ("top1", "top5", "precision_macro", "recall_macro", "f1_macro", "precision_weighted", "recall_weighted",
         "f1_weighted", "roc_auc_ovr_macro")
PER_CLASS_RATES = ("f1", "precision", "recall", "top5", "auc", "ap")  # f1 needed (compare), the others when there


def read_metrics(run_dir: Path) -> dict:
    """The metrics.json of a finished run, checked key by key wherever har reads it back (compare,
    cv and an up-to-date rerun's summary, serve's run list): the parsed document, or RunError (a
    ValueError) naming the file, the key and what is allowed. A folder without metrics.json is not
    a finished run (RunError too). Keys har does not read back (confusion, curves, config) are not
    checked.

    Checked: fingerprint, model (text); split (an object with its name; its sizes whole numbers);
    best_epoch, epochs_run (whole numbers), train_seconds (seconds); val and test: videos and every
    rate of RATES, reversed_pairs_top1 when there, per_class rows each naming its class once with
    its f1, and a joint run's (`"joint": true`) metrics per dataset under `datasets`; alone (joint):
    each dataset's own run's rates; describe, features, frames, dataset, backbone: text or null.

    For example a metrics.json holding `"split": "groups"` is the one line `RUN/metrics.json: key
    split is 'groups'; allowed: an object with the split's name and sizes; train the run again or
    restore the file`; a caller that can go on without a run's metrics (serve) catches ValueError.
    """
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise rundir.RunError(f"{run_dir} is not finished (no metrics.json): run its training command again to "
                              "finish it")
    m = rundir.read_json(path, RUN_REMEDY)
    count = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a whole number >= 0")
    seconds = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf,
               "a number of seconds >= 0")
    rate = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and (math.isnan(v) or 0 <= v <= 1),
            "a number from 0 to 1, or NaN")
    text = (lambda v: isinstance(v, str), "text")
    text_or_null = (lambda v: v is None or isinstance(v, str), "text or null")

    def bad(name: str, value, allowed: str) -> rundir.RunError:
        return rundir.RunError(f"{path}: key {name} is {value!r:.60}; allowed: {allowed}; {RUN_REMEDY}")

    def check(obj: dict, key: str, name: str, kind: tuple, needed: bool = True) -> None:
        ok, allowed = kind
        if key not in obj:
            if needed:
                raise rundir.RunError(f"{path}: key {name} is missing; allowed: {allowed}; {RUN_REMEDY}")
        elif not ok(obj[key]):
            raise bad(name, obj[key], allowed)

    def evaluation(obj: dict, key: str, name: str, joint: bool | None) -> None:
        """obj[key]: one evaluation; joint True: with each dataset's under `datasets`, None: those
        checked when there, False: a dataset's own (its `datasets`, never written, not read)."""
        check(obj, key, name, (lambda v: isinstance(v, dict), "an object of metrics (videos, top1, top5, ...)"))
        ev = obj[key]
        check(ev, "videos", f"{name}.videos", count)
        for k in RATES:
            check(ev, k, f"{name}.{k}", rate)
        check(ev, "reversed_pairs_top1", f"{name}.reversed_pairs_top1", rate, needed=False)
        check(ev, "per_class", f"{name}.per_class", (lambda v: isinstance(v, list), "a list of per-class rows"),
              needed=False)
        classes: set[str] = set()
        for i, row in enumerate(ev.get("per_class", [])):
            at = f"{name}.per_class[{i}]"
            if not isinstance(row, dict):
                raise bad(at, row, "an object with its class and metrics")
            check(row, "class", f"{at}.class", (lambda v: isinstance(v, str) and v not in classes,
                                                f"a class name (text), each once in {name}.per_class"))
            classes.add(row["class"])
            for k in PER_CLASS_RATES:
                check(row, k, f"{at}.{k}", rate, needed=k == "f1")
            check(row, "support", f"{at}.support", count, needed=False)
        if joint or (joint is None and "datasets" in ev):
            check(ev, "datasets", f"{name}.datasets", (lambda v: isinstance(v, dict) and len(v) > 0,
                                                       "an object of each dataset's metrics (a joint run)"))
            for d in ev["datasets"]:
                evaluation(ev["datasets"], d, f"{name}.datasets.{d}", False)

    check(m, "fingerprint", "fingerprint", text)
    check(m, "model", "model", text)
    check(m, "split", "split", (lambda v: isinstance(v, dict), "an object with the split's name and sizes"))
    check(m["split"], "name", "split.name", text)
    for k in ("train", "val", "test"):
        check(m["split"], k, f"split.{k}", count, needed=False)
    check(m["split"], "leakage", "split.leakage", rate, needed=False)
    for k in ("best_epoch", "epochs_run"):
        check(m, k, k, count)
    check(m, "train_seconds", "train_seconds", seconds)
    check(m, "best_val_acc", "best_val_acc", rate, needed=False)
    for k in ("stopped_early", "pretrained", "joint"):
        check(m, k, k, (lambda v: isinstance(v, bool), "true or false"), needed=False)
    for k in ("describe", "features", "frames", "dataset", "backbone"):
        check(m, k, k, text_or_null, needed=False)
    for k in ("val", "test"):
        evaluation(m, k, k, True if m.get("joint") else None)
    check(m, "alone", "alone", (lambda v: isinstance(v, dict), "an object of each dataset's own run"), needed=False)
    for d, own in m.get("alone", {}).items():
        check(m["alone"], d, f"alone.{d}", (lambda v: isinstance(v, dict), "an object with its run's rates"))
        for k in ("top1", "f1_macro", "val_top1"):
            check(own, k, f"alone.{d}.{k}", rate, needed=False)
    return m


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
    if role not in views.SPLIT_ROLES:
        raise ValueError(f"--split {role!r} is not supported; allowed: {', '.join(views.SPLIT_ROLES)}")
    cfg, lin, kind = load_run(run_dir)
    path, recorded = tasks.store_of(lin["inputs"], kind)
    task = kind.open(path, cfg, Path(run_dir))
    try:
        if task.view.fingerprint != recorded:
            raise store.StoreError(f"{path} changed since run {Path(run_dir).name} was trained (fingerprint "
                                   f"{task.view.fingerprint[:12]} != {recorded[:12]}); train again")
        split = task.make_split(cfg.split)
        videos = {"train": split.train, "val": split.val, "test": split.test}[role]
        device = loop.resolve_device(cfg.device)
        model = loop.load_best(task.build(cfg, None), Path(run_dir), device)
        result = task.evaluate(model, videos, device, cfg)
    finally:
        task.close()  # a clip task's loader workers
    return {"split": split.name, "part": role, **result}
