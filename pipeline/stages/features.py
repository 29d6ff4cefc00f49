"""`har features`: frame store -> feature store through a frozen 2D backbone.

Same plan-then-execute shape as extraction: batches of videos (one shard of `features` each) are
encoded into a working Zarr store beside the target, `status` last, then swapped in. A rerun with
nothing changed does nothing; a killed run resumes. Only videos with status ok in the frame store
are encoded; failed ones stay marked (status 2) with their error.

On CUDA: bf16 autocast, channels_last (on CPU too), large batches, pinned host memory with non-blocking copies,
and the next batch read from the store while the GPU works on this one. On CPU: every core,
inference mode, batched.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.stages import backbones
from pipeline.stages.input_policy import InputPolicy
from pipeline.stores import inputs, latest, store, swap
from pipeline.core import lineage, location, outputs, resources
from pipeline.core import device as devices
from pipeline.core.cluster import run_tasks
from pipeline.core.registry import Registry

logger = logging.getLogger(__name__)

PRECISIONS = Registry.of("precision", {"auto": "bf16 on cuda, fp32 on cpu", "fp32": "", "bf16": "", "fp16": ""})
RESIZES = Registry.of("resize policy", {"weights": "the weights' own resize, crop and normalisation",
                                        "stored": "frames as stored, only the normalisation"})
DATASET_ATTRS = ("reversed_pairs",)  # facts of the dataset the frame store's attrs carry on (datasets.DatasetIndex)
COPIED = ("video", "label", "group", "num_frames", "fps", "error", "frame_idx", "clip_index", "view_index",
          "view_params")


@dataclass(frozen=True)
class FeatureConfig:
    backbone: str = "resnet152"
    weights: str = "imagenet"       # imagenet | none (random init, marked) | path of a state_dict
    store: Path | None = None       # the frame store; or
    dataset: str | None = None      # the latest frame store extracted for this dataset
    out: Path | None = None         # default: features-<backbone>-<weights>.zarr beside the frame store
    device: str = "auto"            # auto: cuda when present
    batch_size: int = 256           # frames per forward pass
    precision: str = "auto"         # auto: bf16 on cuda, fp32 on cpu
    compile: bool = False           # torch.compile the backbone (GPU; slow to start)
    resize: str = "weights"         # weights: the weights' resize + centre crop (224 px for ImageNet);
                                    # stored: frames at their stored size, only scaled and normalised
    scheduler: str | None = None    # dask.distributed address: shards spread over its workers
    force: bool = False             # rebuild the feature store (also one made differently at --out)

    def validate(self) -> None:
        backbones.get(self.backbone)
        if self.device not in devices.DEVICES:
            raise ValueError(f"--device {self.device!r} is not supported; allowed: {', '.join(devices.DEVICES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r} is not supported; allowed: {', '.join(PRECISIONS)}")
        if self.resize not in RESIZES:
            raise ValueError(f"--resize {self.resize!r} is not supported; allowed: {', '.join(RESIZES)}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size {self.batch_size} must be >= 1")
        if backbones.get(self.backbone).kind == "clip" and self.resize != "weights":
            raise ValueError(f"--resize {self.resize}: {self.backbone} sees clips at the size its weights were trained at; "
                             "allowed for video backbones: weights")
        if (self.store is None) == (self.dataset is None):
            raise ValueError("give --store PATH or --dataset NAME (exactly one: the frame store to encode)")


@dataclass
class FeatureResult:
    store: Path
    up_to_date: bool = False
    encoded_videos: int = 0
    frames: int = 0
    failed: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    weights: backbones.WeightsInfo | None = None
    store_bytes: int = 0
    backbone: str = ""

    def summary(self) -> str:
        """What the run did, in a few lines for a person; random weights are said in capitals."""
        w = self.weights
        marked = "" if w.pretrained else "  [RANDOM WEIGHTS: features carry no ImageNet knowledge]"
        if self.up_to_date:
            return f"up to date: {self.store}{marked}"
        return (f"store:    {self.store}\n"
                f"backbone: {self.backbone} ({w.source}{', sha256 ' + w.sha256[:12] if w.sha256 else ''}){marked}\n"
                f"encoded:  {self.encoded_videos} videos, {self.frames:,} frames on {self.device} ({self.precision}), "
                f"{self.frames / self.seconds if self.seconds else 0:.0f} frames/s\n"
                f"failed:   {self.failed} videos (kept marked, not encoded)\n"
                f"bytes:    {resources.human(self.store_bytes)}\ntime:     {self.seconds:.1f} s")


def resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "bf16" if device == "cuda" else "fp32"
    return precision


# ---- the math: frames -> features ----------------------------------------------------------

@dataclass(frozen=True)
class EncoderConfig:
    """What an Encoder is made of; also its key in a process's cache (`encoder_for`)."""
    backbone: str
    weights: str                # imagenet | none | path of a state_dict
    device: str                 # cpu | cuda (already resolved)
    precision: str = "fp32"     # fp32 | bf16 | fp16 (already resolved)
    batch_size: int = 256       # frames per forward pass
    compile: bool = False       # torch.compile the backbone
    resize: str = "weights"     # weights: the weights' own resize and crop | stored: only normalised
    policy: InputPolicy | None = None  # the input policy a store recorded (None: the backbone's own)


