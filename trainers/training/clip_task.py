"""The clip task: a video model (trainers.models.video_models) trained end to end from a frame store
(`har train-e2e`), through the same loop, run folder, metrics and report as the heads.

Batches are uint8 clips (B, T, H, W, 3) read by DataLoader workers that live for the whole run;
random crop and flip (and rotation, vertical flip, colour jitter when asked) happen on the
training device. Evaluation takes every clean clip of a video
(and optionally three crops) and averages. A run records the model card `har predict` needs:
the recipe, the model and its centre crop.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.stores import latest
from pipeline.core import lineage, location
from trainers.data import clips, views
from trainers.training import distributed, loop, tasks
from trainers.models import video_models
from trainers.runs import runner
from trainers.models.chain import Chain, Normalised, to_channels_first
from trainers.training.config import E2EConfig


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


class ClipTask(tasks.Task):
    """A video model on a frame store: batches are uint8 clips (B, T, H, W, 3); crop and flip on the device."""

    def __init__(self, cs: views.StoreView, cfg: E2EConfig, crop: int | None = None, hub: dict | None = None):
        self.view = self.cs = cs
        self.labels, self.classes = cs.labels, cs.classes
        self.frames = cs.frame_shape[0]
        if crop is not None:   # a finished run read back: the crop it trained with (its card)
            self.crop, self.warnings = crop, []
        else:                  # the crop the model takes, checked against the store (ValueError saying what to extract)
            self.crop, self.warnings = video_models.fit_store(cfg.model, cfg.pretrained, cfg.crop, cs.frame_shape,
                                                          str(cs.path))
        # a Hugging Face model: its encoder's config, normalisation and weights' digest, read once (a finished
        # run's from its card: evaluating it needs no folder)
        if hub is None and video_models.get(cfg.model).hub:
            hub = hub_facts(cfg, self.frames, self.crop)
        self.hub = hub
        self.model, self.pretrained, self.three = cfg.model, cfg.pretrained, cfg.three_crop
        hflip = store_hflip(cs) if cfg.hflip is None else cfg.hflip
        self.warnings = self.warnings + mirrored_views_warning(cs, cfg)
        self.augment = {"hflip": hflip, "rotate": cfg.rotate, "vflip": cfg.vflip, "jitter": cfg.jitter}
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
        # a Hugging Face model's weights come from its folder to train; evaluated, it is built from its facts
        model = video_models.build(self.model, len(self.classes), self.pretrained if train is not None else "none",
                                   frames=self.frames, size=self.crop, drop_path=cfg.drop_path,
                                   hub=self.hub)
        return video_models.to_channels_last(model) if channels_last(cfg) else model

    def param_groups(self, cfg: E2EConfig, model: nn.Module):
        """The new output layer at --lr; each layer below it at lr x backbone_lr_mult x
        layer_decay^(its distance from the output layer) (video_models.layer_groups). Without either,
        one group, as runs had before these options (their last.pt resumes)."""
        if cfg.backbone_lr_mult == 1.0 and cfg.layer_decay == 1.0:
            return model.parameters()
        groups = video_models.layer_groups(model.net, video_models.get(self.model).classifier)
        top = len(groups) - 1
        return [{"params": ps, "lr": cfg.lr * (1.0 if i == top else cfg.backbone_lr_mult * cfg.layer_decay ** (top - i))}
                for i, ps in enumerate(groups)]

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
        return clips.augment(x, self.crop, generator, **self.augment)

    @torch.inference_mode()
    def probabilities(self, model: nn.Module, videos: np.ndarray, device: torch.device,
                      cfg: loop.LoopConfig | None = None) -> np.ndarray:
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
    tracker: str = "tensorboard"    # the dashboard (trainers.runs.tracker); changes nothing the run computes


def train_e2e(cfg: E2ERunConfig, on_epoch: Callable[[dict], None] | None = None,
              stop_after: int | None = None) -> runner.RunResult:
    cfg.train.validate()
    if (cfg.frames is None) == (cfg.dataset is None):
        raise ValueError("give --frames PATH or --dataset NAME (exactly one: the frame store to train on)")
    path = (location.of(cfg.frames) if cfg.frames else latest.latest_store(cfg.dataset, "frames")).absolute()
    cs = views.open_view(path, "frames")
    split = views.make_split(cs, cfg.train.split)
    task = ClipTask(cs, cfg.train)
    t, h, w = cs.frame_shape
    # a Hugging Face model's weights and processor are what --pretrained names now: in the run's fingerprint
    fp = cs.fingerprint if task.hub is None else lineage.fingerprint({"frames": cs.fingerprint, "pretrained": task.hub})
    job = runner.Job(name=cfg.train.model, cfg=replace(cfg.train, split=split.name), task=task, split=split, store=path,
                   fingerprint=fp, inputs={"frames_store": str(path), "frames_fingerprint": cs.fingerprint,
                                           **({"pretrained_sha256": task.hub["sha256"]} if task.hub else {})},
                   describe=f"video model `{cfg.train.model}` (pretrained: {cfg.train.pretrained}) on `{path}` "
                            f"({t} frames at {h}x{w}, crops of {task.crop})",
                   extra={"frames": str(path), "frames_fingerprint": cs.fingerprint, "dataset": cs.attrs.get("dataset"),
                          "pretrained": cfg.train.pretrained != "none", "crop": task.crop,
                          "hflip": task.augment["hflip"]},
                   card={"recipe": cs.attrs["recipe"], "model": cfg.train.model, "classes": cs.classes,
                         "crop": task.crop, **({"hub": task.hub} if task.hub else {})},
                   failed=tuple(cs.failed()), warnings=tuple(runner.warnings_for(split, cs)) + tuple(task.warnings))
    try:
        return runner.execute(job, cfg.out, on_epoch, stop_after, cfg.tracker)
    except torch.OutOfMemoryError:
        raise out_of_memory(cfg.train) from None
    finally:
        task.close()  # stop the loader's worker processes


def hub_facts(cfg: E2EConfig, frames: int, crop: int) -> dict:
    """A Hugging Face model's facts (its run card's `hub`): its encoder's config, normalisation and
    weights' digest (predict, serve, export and evaluate rebuild the network from them, without the folder)."""
    from trainers.models import hub_models

    return hub_models.facts(cfg.model, cfg.pretrained, video_models.Clip(frames, crop))


