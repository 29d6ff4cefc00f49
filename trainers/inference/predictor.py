"""A trained run as a predictor (`har predict`): any video file -> top-k classes, through the
run's own chain.

The run records what made its input (the recipe; for a head also the backbone, its weights with
sha256 and resize; for a video model its centre crop), so a video is decoded and sampled exactly
as the store's recipe did (clean view, every clip), encoded by the same backbone and scored by the
head, or cropped and scored by the video model; clip probabilities are averaged.

`predict(PredictJob)` is the whole command: the settings and files checked, the run loaded
(trainers.inference.loaded), every file classified (`classify`: here or on Dask workers), the
rows written to a CSV that replaces the old one only when every video is done.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.datasets import datasets
from pipeline.core import lineage
from pipeline.decoding import reader, video
from pipeline.decoding.recipe import Recipe
from trainers.training import loop
from trainers.runs import rundir, runner
from trainers.inference import loaded, timeline


logger = logging.getLogger(__name__)


@dataclass
class Predictor:
    """decode + sample as the store did -> `score` (K clips, T, H, W, 3) uint8 -> (K, C) logits."""
    run_dir: Path
    recipe: Recipe
    score: Callable[[np.ndarray], torch.Tensor]
    classes: list[str]
    device: torch.device
    config: loop.LoopConfig

    def __call__(self, path: Path, top: int = 5) -> dict:
        """{"video", "clips", "top": [{"class", "probability"}...]} or {"video", "error"} for a bad file."""
        try:
            samples = reader.read_video(Path(path), Path(path).name, self.recipe)
        except video.VideoError as e:
            return {"video": str(path), "error": str(e)}
        probs = self._probabilities([samples.frames])[0]
        return {"video": str(path), "clips": int(len(samples.frames)), "top": self._top(probs, top)}

    def predict(self, path: Path, top: int = 5, timing: timeline.Timing | None = None) -> dict:
        """One file of a batch: the whole video or its timeline; any failure becomes the result's
        "error" (a batch never stops on one file), never numbers."""
        try:
            return self(path, top) if timing is None else self.timeline(path, top, timing)
        except Exception as e:  # noqa: BLE001 - a file the decoder chokes on in a way not foreseen
            logger.warning("%s: %s", path, e, exc_info=logger.isEnabledFor(logging.INFO))
            return {"video": str(path), "error": f"{type(e).__name__}: {e}"}

    def _top(self, probs: np.ndarray, top: int) -> list[dict]:
        order = np.argsort(-probs, kind="stable")[:top]
        return [{"class": self.classes[i], "probability": float(probs[i])} for i in order]

    def _probabilities(self, batch: list[np.ndarray]) -> np.ndarray:
        """(B, K, T, H, W, 3) windows -> (B, C) probabilities, clip probabilities averaged."""
        k = batch[0].shape[0]
        video.check_stop()  # a server's client that left: no more scoring for it
        with torch.inference_mode(), loop.autocast(self.config, self.device):
            logits = self.score(np.concatenate(batch))
        return torch.softmax(logits.float(), dim=1).view(len(batch), k, -1).mean(1).cpu().numpy()

    def timeline(self, path: Path, top: int, timing: timeline.Timing, frames: int | None = None) -> dict:
        """Sliding windows over one video (trainers.inference.timeline): {"video", "fps", "duration", "window",
        "stride", "windows": [{"start", "end", "top"}], "segments": [{"label", "start", "end",
        "probability", "windows"}], "probabilities": (W, C) array (not JSON: popped by callers)}, or
        {"video", "error"}. `frames`: the frame count when the caller has counted it already."""
        n = frames
        for _attempt in range(2):  # as extract does: when decoding finds another count, plan again on it
            seen: dict = {}
            probs, batch, spans = [], [], []
            try:
                for s, e, frames in timeline.stream(Path(path), self.recipe, timing, seen, n):
                    batch.append(frames)
                    spans.append((s, e))
                    if len(batch) == timeline.BATCH:
                        probs.append(self._probabilities(batch))
                        batch = []
                if batch:
                    probs.append(self._probabilities(batch))
            except video.VideoError as e:
                return {"video": str(path), "error": str(e)}
            if seen["frames"] == seen["planned"]:
                break
            logger.info("%s: planned on %d frames, %d decode; planning again", path, seen["planned"], seen["frames"])
            n = seen["frames"]
        if not probs:
            return {"video": str(path), "error": f"no window decoded ({seen['frames']} frames)"}
        p = np.concatenate(probs)
        order = np.argsort([s for s, _ in spans], kind="stable")
        p, spans = p[order], [spans[i] for i in order]
        fps, times = seen["fps"], seen["times"]
        t0 = times.get(0, 0.0)  # a stream may start later than 0: the timeline starts at its first frame
        duration = max(0.0, seen["end"] - t0)
        starts = np.array([times.get(s, s / fps) - t0 for s, _ in spans])
        ends = np.array([min(times.get(e, seen["end"]) - t0, duration) for _, e in spans])
        best = p.argmax(1)
        labels = [self.classes[i] for i in best]
        return {"video": str(path), "fps": round(float(fps), 6), **({"fps_assumed": True} if seen["fps_assumed"] else {}),
                "frames": seen["frames"], "duration": round(duration, 3), "window": timing.window,
                "stride": timing.step,
                "windows": [{"start": round(float(a), 3), "end": round(float(b), 3), "top": self._top(q, top)}
                            for a, b, q in zip(starts, ends, p)],
                "segments": timeline.segments(starts, ends, labels, p[np.arange(len(p)), best], duration),
                "probabilities": p}


def load(run_dir: Path, device: str = "auto", labels: str | None = None) -> Predictor:
    """The predictor of a finished run: its model card checked, its model (and for a head the
    recorded backbone) loaded on `device` (auto: the run's own device setting). A joint run
    (trainers.training.joint) answers in the classes of dataset `labels`: its output layer alone."""
    run = loaded.load(run_dir)
    cfg, card = run.config, run.card
    if card.get("model", getattr(cfg, "model", None)) != getattr(cfg, "model", None):
        raise rundir.RunError(f"{Path(run_dir) / 'lineage.json'}: predict.model {card['model']!r} is not the model of "
                              f"config.json ({getattr(cfg, 'model', 'a head')!r}); {runner.RUN_REMEDY}")
    rows, classes = rows_of(card, labels, Path(run_dir))   # checked before the model loads
    dev = run.device(device)
    score = run.kind.scorer(run.run_dir, cfg, card, dev)
    if rows is None:
        return Predictor(run.run_dir, run.recipe, score, list(card["classes"]), dev, cfg)
    return Predictor(run.run_dir, run.recipe, lambda frames: score(frames)[:, rows], classes, dev, cfg)


def label_sets(run_dir: Path) -> list[str | None]:
    """The datasets whose labels a run gives: a joint run's datasets, else [None] (its own)."""
    _, lin, _ = runner.load_run(run_dir)
    sets = (lin.get("predict") or {}).get("datasets")
    return [d["name"] for d in sets] if isinstance(sets, list) and sets else [None]


# ---- many files: a folder tree, on Dask workers when asked --------------------------------------------

def find_videos(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The files to classify, in order, and notes on what was skipped. A file is taken as given; a
    folder is walked (sorted, hidden entries skipped, files with a video suffix; a link that leads
    outside the folder is not followed; a FIFO, socket or device is skipped: opening one may block).
    A missing path, or one given that is not a regular file or a folder: ValueError."""
    missing, special = [], []
    for p in map(Path, paths):
        try:
            st = p.stat()
        except (OSError, ValueError):  # ValueError: a NUL byte in the name
            missing.append(str(p))
            continue
        why = lineage.special_file(st)
        if why and not stat.S_ISDIR(st.st_mode):
            special.append(f"{p} is {why.removeprefix('not a regular file: ')}, not a regular file")
    if missing:
        raise ValueError(f"no such video file or folder: {', '.join(missing)}")
    if special:
        raise ValueError(f"{'; '.join(special)}; allowed: video files or folders")
    found: list[Path] = []
    notes: list[str] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
            continue
        for dirpath, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if f.startswith(".") or not f.lower().endswith(video.VIDEO_SUFFIXES):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), p).replace(os.sep, "/")
                try:
                    datasets.safe_rel(p, rel, f"{p} walk")
                except datasets.DatasetError as e:
                    notes.append(f"{e}; skipped")
                    continue
                try:
                    why = lineage.special_file((p / rel).stat())
                except OSError:
                    why = ""  # a dangling link: its row says why it failed
                if why:
                    notes.append(f"{p / rel}: {why}; skipped")
                    continue
                found.append(p / rel)
    return found, notes


@dataclass(frozen=True)
class PredictTask:
    """A few videos for one worker (picklable: the worker loads the run once and keeps it)."""
    run_dir: str
    device: str
    videos: tuple[str, ...]
    top: int
    timing: timeline.Timing | None = None
    labels: str | None = None          # a joint run: whose classes
    positions: tuple[int, ...] = ()    # each video's place among the files given (default 0, 1, ...)


@functools.lru_cache(maxsize=2)
def _loaded(run_dir: str, device: str, labels: str | None) -> Predictor:
    return load(Path(run_dir), device, labels)


def predict_task(task: PredictTask) -> list[tuple[int, dict]]:
    """Run on a Dask worker (or in this process): (position, result) of each of the task's videos."""
    p = _loaded(task.run_dir, task.device, task.labels)
    positions = task.positions or tuple(range(len(task.videos)))
    return [(i, p.predict(Path(v), task.top, task.timing)) for i, v in zip(positions, task.videos)]


def check_windows(files: list[Path], timing: timeline.Timing) -> None:
    """Every video's windows are long enough (timeline.check_window on its frame rate), checked
    before any is classified; a file that cannot be probed is left to fail in its own row."""
    for f in files:
        try:
            fps = video.probe(f).fps
        except Exception:  # noqa: BLE001 - unreadable: classify records why, in its row
            continue
        timeline.check_window(timing, fps, str(f))


def classify(model: Predictor, files: list[Path], top: int = 5, timing: timeline.Timing | None = None,
             folder: Path | None = None, on_result: Callable[[dict], None] | None = None, *,
             device: str = "auto", labels: str | None = None, workers: int | None = None,
             scheduler: str | None = None) -> list[dict]:
    """Every file's result, in the order given, each naming its video as given: rows are kept by
    position, never by a resolved path, so a file given twice (`v.avi v.avi`, `v.avi ../d/v.avi`,
    a link to it) is two rows. `on_result(row)` as each is done (any order). With `timing`, each
    video's timeline files go to `folder` (<stem>.timeline.*, the stems made unique by position:
    v, v_) and the row names them. In this process unless `workers` or `scheduler` is given (a Dask
    cluster: each worker loads the run once, from `device` and `labels` as `load` takes them); a
    worker that dies fails only its videos' rows."""
    rows: list[dict | None] = [None] * len(files)
    stems: list[str] = []
    for f in files:
        stem = f.stem
        while stem in stems:
            stem += "_"
        stems.append(stem)

    def take(i: int, r: dict) -> None:
        r = {**r, "video": str(files[i])}  # workers see absolute paths; the row says what the user gave
        probs = r.pop("probabilities", None)
        if probs is not None:
            r["files"] = timeline.write(folder, stems[i], r, probs, model.classes, top)
        rows[i] = r
        if on_result is not None:
            on_result(r)

    if workers is None and scheduler is None:
        for i, f in enumerate(files):
            take(i, model.predict(f, top, timing))
    else:
        from pipeline.core import cluster

        size = max(1, min(8, len(files) // (4 * (workers or 2))))
        tasks = [PredictTask(str(model.run_dir.resolve()), device, tuple(str(f.resolve()) for f in files[i:i + size]),
                             top, timing, labels, tuple(range(i, min(i + size, len(files)))))
                 for i in range(0, len(files), size)]

        def done(batch: list[tuple[int, dict]]) -> None:
            for i, r in batch:
                take(i, r)

        def lost(task: PredictTask, e: Exception) -> None:  # a worker died on these videos (or the run failed to load)
            for i in task.positions:
                take(i, {"video": str(files[i]), "error": f"the worker failed: {type(e).__name__}: {e}"})

        cluster.run_tasks(predict_task, tasks, done, scheduler=scheduler, workers=workers, on_error=lost)
    unanswered = [str(files[i]) for i, r in enumerate(rows) if r is None]
    if unanswered:
        raise RuntimeError(f"no result for {', '.join(unanswered[:5])}")  # a bug: every task answers or fails
    return rows


class CsvOut:
    """`har predict --csv FILE`: rows written as results arrive, into a temporary file beside FILE
    that replaces it when every video is done (an interrupted run leaves FILE as it was). An
    existing FILE is replaced only when it is har's own predict CSV (its header says so)."""

    def __init__(self, path: Path, top: int, windows: bool, inputs: list[Path]):
        self.path, self.top, self.windows = Path(path), top, windows
        p = self.path
        if p.is_dir():
            raise ValueError(f"--csv {p} is a folder; name a .csv file")
        if any(p.resolve() == Path(i).resolve() for i in inputs):
            raise ValueError(f"--csv {p} is one of the videos to classify; name a new .csv file")
        if p.suffix.lower() != ".csv":
            raise ValueError(f"--csv {p} does not end in .csv; allowed: a .csv file (new, or one har predict wrote)")
        if p.exists() or p.is_symlink():
            from pipeline.core.lineage import special_file

            if p.is_symlink() or special_file(p.stat()):  # a FIFO would block the read below
                raise ValueError(f"--csv {p} is a link or a special file; name a new .csv file")
            try:
                with open(p, newline="") as f:
                    first = f.readline(4096)
            except (OSError, UnicodeDecodeError):
                first = ""
            ours = tuple(",".join(timeline.csv_header(1, w)) for w in (False, True))  # either kind, any --top
            if not first.startswith(ours):
                raise ValueError(f"--csv {p} exists and is not a CSV of har predict; har only replaces its own "
                                 "output: choose a new file")
        if not p.parent.is_dir():
            raise ValueError(f"--csv {p}: no such folder {p.parent}")
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        self.tmp = Path(tmp)
        from pipeline.core.files import current_umask

        os.chmod(tmp, 0o666 & ~current_umask())  # as a plain open() would make it
        self.file = os.fdopen(fd, "w", newline="")
        import csv

        self.writer = csv.writer(self.file)
        self.writer.writerow(timeline.csv_header(top, windows))

    def add(self, result: dict) -> None:
        self.writer.writerows(timeline.csv_rows(result, self.top, self.windows))
        self.file.flush()

    def close(self, ok: bool) -> None:
        self.file.close()
        if ok:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


# ---- the whole command ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PredictJob:
    """`har predict`: what to classify, with which run, where the answers go (checked by `predict`)."""
    videos: tuple[Path, ...]        # video files as given, or folders walked for videos (find_videos)
    run_dir: Path                   # a finished run of `har train-head` or `har train-e2e`
    top: int = 5                    # classes listed per video (per window with `window`)
    window: float | None = None     # seconds: classify sliding windows and give a timeline instead
    stride: float | None = None     # seconds between window starts (None: half the window); needs `window`
    csv: Path | None = None         # one row per video (per window); replaced only when every video is done
    out: Path | None = None         # the timeline files' folder (None: RUN/timeline); needs `window`
    workers: int | None = None      # classify on a local Dask cluster of this many processes
    scheduler: str | None = None    # or on an existing Dask cluster (tcp://host:port)
    labels: str | None = None       # a joint run: whose classes to answer in, by dataset name
    device: str = "auto"            # auto: the run's own device setting


@dataclass(frozen=True)
class Prediction:
    rows: list[dict]                # one per file found, in order (`classify`'s rows)
    timing: timeline.Timing | None  # the windows, when a timeline was asked for
    csv: Path | None = None         # the CSV written, every row in it

    @property
    def failed(self) -> int:
        """Rows with an error: files that could not be classified."""
        return sum("error" in r for r in self.rows)


def predict(job: PredictJob, on_row: Callable[[dict, int, int], None] | None = None,
            on_note: Callable[[str], None] | None = None) -> Prediction:
    """`har predict` as one call. In order: the settings checked; the files found (`on_note(text)`
    for each one skipped, before anything else can fail); with a window, every video's windows
    checked before any is classified; the run loaded (checked before anything is written); the
    timeline folder made and marked; the CSV begun. Then every file classified (`classify`),
    `on_row(row, done, total)` as each is done, after its rows went into the CSV. The CSV replaces
    `job.csv` only when every video is done: any failure on the way leaves the old file as it was."""
    if job.top < 1:
        raise ValueError(f"--top {job.top} must be >= 1")
    if job.workers is not None and job.workers < 1:
        raise ValueError(f"--workers {job.workers} is out of range; allowed: >= 1")
    timing = None
    if job.window is not None:
        timing = timeline.Timing(job.window, job.stride)
        timing.validate()
    elif job.stride is not None:
        raise ValueError("--stride needs --window (the window's length in seconds)")
    elif job.out is not None:
        raise ValueError("--out is where --window writes its timeline files; add --window or drop --out")
    files, notes = find_videos(list(job.videos))
    for n in notes:
        if on_note is not None:
            on_note(n)
    if not files:
        raise ValueError(f"no video files in {', '.join(map(str, job.videos))}")
    if timing is not None:
        check_windows(files, timing)
    model = load(job.run_dir, job.device, job.labels)  # the run checked before anything is written
    folder = None
    if timing is not None:
        from pipeline.core import outputs

        where = job.out if job.out is not None else Path(job.run_dir) / "timeline"
        folder = outputs.marked_folder(where, "timeline", files)
    sheet = CsvOut(job.csv, job.top, timing is not None, files) if job.csv is not None else None
    ok, done = False, 0

    def take(row: dict) -> None:
        nonlocal done
        done += 1
        if sheet is not None:
            sheet.add(row)
        if on_row is not None:
            on_row(row, done, len(files))

    try:
        rows = classify(model, files, job.top, timing, folder, take, device=job.device, labels=job.labels,
                        workers=job.workers, scheduler=job.scheduler)
        ok = True
    finally:
        if sheet is not None:
            sheet.close(ok)  # the CSV replaced only now, every row written; else the old one stays
    return Prediction(rows, timing, job.csv)


# ---- a joint run's card (trainers.training.joint): which rows are whose classes -------------------------------

def safe_name(name, i: int) -> str:
    """A dataset's name as a run uses it in folder names (datasets/NAME, RUN-alone-NAME): letters,
    digits, '.', '_', '-', not starting with '.'; a store's attrs are not trusted to be a name."""
    text = re.sub(r"[^A-Za-z0-9._-]", "_", str(name or ""))[:64].lstrip(".")
    return text or f"d{i}"


def check_datasets(card: dict, path: Path) -> None:
    """A joint card's `datasets` (untrusted, from lineage.json): unique safe names, each with its
    classes exactly the card's classes at its rows, the rows tiling them in order; RunError otherwise."""
    sets, classes = card.get("datasets"), card.get("classes")
    bad = rundir.RunError(f"{path}: predict.datasets is not a list of datasets with their classes and rows; "
                          f"{runner.RUN_REMEDY}")
    if not isinstance(sets, list) or not sets or not isinstance(classes, list):
        raise bad
    at, names = 0, set()
    for d in sets:
        if not (isinstance(d, dict) and isinstance(d.get("name"), str) and safe_name(d["name"], 0) == d["name"]
                and d["name"] not in names and isinstance(d.get("classes"), list) and isinstance(d.get("rows"), list)
                and len(d["rows"]) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in d["rows"])
                and d["rows"] == [at, at + len(d["classes"])] and classes[at:at + len(d["classes"])] == d["classes"]):
            raise bad
        names.add(d["name"])
        at += len(d["classes"])
    if at != len(classes):
        raise bad


def rows_of(card: dict, labels: str | None, run_dir: Path) -> tuple[slice | None, list[str] | None]:
    """The output rows and classes of dataset `labels` in a joint run's card; (None, None) for a
    run on one dataset. ValueError naming the datasets when a joint run gets no or an unknown name."""
    sets = card.get("datasets")
    if not sets:
        if labels is not None:
            raise ValueError(f"--labels {labels!r}: {run_dir} was trained on one dataset; --labels is for joint runs")
        return None, None
    check_datasets(card, Path(run_dir) / "lineage.json")
    names = [d["name"] for d in sets]
    if labels not in names:
        raise ValueError(f"{run_dir} was trained jointly on {', '.join(names)}: choose whose labels with --labels NAME"
                         + (f" (not {labels!r})" if labels is not None else ""))
    d = sets[names.index(labels)]
    return slice(*d["rows"]), list(d["classes"])