class Encoder:
    """A loaded frame backbone on a device: encode(uint8 (M, H, W, 3)) -> float16 (M, D); clips
    (K, T, H, W, 3) -> (K, T, D), one vector per frame (`video_backbones.ClipEncoder` is the
    other kind: one per temporal token of a clip)."""

    def __init__(self, cfg: EncoderConfig):
        import torch

        self.model, self.preprocess, self.weights = backbones.load(cfg.backbone, cfg.weights, cfg.resize == "weights",
                                                                   cfg.policy)
        self.device = torch.device(cfg.device)
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
        self.batch_size = cfg.batch_size
        if cfg.device == "cpu":
            from pipeline.core.cluster import torch_threads

            torch.set_num_threads(torch_threads())
        # channels_last: cuDNN's and oneDNN's fast convolution layout (measured 1.3x on this CPU)
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.dim = backbones.get(cfg.backbone).dim
        self.policy = self.preprocess.policy

    def positions(self, stored_frames: int) -> int:
        return stored_frames

    def record(self, stored_frames: int) -> dict | None:
        return None  # one feature per stored frame: nothing to say

    def encode_clips(self, clips: np.ndarray) -> np.ndarray:
        k, t = clips.shape[:2]
        return self.encode(clips.reshape(k * t, *clips.shape[2:])).reshape(k, t, -1)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        import torch

        chunks = []
        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            for i in range(0, len(frames), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(frames[i:i + self.batch_size])).permute(0, 3, 1, 2)  # (B, 3, H, W)
                if cuda:
                    x = x.pin_memory().to(self.device, non_blocking=True)
                x = self.preprocess(x)  # the weights' input policy: resize, crop, value range, normalise
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    y = self.model(x)
                chunks.append(y.float().to("cpu").numpy().astype(np.float16))
        return np.concatenate(chunks)


def make_encoder(cfg: EncoderConfig):
    """The encoder of the backbone's kind: frames (Encoder) or clips (video_backbones.ClipEncoder)."""
    if backbones.get(cfg.backbone).kind == "clip":
        from pipeline.stages.video_backbones import ClipEncoder

        return ClipEncoder(cfg)
    return Encoder(cfg)


_ENCODERS: dict[EncoderConfig, Encoder] = {}


def encoder_for(cfg: EncoderConfig) -> Encoder:
    """One encoder per process and settings (a Dask worker keeps its model between shards)."""
    if cfg not in _ENCODERS:
        _ENCODERS[cfg] = make_encoder(cfg)
    return _ENCODERS[cfg]


