"""`har train-e2e`: a video model trained end to end from the frame store, through the same loop,
run directory, metrics and report as the heads."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import store
from trainers import clips, data, distributed, limits, loop, models3d, runs


MEMORY_FORMATS = ("auto", "channels-last", "contiguous")


def resolve_workers(workers: int | None) -> int:
    """None: min(8, cores - 1), at least 2. On an H100 with 16 cores, 8 workers read about 900-1,600
    clips/s at 16x128x171 (2-3.5x what r2plus1d_18 trains at); 2 fed it less than it used."""
    if workers is not None:
        return workers
    import os

    return max(2, min(8, (os.cpu_count() or 2) - 1))


def channels_last(cfg: E2EConfig) -> bool:
    """auto: channels-last on CUDA (cuDNN's NDHWC kernels for bf16), the stored layout elsewhere."""
    if cfg.memory_format == "auto":
        return loop.resolve_device(cfg.device).type == "cuda"
    return cfg.memory_format == "channels-last"


@dataclass(frozen=True)
class E2EConfig(loop.LoopConfig):
    """A video model trained from clips. Defaults for 3D CNNs on small datasets."""
    batch_size: int = 8            # clips per step (see --accumulate for a larger effective batch)
    lr: float = 1e-4
    model: str = "r2plus1d_18"
    pretrained: str = "none"       # none | kinetics400 (torchvision's video ResNets) | imagenet (2D-based, i3d)
    crop: int | None = None        # training crop (random) and test crop (centred); default: the model's
                                   # input size, at most the stored frame size
    three_crop: bool = False       # test time: three crops along the longer side, averaged
    workers: int | None = None     # DataLoader worker processes reading the store; None: min(8, cores - 1), >= 2
    memory_format: str = "auto"    # auto (channels-last on CUDA) | channels-last | contiguous
    EXECUTION_ONLY = ("workers",)  # the loader's worker count changes speed, not results (tested)
    # precision auto stays fp32 on CPUs: torch 2.14.1's oneDNN bf16 conv3d weight gradient reads
    # memory it never wrote for some shapes (256 channels at 2x4x4, AVX512-BF16, even on 1 thread):
    # runs differed and about 1 in 10 went NaN. --precision bf16 still asks for it.
    CPU_BF16 = False

    def check_values(self) -> None:
        spec = models3d.get(self.model)
        if self.pretrained not in ("none", *spec.pretrained):
            raise ValueError(f"--pretrained {self.pretrained!r} is not available for {self.model}; allowed: "
                             f"{', '.join(('none', *spec.pretrained))}")
        if self.crop is not None:
            limits.whole("crop", self.crop, 8, 4096)  # the largest stored frame (har extract --size)
        if self.workers is not None:
            limits.whole("workers", self.workers, 0, 1024)
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"--memory-format {self.memory_format!r} is not known; allowed: {', '.join(MEMORY_FORMATS)}")
        if not isinstance(self.three_crop, bool):
            raise ValueError(f"--three-crop {self.three_crop!r} is not supported; allowed: true, false")
        super().check_values()


