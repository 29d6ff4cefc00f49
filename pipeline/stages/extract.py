"""`har extract`: videos -> frame store, as a Dask graph over batches of videos. `configure` makes
the stage's config from the command's words (a named recipe, fields overridden, the format).

Plan, then execute:
1. index the dataset and fingerprint its sources (hashes reused when size and mtime match);
2. compare with the store already there: same fingerprint -> nothing to do;
3. plan batches of videos; a video whose source is unchanged since the last store is copied
   from it, the rest are decoded (pipeline.decoding.reader);
4. run the batches (each writes its own shard and chunks; status last) into a working store
   beside the target, which a killed run resumes;
5. when every video is done, swap the working store in (Zarr: rename; HDF5: convert).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.decoding import augment, video
from pipeline.datasets import datasets
from pipeline.stores import inputs, latest, store, swap
from pipeline.core import lineage, location, outputs, resources
from pipeline.decoding.reader import read_video
from pipeline.decoding.recipe import Recipe, sample_axes
from pipeline.core.cluster import cpu_count, run_tasks
from pipeline.core.resources import human

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractConfig:
    dataset: str
    recipe: Recipe
    root: Path | None = None        # default $HAR_HOME/datasets/<dataset>
    out: Path | None = None         # the store itself; default a versioned path under $HAR_HOME
    format: str = "zarr"            # zarr | hdf5
    workers: int | None = None      # local cluster processes; default all cores
    threads: int | None = None      # decoder/resize threads per task; default cores // workers locally,
                                    # FFmpeg's own choice on an existing cluster or in-process
    scheduler: str | None = None    # None local cluster, "synchronous", or tcp://host:port
    force: bool = False             # rebuild the store (also one made with another recipe at --out)
    verify: bool = False            # hash every source again, and read the store against its checksums


def configure(dataset: str, recipe: str = "default", size: str | None = None, fmt: str | None = None,
              out: Path | None = None, **settings) -> tuple[ExtractConfig, list[str]]:
    """An ExtractConfig from `har extract`'s words, checked, and the notes a user should read: the
    named recipe (data_manifest.yaml) with single fields overridden (None keeps the recipe's;
    `size` as PX or HxW), the format from `fmt` or `out`'s suffix, and the dataset's own mirror
    default (ssv2: left and right are part of its labels, so its views are not mirrored unless
    `hflip=True`). `settings`: Recipe fields and ExtractConfig fields by name."""
    from pipeline.decoding import recipe as R

    datasets.DATASETS.get(dataset)
    fmt = store.choose_format(fmt, out)
    fields = set(Recipe.__dataclass_fields__)
    overrides = {k: v for k, v in settings.items() if k in fields}
    if size is not None:
        overrides["height"], overrides["width"] = R.parse_size(size)
    unmirrored = overrides.get("hflip") is None and datasets.manifest()["datasets"].get(dataset, {}).get("hflip") is False
    if unmirrored:
        overrides["hflip"] = False
    r = R.named_recipe(recipe, **overrides)
    r.validate()
    notes = []
    if unmirrored and r.views:
        notes.append(f"{dataset}: the augmented views are not mirrored (left and right are part of its labels); "
                     "--hflip mirrors them")
    if (r.rotate or r.vflip or not r.hflip) and r.views == 0 and not unmirrored:
        notes.append("--rotate, --vflip and --no-hflip apply to augmented views; with --views 0 there are none "
                     "(train-e2e on this store still follows its --no-hflip)")
    rest = {k: v for k, v in settings.items() if k not in fields}
    return ExtractConfig(dataset=dataset, recipe=r, out=out, format=fmt, **rest), notes


@dataclass
class ExtractResult:
    store: Path
    up_to_date: bool = False
    decoded: int = 0
    reused: int = 0
    ok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    frames: int = 0
    frames_decoded: int = 0    # source frames given to the decoder over the videos decoded ok this run, each
                               # counted once (a second pass over a file and the augmented views add none)
    frames_in_source: int = 0  # source frames of the videos decoded ok this run
    decoded_ok: int = 0        # videos decoded ok this run (whose source frames those are)
    decoded_twice: int = 0     # of those, videos decoded a second time (their header's frame count was wrong)
    per_video: tuple[int, int, int] = (0, 0, 0)  # clips, views (the clean one too), T: stored frames a video
    store_bytes: int = 0
    source_bytes: int = 0
    seconds: float = 0.0
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """What the run did, in a few lines for a person."""
        if self.up_to_date:
            return f"up to date: {self.store} ({self.ok} videos ok, {len(self.failed)} failed; checked in {self.seconds:.1f} s)"
        ratio = self.store_bytes / self.source_bytes if self.source_bytes else float("nan")
        return (f"store:   {self.store}\n"
                f"videos:  {self.ok} ok, {len(self.failed)} failed ({self.decoded} decoded, {self.reused} reused unchanged)\n"
                f"frames:  {self.frames_line()}\n"
                f"bytes:   {human(self.store_bytes)} = {ratio:.2f}x the {human(self.source_bytes)} of source videos\n"
                f"time:    {self.seconds:.1f} s")

    def frames_line(self) -> str:
        """Stored frames, and how much of the sources the decoder was given, counted apart: stored
        frames count every clip and view of every ok video; source frames are those of the videos
        decoded ok this run, each counted once however many views it fills and whether its file was
        decoded twice, so the share is never above 100 %. E.g.

            32 (decoded 38 of 38 source frames, 100%)
                     stored: 4 videos x 1 clip x 2 views x 4 frames
                     source: the 4 videos decoded this run, each frame counted once
        """
        clips, views, t = self.per_video
        stored = (f"stored: {self.ok} videos x {clips} clip{'s' * (clips != 1)} x {views} view{'s' * (views != 1)} "
                  f"x {t} frames")
        if not self.frames_in_source:
            return f"{self.frames:,}\n         {stored}"
        twice = f" ({self.decoded_twice} decoded twice: a wrong frame count in the header)" if self.decoded_twice else ""
        return (f"{self.frames:,} (decoded {self.frames_decoded:,} of {self.frames_in_source:,} source frames, "
                f"{self.frames_decoded / self.frames_in_source:.0%})\n         {stored}\n"
                f"         source: the {self.decoded_ok} videos decoded this run, each frame counted once{twice}")


MAX_PARALLEL = 1024  # --workers, --threads: beyond any machine; larger values overflow FFmpeg and OpenCV


def default_store_path(dataset: str, recipe: Recipe, fmt: str = "zarr") -> Path:
    name = "frames.h5" if fmt == "hdf5" else "frames.zarr"
    return lineage.har_home() / "stores" / dataset / recipe.fingerprint()[:12] / name


# ---- one video: pipeline.decoding.reader ---------------------------------------------------------

extract_video = read_video  # run_batch's decoder, found by this name (tests and benchmarks/noop_decoder.py swap it)


# ---- a batch of videos: one Dask task ---------------------------------------------------------

class _old_rows:
    """The rows of a previous store a batch copies, read in one slice per array when they lie close
    together (the usual case: an unchanged dataset keeps its order), else one by one; each row's
    data checked against its checksum. Reading 8 arrays a video cost ~9 ms a video, the whole
    rerun of a 240,000-video store for one changed video."""

    def __init__(self, old: store.StoreReader, wanted: list[int], batch: int):
        self.old, self.lo, self.block, self.cols = old, 0, None, None
        if not wanted or max(wanted) + 1 - min(wanted) > batch + 16:   # a batch's frames, and a few more
            return
        self.lo, hi = min(wanted), max(wanted) + 1
        try:
            self.cols = {name: np.asarray(old[name][self.lo:hi]) for name in
                         ("status", "error", "num_frames", "fps", "frame_idx", "view_params")}
            self.block = inputs.read_rows(old, self.lo, hi)
        except Exception:   # read one by one: only the damaged rows are decoded again
            self.cols = self.block = None

    def frames(self, j: int) -> np.ndarray:
        if self.block is not None:
            return self.block[j - self.lo]
        return inputs.read_rows(self.old, j, j + 1)[0]

    def results(self, j: int) -> tuple:
        names = ("status", "error", "num_frames", "fps", "frame_idx", "view_params")
        if self.cols is not None:
            got = [self.cols[n][j - self.lo] for n in names]
        else:
            got = [self.old[n][j] for n in names]
        got[1] = str(got[1])
        return tuple(got)


@dataclass(frozen=True)
class BatchTask:
    start: int                 # first video index of the batch
    work: str                  # the working Zarr store
    root: str                  # dataset root
    videos: tuple[str, ...]    # relative paths
    reuse: tuple[int, ...]     # index of the same unchanged source in `old`, -1 = decode
    old: str | None            # previous finished store (Zarr or HDF5), for reuse
    recipe: Recipe
    threads: int = 0           # decoder threads per video (0: FFmpeg decides)
    problems: tuple[str, ...] = ()  # per video: why its source cannot be read ("" = fine), never opened


def run_batch(task: BatchTask) -> list[dict]:
    """Extract (or copy) every video of the batch and write it to the working store."""
    import cv2

    cv2.setNumThreads(max(1, task.threads))  # one worker process per core share: no oversubscription
    r = task.recipe
    m = len(task.videos)
    frames = np.zeros((m, r.samples, r.frames, r.height, r.width, 3), np.uint8)
    frame_idx = np.full((m, r.samples, r.frames), -1, np.int32)
    view_params = np.zeros((m, r.samples, len(augment.FIELDS)), np.float32)
    num_frames = np.zeros(m, np.int32)
    fps = np.zeros(m, np.float32)
    status = np.full(m, store.FAILED, np.int8)
    error = np.full(m, "", dtype=object)
    decoded = np.zeros(m, np.int64)
    passes = np.zeros(m, np.int64)
    old = store.StoreReader(location.of(task.old)) if task.old and any(j >= 0 for j in task.reuse) else None
    rows = _old_rows(old, [j for j in task.reuse if j >= 0], m) if old is not None else None
    reused = [False] * m
    for i, (rel, j) in enumerate(zip(task.videos, task.reuse)):
        if j >= 0:
            try:
                frames[i] = rows.frames(j)
                status[i], error[i], num_frames[i], fps[i], frame_idx[i], kept = rows.results(j)
            except Exception as e:  # never copy damage (zarr raises many kinds): decode the source instead
                logger.warning("%s: not copied from %s, decoded again: %s", rel, task.old, e)
                j = -1
        if j >= 0:
            view_params[i, :, :kept.shape[-1]] = kept   # a store of an earlier version keeps fewer fields
            reused[i] = True                            # (no rotation, vflip: 0)
            continue
        try:
            if task.problems and task.problems[i]:
                raise video.VideoError(task.problems[i], permanent=True)
            with location.local_file(location.of(task.root) / rel) as local:   # an object: a temporary copy
                v = extract_video(local, rel, r, task.threads)
            frames[i], frame_idx[i], num_frames[i], fps[i], view_params[i], decoded[i], passes[i] = (
                v.frames, v.frame_idx, v.num_frames, v.fps, v.view_params, v.decoded, v.passes)
            status[i] = store.OK
        except video.VideoError as e:
            error[i] = video.failure_text(e)
        except Exception as e:  # recorded with its type, never dropped
            logger.exception("%s: unexpected failure", rel)
            error[i] = f"{type(e).__name__}: {e}"
    if old is not None:
        old.close()
    store.write_batch(location.of(task.work), task.start, {"frames": frames, "frame_idx": frame_idx,
                                                     "view_params": view_params,
                                                     "num_frames": num_frames, "fps": fps,
                                                     "error": error.astype(str), "status": status},
                      videos=task.videos)
    return [{"index": task.start + i, "video": rel, "status": int(status[i]), "error": str(error[i]),
             "reused": reused[i], "frames_decoded": int(decoded[i]), "decode_passes": int(passes[i]),
             "frames_in_source": int(num_frames[i]) if status[i] == store.OK else 0}
            for i, rel in enumerate(task.videos)]


# ---- the whole stage --------------------------------------------------------------------------

def build_lineage(index: datasets.DatasetIndex, recipe: Recipe, sources: list[lineage.Source]) -> dict:
    manifest_entry = datasets.manifest()["datasets"].get(index.name, {})
    content = {
        "schema_version": store.SCHEMA_VERSION,
        "dataset": index.name,
        "classes": list(index.classes),
        "videos": [[v.path, v.label, v.group] for v in index.videos],
        "sources": [[s.path, s.sha256] for s in sources],
        "recipe": recipe.fingerprint_dict(),   # an earlier version's store of this recipe stays current
        "manifest": manifest_entry,
    }
    return {
        "fingerprint": lineage.fingerprint(content),
        "recipe_fingerprint": recipe.fingerprint(),
        # per-source fingerprints are the store's arrays source/* (lineage.source_arrays), not attrs
        "inputs": {"root": str(index.root), "videos": len(sources)},
        "params": asdict(recipe),
        "manifest": manifest_entry,
        "seed": recipe.seed,
        "versions": lineage.versions(),
        "created": lineage.now(),
    }


def recorded_sources(reader: store.StoreReader) -> list[lineage.Source]:
    """A frame store's sources as recorded (in the order of `video`): from its arrays source/*, or
    from the lineage attrs of a store written before they moved there."""
    recorded = reader.attrs["lineage"]["inputs"]
    if "sources" in recorded:   # a store of har <= 2026-12-02 (attrs grew 320 bytes a video)
        return [lineage.source_from_dict(d) for d in recorded["sources"]]
    return lineage.sources_from_arrays(reader.read("video"),
                                       {f: reader.read(f"source/{f}") for f in lineage.SOURCE_FIELDS})


def _retryable(reader: store.StoreReader) -> bool:
    """Does the store hold a failure that a rerun should try again (not a permanent one)?"""
    status = reader.read("status")
    failed = np.flatnonzero(status == store.FAILED)
    if not len(failed):
        return False
    errors = reader.read("error")
    return any(not video.is_permanent(errors[i]) for i in failed)


def _open_old(target: Path, force: bool) -> tuple[store.StoreReader | None, list[lineage.Source]]:
    """The finished store at `target` and its recorded sources; (None, []) if there is none (or it is
    damaged and --force)."""
    if not target.exists():
        return None, []
    try:
        r = store.StoreReader(target)
        try:
            r.names()
            r.read("status")  # the arrays' metadata and the status parse
            r.attrs["lineage"]["fingerprint"]
        except BaseException:
            r.close()
            raise
        try:
            recorded = recorded_sources(r)
        except Exception:   # a damaged video or source/* chunk: quick_check names it and the store is rebuilt
            recorded = []
        return r, recorded
    except Exception as e:  # any damage: zarr and h5py raise many kinds
        if force:
            return None, []  # replaced by the swap at the end (check_output said it is a har frame store)
        raise store.StoreError(f"{target} exists but is not a readable har store ({type(e).__name__}: {e}); "
                               "move it away or pass --force to replace it") from None


def extract(cfg: ExtractConfig, progress: Callable[[int, int, list[dict]], None] | None = None) -> ExtractResult:
    """Bring the frame store for `cfg` up to date and say what was done."""
    t0 = time.perf_counter()
    if cfg.format not in store.FORMATS:
        raise ValueError(f"--format {cfg.format!r} is not supported; allowed: {', '.join(store.FORMATS)}")
    cfg.recipe.validate()
    for flag, value in (("--workers", cfg.workers), ("--threads", cfg.threads)):
        if value is not None and not 1 <= value <= MAX_PARALLEL:
            raise ValueError(f"{flag} {value} is out of range; allowed: 1..{MAX_PARALLEL}")
    recipe = cfg.recipe
    index = datasets.load(cfg.dataset, cfg.root)
    target = location.of(cfg.out) if cfg.out else default_store_path(index.name, recipe, cfg.format)
    if cfg.out and store.format_of(target) != cfg.format and target.suffix:
        cfg = replace(cfg, format=store.format_of(target))
    if isinstance(target, location.Url) and cfg.format == "hdf5":
        raise store.StoreError(f"--out {target}: an HDF5 file cannot be written to object storage; allowed there: a "
                               "Zarr store (--format zarr, a .zarr prefix)")
    target = outputs.check_output(target, "frames", roots=[index.root])  # resolved: a symlinked --out is its target
    workers = cfg.workers or cpu_count()
    # a worker holds a video's samples about three times (the decoded samples, its batch, the write)
    per_worker = 3 * recipe.bytes_per_video
    resources.require_memory(per_worker * (workers if cfg.scheduler is None else 1),
                             f"one video's {recipe.samples} samples of {recipe.frames} frames at "
                             f"{recipe.height}x{recipe.width} (x3 per worker, {workers} workers)",
                             "lower --frames, --clips, --views or --size, or use fewer --workers")
    target.parent.mkdir(parents=True, exist_ok=True)
    with swap.WriterLock(target):
        swap.recover(target)
        old, recorded = _open_old(target, cfg.force)
        if old is not None:
            lin = old.attrs.get("lineage", {})
            same = lin.get("recipe_fingerprint") == recipe.fingerprint() and old.attrs.get("dataset") == index.name
            if not same and not cfg.force:
                old.close()
                raise store.StoreError(
                    f"{target} holds {old.attrs.get('dataset')!r} extracted with another recipe "
                    f"({lin.get('params')}); choose another --out or pass --force to replace it")
            if not same:
                old.close()
                old = None
        known = {s.path: s for s in recorded} if old and not cfg.verify else {}
        rels = [v.path for v in index.videos]
        sources = lineage.source_fingerprints(index.root, rels, known)
        lin = build_lineage(index, recipe, sources)
        notes = index.notes
        if recipe.views and recipe.hflip and datasets.manifest()["datasets"].get(index.name, {}).get("hflip") is False:
            notes += (f"{index.name}: left and right are part of its labels, yet the augmented views are mirrored "
                      "(recipe hflip true); --no-hflip keeps them as recorded",)
        result = ExtractResult(store=target, notes=notes)
        result.source_bytes = sum(s.size for s in sources)
        damage = []
        if old is not None and store.has_results(old):
            # --verify reads every sample against its checksum; otherwise what shows without reading
            damage = inputs.verify(old) if cfg.verify else inputs.quick_check(old)
        if damage or (old is not None and cfg.force):
            why = f"is damaged ({'; '.join(damage[:2])})" if damage else "is replaced (--force)"
            result.notes = (*result.notes, f"{target} {why}: every video is extracted again")
            old.close()
            old = None
        if (old is not None and old.attrs["lineage"]["fingerprint"] == lin["fingerprint"]
                and store.has_results(old) and not _retryable(old)):
            _summarise(result, old)
            old.close()
            result.up_to_date = True
            result.seconds = time.perf_counter() - t0
            if cfg.out is None:
                latest.point_latest(index.name, "frames", target)
            return result

        # which videos can be copied from the previous version
        reuse = np.full(len(rels), -1, np.int64)
        if old is not None:
            if store.has_results(old):  # a store from an older har may lack arrays: decode all
                old_hash = {s.path: (i, s.sha256) for i, s in enumerate(recorded)}
                old_status = old.read("status")
                old_errors = old.read("error")
                for i, s in enumerate(sources):
                    j, h = old_hash.get(s.path, (-1, None))
                    if j >= 0 and h == s.sha256 and s.sha256 and (
                            old_status[j] == store.OK
                            or (old_status[j] == store.FAILED and video.is_permanent(old_errors[j]))):
                        reuse[i] = j  # a failure is retried unless the unchanged file itself is the reason
            old.close()

        work = swap.work_path(target)
        layout = store.Layout(len(rels), recipe.samples, recipe.frames, recipe.height, recipe.width,
                              store.choose_batch(len(rels), recipe.samples * recipe.frames * recipe.height * recipe.width * 3))
        if not swap.resumable(work, lin["fingerprint"], layout):
            clip_index, view_index = sample_axes(recipe)
            static = {
                "video": np.array(rels, dtype=str),
                "label": np.array([v.label for v in index.videos], np.int16),
                "group": np.array([v.group for v in index.videos], np.int16),
                "clip_index": np.tile(clip_index, (len(rels), 1)),
                "view_index": np.tile(view_index, (len(rels), 1)),
                **{f"split/{k}": v for k, v in index.splits.items()},
                **lineage.source_arrays(sources),
                # the clips its annotations list that are not under the root (Kinetics, SSv2)
                **({"missing_videos": np.array(index.missing_videos, dtype=str)} if index.missing_videos else {}),
            }
            attrs = {"schema_version": store.SCHEMA_VERSION, "kind": "frames", "dataset": index.name,
                     "classes": list(index.classes), "default_split": index.default_split,
                     "recipe": asdict(recipe), "view_params_fields": list(augment.FIELDS),
                     **index.attrs, "lineage": lin, "complete": False}
            store.create_zarr(work, layout, static, attrs, lossy=recipe.lossy)
            store.mark_laid_out(work)

        status = store.StoreReader(work).read("status")
        threads = cfg.threads or (max(1, cpu_count() // workers) if cfg.scheduler is None else 0)
        problems = tuple(s.problem for s in sources)
        tasks = [BatchTask(a, str(work), str(index.root), tuple(rels[a:b]), tuple(int(x) for x in reuse[a:b]),
                           str(target) if (reuse[a:b] >= 0).any() else None, recipe, threads, problems[a:b])
                 for a, b in layout.batches() if (status[a:b] == store.PENDING).any()]
        done = int((status != store.PENDING).sum())
        total = len(rels)

        def on_result(rows: list[dict]) -> None:
            nonlocal done
            done += len(rows)
            for row in rows:
                if row["reused"]:
                    result.reused += 1
                else:
                    result.decoded += 1
                    result.frames_decoded += row["frames_decoded"]
                    result.frames_in_source += row["frames_in_source"]
                    result.decoded_twice += row["decode_passes"] > 1
                    result.decoded_ok += row["status"] == store.OK
            if progress:
                progress(done, total, rows)

        if progress:
            progress(done, total, [])
        run_tasks(run_batch, tasks, on_result, scheduler=cfg.scheduler, workers=workers)

        store.mark_complete(work)
        swap.swap_in(work, target, cfg.format)
        with store.StoreReader(target) as final:
            _summarise(result, final)
        if cfg.out is None:
            latest.point_latest(index.name, "frames", target)
    result.seconds = time.perf_counter() - t0
    return result


def _summarise(result: ExtractResult, reader: store.StoreReader) -> None:
    status = reader.read("status")
    videos = reader.read("video")
    errors = reader.read("error")
    result.ok = int((status == store.OK).sum())
    result.failed = [(str(videos[i]), str(errors[i])) for i in np.flatnonzero(status == store.FAILED)]
    r = reader.attrs["recipe"]
    result.per_video = (r["clips"], 1 + r["views"], r["frames"])
    result.frames = result.ok * r["frames"] * r["clips"] * (1 + r["views"])
    result.store_bytes = store.dir_bytes(reader.path)