# ---- one shard: a task ---------------------------------------------------------------------

@dataclass(frozen=True)
class ShardTask:
    start: int
    stop: int
    frames: str          # the frame store
    work: str            # the working feature store
    encoder: EncoderConfig
    fingerprint: str = ""  # of the frame store when the stage began: a replaced store is never mixed in


class StoreChanged(store.StoreError):
    """The input store was replaced while this stage read it."""


def read_frames(task: ShardTask) -> tuple[np.ndarray, np.ndarray]:
    """(status, frames) of the task's videos, verified against their checksums, from the frame store
    version the stage began with: its fingerprint is checked before and after the read, so a store
    swapped in meanwhile (har extract --force) stops the stage instead of mixing two versions."""
    path = location.of(task.frames)

    def same_version() -> None:
        with store.StoreReader(path) as r:
            # a store being published on object storage keeps its fingerprint until its marker, but
            # says complete: false from the start of the publish
            now = r.attrs.get("lineage", {}).get("fingerprint") if r.attrs.get("complete") else None
        if task.fingerprint and now != task.fingerprint:
            raise StoreChanged(f"{path} was replaced while har features read it; nothing mixed was kept: "
                               "run the same command again")

    same_version()
    try:
        with store.StoreReader(path) as fr:
            status = fr.read("status", task.start, task.stop)   # its rows only: a batch per task, N rows each
            frames = inputs.read_rows(fr, task.start, task.stop)
    except store.DamagedStoreError:
        same_version()  # a swap landing inside this read looks like damage: say which it was
        raise
    same_version()
    return status, frames