class ClipTask:
    """A video model on a frame store: batches are uint8 clips (B, T, H, W, 3); crop and flip on the device."""

    def __init__(self, cs: clips.ClipStore, cfg: E2EConfig):
        self.cs, self.labels, self.classes = cs, cs.labels, cs.classes
        _, h, w = cs.frame_shape
        self.crop = min(cfg.crop or models3d.get(cfg.model).size, h, w)
        self.model, self.pretrained, self.three = cfg.model, cfg.pretrained, cfg.three_crop
        self.workers = resolve_workers(cfg.workers)
        self._loaders: dict[int, clips.ClipLoader] = {}   # evaluation, per batch size
        self._train: tuple | None = None                   # (key, EpochStream) for training

    def _loader(self, batch_size: int) -> clips.ClipLoader:
        """One evaluation loader per batch size for the whole run."""
        if batch_size not in self._loaders:
            self._loaders[batch_size] = clips.ClipLoader(self.cs, batch_size, self.workers, pin=torch.cuda.is_available())
        return self._loaders[batch_size]

    def close(self) -> None:
        for ld in self._loaders.values():
            ld.close()
        self._loaders.clear()
        if self._train is not None:
            self._train[1].close()
            self._train = None

    def build(self, cfg: E2EConfig, train: np.ndarray | None) -> nn.Module:
        model = models3d.build(self.model, len(self.classes), self.pretrained)
        return models3d.to_channels_last(model) if channels_last(cfg) else model

    def batches(self, cfg: E2EConfig, videos: np.ndarray, epoch: int, world: distributed.World = distributed.World()):
        key = (cfg.batch_size, cfg.seed, cfg.train_views, world.rank, world.size, np.asarray(videos).tobytes())
        if self._train is None or self._train[0] != key:
            if self._train is not None:
                self._train[1].close()

            def items_for(e: int) -> np.ndarray:
                return distributed.shard(clips.train_items(self.cs, videos, cfg.seed, e, cfg.train_views), world)

            self._train = key, clips.EpochStream(self.cs, items_for, cfg.batch_size, self.workers,
                                                 pin=torch.cuda.is_available())
        return self._train[1].epoch(epoch)

    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return clips.random_crop_flip(x, self.crop, generator)

    @torch.inference_mode()
    def predict(self, model: nn.Module, videos: np.ndarray, device: torch.device, cfg: loop.LoopConfig | None = None
                ) -> np.ndarray:
        """Every clean clip of each video (and three crops with three_crop), softmax averaged per video."""
        model.eval()
        items = clips.eval_items(self.cs, videos)
        per_video = len(items) // max(1, len(videos))
        probs = []
        for x, _ in self._loader(max(1, (cfg.batch_size if cfg else 8)))(items):
            x = x.to(device, non_blocking=True)
            crops = clips.centre_crops(x, self.crop, self.three)
            with loop.autocast(cfg or loop.LoopConfig(precision="fp32"), device):
                p = sum(torch.softmax(model(c).float(), dim=1) for c in crops) / len(crops)
            probs.append(p.cpu().numpy())
        out = np.concatenate(probs) if probs else np.zeros((0, len(self.classes)), np.float32)
        return out.reshape(len(videos), per_video, -1).mean(axis=1)


@dataclass(frozen=True)
class E2ERunConfig:
    train: E2EConfig
    frames: Path | None = None      # the frame store; or
    dataset: str | None = None      # the latest frame store extracted for this dataset
    out: Path | None = None         # run directory; default runs/<model>-<split>-<fingerprint[:10]>


def train_e2e(cfg: E2ERunConfig, on_epoch: Callable[[dict], None] | None = None,
              stop_after: int | None = None) -> runs.RunResult:
    cfg.train.validate()
    if (cfg.frames is None) == (cfg.dataset is None):
        raise ValueError("give exactly one of --frames PATH or --dataset NAME")
    path = (Path(cfg.frames) if cfg.frames else store.latest_store(cfg.dataset, "frames")).absolute()
    cs = clips.open_store(path)
    split = data.make_split(cs, cfg.train.split)
    task = ClipTask(cs, cfg.train)
    fingerprint = cs.attrs["lineage"]["fingerprint"]
    warns = runs.warnings_for(split, cs)
    t, h, w = cs.frame_shape
    job = runs.Job(name=cfg.train.model, cfg=replace(cfg.train, split=split.name), task=task, split=split, store=path,
                   fingerprint=fingerprint, inputs={"frames_store": str(path), "frames_fingerprint": fingerprint},
                   describe=f"video model `{cfg.train.model}` (pretrained: {cfg.train.pretrained}) on `{path}` "
                            f"({t} frames at {h}x{w}, crops of {task.crop})",
                   extra={"frames": str(path), "frames_fingerprint": fingerprint, "dataset": cs.attrs.get("dataset"),
                          "pretrained": cfg.train.pretrained != "none", "crop": task.crop},
                   card={"recipe": cs.attrs["recipe"], "model": cfg.train.model, "classes": cs.classes,
                         "crop": task.crop},
                   failed=tuple(cs.failed()), warnings=tuple(warns))
    try:
        return runs.execute(job, cfg.out, on_epoch, stop_after)
    except torch.OutOfMemoryError:
        raise ValueError(f"out of memory with --batch-size {cfg.train.batch_size} for {cfg.train.model}; try "
                         f"--batch-size {max(1, cfg.train.batch_size // 2)} (with --accumulate 2 for the same "
                         "effective batch) or a smaller --crop") from None
    finally:
        task.close()  # stop the loader's worker processes