def store_hflip(cs: views.StoreView) -> bool:
    """Whether a store's recipe mirrors its views horizontally (stores from before the option do)
    and its dataset allows a mirror (not SSv2, whose labels say left and right): training clips of
    a video model follow it unless --hflip/--no-hflip says otherwise."""
    from pipeline.datasets import datasets

    allowed = datasets.manifest()["datasets"].get(str(cs.attrs.get("dataset")), {}).get("hflip", True) is not False
    return allowed and bool((cs.attrs.get("recipe") or {}).get("hflip", True))


def mirrored_views_warning(cs: views.StoreView, cfg: E2EConfig) -> list[str]:
    """--no-hflip on a store whose augmented views were stored mirrored: training still draws them."""
    r = cs.attrs.get("recipe") or {}
    if cfg.hflip is False and r.get("views", 0) and r.get("hflip", True) and cfg.train_views != "clean":
        return [f"--no-hflip turns off the on-the-fly mirror only: about half of the augmented views of "
                f"{cs.path} were stored mirrored and training draws them (--train-views {cfg.train_views}); "
                "extract again with --no-hflip, or train with --train-views clean"]
    return []


def out_of_memory(cfg: E2EConfig) -> ValueError:
    """The one line for a video model that ran out of device memory: what to try instead."""
    return ValueError(f"out of memory with --batch-size {cfg.batch_size} for {cfg.model}; try "
                      f"--batch-size {max(1, cfg.batch_size // 2)} (with --accumulate 2 for the same "
                      "effective batch) or a smaller --crop")


# ---- reading a video-model run back (trainers.training.tasks) ------------------------------------------------

def recorded_card(run_dir: Path) -> dict:
    """A finished run's card (lineage.json's `predict`; {} when it has none)."""
    from trainers.runs import rundir

    return rundir.read_json(Path(run_dir) / "lineage.json", runner.RUN_REMEDY).get("predict") or {}


def recorded_crop(card: dict) -> int | None:
    """The crop a finished run trained with (its card's); None when it records none."""
    crop = card.get("crop")
    return crop if isinstance(crop, int) and not isinstance(crop, bool) and crop > 0 else None


def open_task(path: Path, cfg: E2EConfig, run_dir: Path) -> ClipTask:
    """The run's task on its store, with the crop it trained with (and a Hugging Face model's facts)."""
    card = recorded_card(run_dir)
    hub = card.get("hub") if isinstance(card.get("hub"), dict) else None
    return ClipTask(views.open_view(path, "frames"), cfg, recorded_crop(card), hub)


def built(card: dict, cfg: E2EConfig) -> video_models.VideoModel:
    """A fresh network as the run's was built: its model, classes and clip (frames, crop)."""
    return video_models.build(card["model"], len(card["classes"]), frames=int(card["recipe"]["frames"]), size=card["crop"],
                              drop_path=cfg.drop_path, hub=card.get("hub"))


def scorer(run_dir: Path, cfg: E2EConfig, card: dict, device: torch.device):
    """uint8 clips (K, T, H, W, 3) -> (K, C) logits: the centre crop of every clip, the video model."""
    model = loop.load_best(built(card, cfg), Path(run_dir), device)

    def score(frames: np.ndarray) -> torch.Tensor:
        x = clips.centre_crops(torch.from_numpy(frames).to(device), card["crop"])[0]
        return model(x)
    return score


def chain(run_dir: Path, cfg: E2EConfig, card: dict, device: torch.device) -> Chain:
    """The video model as a differentiable chain of the stored frames: the centre crop of the
    card cuts the input (to_input), then normalisation and the network."""
    model = loop.load_best(built(card, cfg), Path(run_dir), device)
    size = card["crop"]

    def to_input(frames: np.ndarray) -> torch.Tensor:
        x = clips.centre_crops(torch.from_numpy(np.ascontiguousarray(frames))[None], size)[0][0]
        return to_channels_first(x).to(device)

    def window(h: int, w: int) -> tuple[float, float, float, float]:
        return float((h - size) // 2), float((w - size) // 2), float(size), float(size)

    # the model's own constants (a Hugging Face model's are its processor's, not the spec's defaults)
    mean, std = (model.mean / 255).flatten().tolist(), (1 / (model.inv_std * 255)).flatten().tolist()
    net = Normalised(model.net, mean, std).to(device).eval()
    with torch.no_grad():   # predict's own constants, bit for bit
        net.mean.copy_(model.mean.reshape(net.mean.shape))
        net.inv_std.copy_(model.inv_std.reshape(net.inv_std.shape))
    return Chain(net, to_input, window, list(card["classes"]), "video-model")


KIND = tasks.TaskKind(name="video-model", config=E2EConfig, store="frames",
                      inputs=("frames_store", "frames_fingerprint"),
                      card={"model": str, "classes": list, "crop": int}, open=open_task, scorer=scorer, chain=chain)