def run_shard(task: ShardTask, prefetched: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    enc = encoder_for(task.encoder)
    status, frames = prefetched if prefetched is not None else read_frames(task)
    m, s, t = frames.shape[:3]
    ok = status == store.OK
    clips = frames[ok].reshape(-1, *frames.shape[2:])  # (clips of ok videos, T, H, W, 3)
    feats = np.zeros((m, s, enc.positions(t), enc.dim), np.float16)
    if len(clips):
        feats[ok] = enc.encode_clips(clips).reshape(int(ok.sum()), s, enc.positions(t), -1)
    out_status = np.where(ok, store.OK, store.FAILED).astype(np.int8)
    store.write_batch(location.of(task.work), task.start, {"features": feats, "status": out_status}, data_name="features")
    return {"start": task.start, "videos": int(ok.sum()), "frames": int(clips.shape[0] * t)}


# ---- the stage -----------------------------------------------------------------------------

def frame_store_for(cfg: FeatureConfig) -> Path:
    if cfg.store is not None:
        return location.of(cfg.store)
    return latest.latest_store(cfg.dataset, "frames")


def default_out(frames: Path, backbone: str, weights: backbones.WeightsInfo, resize: str = "weights") -> Path:
    tag = {"imagenet": "imagenet", "none": "random"}.get(weights.kind, (weights.sha256 or "file")[:12])
    return frames.parent / f"features-{backbone}-{tag}{'-stored' if resize == 'stored' else ''}.zarr"


def features(cfg: FeatureConfig, progress: Callable[[int, int, int], None] | None = None) -> FeatureResult:
    """Bring the feature store for `cfg` up to date and say what was done.

    `progress(videos_done, videos_total, frames_encoded_so_far)` is called after every shard."""
    t0 = time.perf_counter()
    cfg.validate()
    src = frame_store_for(cfg).absolute()
    with inputs.open_input(src, "frames", "har features reads a frame store") as fr:
        attrs = fr.attrs
        n, s, t = fr["frame_idx"].shape
        src_status = fr.read("status")
        copied = {name: fr.read(name) for name in COPIED}
        copied.update({name: fr.read(name) for name in fr.names() if name.startswith("split/")})
    device = devices.resolve(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    spec = backbones.get(cfg.backbone)
    encoder = EncoderConfig(backbone=cfg.backbone, weights=cfg.weights, device=device, precision=precision,
                            batch_size=cfg.batch_size, compile=cfg.compile, resize=cfg.resize)
    # loaded afresh (the files behind --weights may have changed since this process last loaded them);
    # this process's shards use it; with a scheduler the workers load their own and this one, on the
    # CPU and uncompiled, only tells the weights, feature size and input policy
    enc = make_encoder(encoder if cfg.scheduler is None else replace(encoder, device="cpu", compile=False))
    if cfg.scheduler is None:
        _ENCODERS[encoder] = enc
    weights, dim, positions, clip = enc.weights, enc.dim, enc.positions(t), enc.record(t)
    policy = enc.policy.as_dict()
    target = location.of(cfg.out) if cfg.out else default_out(src, cfg.backbone, weights, cfg.resize)
    target = outputs.check_output(target, "features", inputs=[src])  # resolved: a symlinked --out is its target
    content = {"schema_version": store.SCHEMA_VERSION, "kind": "features",
               "frames_fingerprint": attrs["lineage"]["fingerprint"], "backbone": cfg.backbone,
               "weights": asdict(weights), "precision": precision,
               **({"resize": cfg.resize} if cfg.resize != "weights" else {}),  # old stores keep their fingerprint
               # a torchvision backbone's policy is its weights enum's (named in `weights`): stores made
               # before policies were recorded keep their fingerprint; har's own policies are in it
               **({"input": policy} if spec.library != "torchvision" else {}),
               **({"clip": clip} if clip else {})}  # a video backbone: frames taken, tubelet, positions
    lin = {"fingerprint": lineage.fingerprint(content), "inputs": {"frames_store": str(src),
           "frames_fingerprint": content["frames_fingerprint"]}, "params": {**content, "input": policy,
                                                                            "device": device,
           "batch_size": cfg.batch_size}, "versions": lineage.versions(), "created": lineage.now()}
    result = FeatureResult(store=target, device=device, precision=precision, weights=weights, backbone=cfg.backbone)
    with swap.WriterLock(target):
        swap.recover(target)
        h, w = attrs["recipe"]["height"], attrs["recipe"]["width"]
        # a task holds a shard of frames (and the next one, prefetched): size shards by the frames
        # the data's T is the encoder's positions: the stored frames, or a video backbone's temporal tokens
        layout = store.Layout(n, s, positions, 0, 0, store.choose_batch(n, max(s * t * h * w * 3, s * positions * dim * 2)))
        if target.exists() and _replaceable(target, lin, cfg.force):
            with store.StoreReader(target) as old:
                if (not cfg.force and old.attrs.get("lineage", {}).get("fingerprint") == lin["fingerprint"]
                        and store.has_results(old, data_name="features") and old.attrs.get("complete")
                        and not inputs.quick_check(old)):  # a damaged store is rebuilt, never "up to date"
                    result.up_to_date = True
                    result.failed = int((old.read("status") == store.FAILED).sum())
        if result.up_to_date:
            result.seconds = time.perf_counter() - t0
            result.store_bytes = store.dir_bytes(target)
            if cfg.out is None:
                _point_latest(attrs["dataset"], target, cfg.backbone)
            return result
        work = swap.work_path(target)
        if not swap.resumable(work, lin["fingerprint"], layout, "features", (dim,)):
            fattrs = {"schema_version": store.SCHEMA_VERSION, "kind": "features", "dataset": attrs["dataset"],
                      "classes": attrs["classes"], "default_split": attrs.get("default_split"),
                      "recipe": attrs["recipe"], "backbone": cfg.backbone, "feature_dim": dim,
                      "weights": asdict(weights), "pretrained": weights.pretrained, "precision": precision,
                      "resize": cfg.resize, "input": policy, **({"clip": clip} if clip else {}),
                      **{k: attrs[k] for k in DATASET_ATTRS if k in attrs},
                      "frames_fingerprint": content["frames_fingerprint"], "lineage": lin, "complete": False}
            initial = np.where(src_status == store.OK, store.PENDING, store.FAILED).astype(np.int8)
            store.create_zarr(work, layout, copied, fattrs, data_name="features", data_dtype="float16",
                              data_tail=(dim,), results=False, status=initial)
            for a, b in layout.batches():  # batches of failed videos only: no task writes them, a reader
                if not (initial[a:b] == store.PENDING).any():  # checks every chunk: write their zeros
                    store.write_batch(work, a, {"features": np.zeros((b - a, s, positions, dim), np.float16),
                                                "status": initial[a:b]}, data_name="features")
            store.mark_laid_out(work)
        with store.StoreReader(work) as w:
            status = w.read("status")
        fp = attrs["lineage"]["fingerprint"]
        tasks = [ShardTask(a, b, str(src), str(work), encoder, fp) for a, b in layout.batches()
                 if (status[a:b] == store.PENDING).any()]
        done = int((status != store.PENDING).sum())
        if progress:
            progress(done, n, 0)

        def on_result(row: dict) -> None:
            nonlocal done
            done += row["videos"]
            result.encoded_videos += row["videos"]
            result.frames += row["frames"]
            if progress:
                progress(done, n, result.frames)

        try:
            if cfg.scheduler is None:
                _run_local(tasks, on_result)
            else:
                run_tasks(run_shard, tasks, on_result, scheduler=cfg.scheduler,
                          resources={"GPU": 1} if device == "cuda" else None)
        except StoreChanged:
            store.remove(work)  # its shards came from the old version: none of them may be resumed
            raise
        store.mark_complete(work)
        swap.swap_in(work, target, "zarr")
        with store.StoreReader(target) as final:
            result.failed = int((final.read("status") == store.FAILED).sum())
    result.seconds = time.perf_counter() - t0
    result.store_bytes = store.dir_bytes(target)
    if cfg.out is None:
        _point_latest(attrs["dataset"], target, cfg.backbone)
    return result


def _replaceable(target: Path, lin: dict, force: bool) -> bool:
    """May the feature store at `target` be brought up to date? Yes when it was made by the same
    backbone settings from the same frame store (a newer version of it is the normal update), or
    with --force; a damaged one is replaced only with --force."""
    try:
        with store.StoreReader(target) as old:
            olin = old.attrs.get("lineage", {})
            same = (olin.get("inputs", {}).get("frames_store") == lin["inputs"]["frames_store"]
                    and {k: v for k, v in olin.get("params", {}).items() if k not in VOLATILE}
                    == {k: v for k, v in lin["params"].items() if k not in VOLATILE})
    except Exception as e:  # damaged: zarr and h5py raise many kinds
        if force:
            return False
        raise store.StoreError(f"{target} is a damaged feature store ({type(e).__name__}: {e}); "
                               "pass --force to replace it") from None
    if not same and not force:
        raise store.StoreError(f"{target} holds features made differently (another backbone, weights, precision "
                               "or frame store); choose another --out or pass --force to replace it")
    return True


# lineage params that may change without making a store "made differently"
VOLATILE = ("frames_fingerprint", "device", "batch_size")


def _point_latest(dataset: str, target: Path, backbone: str) -> None:
    """What `--dataset NAME` finds later: the latest feature store, and the latest per backbone."""
    latest.point_latest(dataset, "features", target, backbone=backbone)
    latest.point_latest(dataset, f"features-{backbone}", target, backbone=backbone)


def _run_local(tasks: list[ShardTask], on_result: Callable[[dict], None]) -> None:
    """In this process, reading the next shard's frames while the backbone encodes this one."""
    if not tasks:
        return

    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(read_frames, tasks[0])
        for i, task in enumerate(tasks):
            frames = nxt.result()
            if i + 1 < len(tasks):
                nxt = pool.submit(read_frames, tasks[i + 1])
            on_result(run_shard(task, frames))
