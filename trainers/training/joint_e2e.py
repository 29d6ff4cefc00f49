"""Joint training of a video model on several frame stores: `har train-e2e MODEL --frames A --frames B`.

The video-model twin of trainers.training.joint (read its docstring for the rules): one network, its
trunk shared, its last linear layer holding one output layer per dataset (its own rows, softmax
and loss over them: `joint.SlicedLoss`); each dataset's own split; batches mixed by a seeded rule
(`--mix proportional|balanced`, trainers.data.mixing) and read by one set of loader workers from all the
stores (`clips.StackedClips`); random crop, flip and the asked augmentation on the device as for a
single store; early stopping on the mean of the datasets' validation accuracies; each dataset
evaluated by its own classifier, and the same model trained on each dataset alone beside it.

The stores must share their recipe (sampling and frame size): one clip shape for the network,
one recipe on the model card that `har predict` decodes a new video with.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainers.training import clip_task, distributed, joint, tasks
from trainers.data import clips
from trainers.models import video_models
from trainers.runs import runner
from trainers.training.config import E2EConfig


class JointClipTask(joint.JointBase):
    """A video model on several frame stores at once; each dataset's evaluation is its own ClipTask's."""

    def __init__(self, parts: list[joint.Part], cfg: E2EConfig, crop: int | None = None):
        first = clip_task.ClipTask(parts[0].fs, cfg, crop)   # the crop the model takes, checked against the store
        single = [first] + [clip_task.ClipTask(p.fs, cfg, first.crop) for p in parts[1:]]
        if cfg.hflip is None:   # as the stores' views: no mirror when any of them is a dataset without it
            first.augment["hflip"] = all(t.augment["hflip"] for t in single)
        super().__init__(parts, cfg.mix, single)
        self.crop, self.warnings, self.frames = first.crop, first.warnings, first.frames
        self._train: tuple | None = None   # (key, EpochStream)

    def build(self, cfg: E2EConfig, train: np.ndarray | None) -> nn.Module:
        first = self.single[0]
        model = video_models.build(first.model, len(self.classes), first.pretrained if train is not None else "none",
                               frames=self.frames, size=self.crop, drop_path=cfg.drop_path)
        return video_models.to_channels_last(model) if clip_task.channels_last(cfg) else model

    def param_groups(self, cfg: E2EConfig, model: nn.Module):
        return self.single[0].param_groups(cfg, model)

    def batches(self, cfg: E2EConfig, videos: np.ndarray, epoch: int, world: distributed.World = distributed.World()):
        """uint8 clips (B, T, H, W, 3) and joint labels in the mixing rule's order, read by one
        DataLoader whose workers live for the whole run (as a single store's)."""
        key = (cfg.batch_size, cfg.seed, cfg.train_views, cfg.mix, world.rank, world.size, np.asarray(videos).tobytes())
        if self._train is None or self._train[0] != key:
            self._close_train()
            stacked = clips.StackedClips([clips.ClipDataset(p.fs.path, p.fs.labels, p.fs.fingerprint) for p in self.parts],
                                         [p.offset for p in self.parts], [p.rows.start for p in self.parts])

            def items_for(e: int) -> np.ndarray:
                order, samples = self.epoch_order(cfg, videos, e, world)
                return np.stack([order, samples], axis=1)

            self._train = key, clips.EpochStream(stacked, items_for, cfg.batch_size, self.single[0].workers,
                                                 pin=torch.cuda.is_available())
        return self._train[1].epoch(epoch)

    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.single[0].prepare(x, generator)

    def _close_train(self) -> None:
        if self._train is not None:
            self._train[1].close()
            self._train = None

    def close(self) -> None:
        self._close_train()
        super().close()


def job(cfg: clip_task.E2ERunConfig, paths: list[Path]) -> runner.Job:
    cfg.train.validate()
    if video_models.get(cfg.train.model).hub:
        raise ValueError(f"{cfg.train.model}: joint training of the Hugging Face video models is not supported yet; "
                         "train it on one --frames store, or jointly one of: "
                         + ", ".join(n for n in video_models.VIDEO_MODELS.names() if not video_models.get(n).hub))
    parts = joint.parts_for(paths, cfg.train.split, store="frames")
    task = JointClipTask(parts, cfg.train)
    t, h, w = parts[0].fs.frame_shape
    m = cfg.train.model
    return joint.joint_job(task, cfg.train, f"{m}-joint", "frames", f"video model `{m}` (pretrained: {cfg.train.pretrained})",
                           f" ({t} frames at {h}x{w}, crops of {task.crop})",
                           {"pretrained": cfg.train.pretrained != "none", "crop": task.crop,
                            "hflip": task.single[0].augment["hflip"]},
                           {"recipe": parts[0].fs.attrs["recipe"], "model": m, "crop": task.crop}, tuple(task.warnings))


def train_joint(cfg: clip_task.E2ERunConfig, paths: list[Path], on_epoch=None, stop_after: int | None = None,
                train=None) -> runner.RunResult:
    """`har train-e2e MODEL --frames A --frames B`: the model on each dataset alone, then jointly
    (joint.run). Every store is read and checked before anything trains."""
    def alone(p: joint.Part, folder: Path, on):
        single = replace(cfg, train=replace(cfg.train, split=p.split.name, mix="proportional"), frames=p.path,
                         dataset=None, out=folder)
        return clip_task.train_e2e(single, on_epoch=on)
    jb = job(cfg, paths)
    try:
        return joint.run(jb, cfg.out, cfg.tracker, alone, on_epoch, stop_after, train)
    except torch.OutOfMemoryError:
        raise clip_task.out_of_memory(cfg.train) from None
    finally:
        jb.task.close()   # the loaders' worker processes


# ---- reading a joint video-model run back (trainers.training.tasks) ------------------------------------------

def open_task(paths: list[Path], cfg: E2EConfig, run_dir: Path) -> JointClipTask:
    """The run's task on its stores, with the crop it trained with."""
    return JointClipTask(joint.parts_for(paths, cfg.split, store="frames"), cfg, clip_task.recorded_crop(clip_task.recorded_card(run_dir)))


def scorer(run_dir: Path, cfg: E2EConfig, card: dict, device: torch.device):
    return clip_task.scorer(run_dir, cfg, card, device)


def chain(run_dir: Path, cfg: E2EConfig, card: dict, device: torch.device):
    joint.refuse(run_dir)


KIND = tasks.TaskKind(name="joint-video-model", config=E2EConfig, store="frames",
                      inputs=("frames_stores", "joint_fingerprint"),
                      card={"model": str, "classes": list, "crop": int, "datasets": list},
                      open=open_task, scorer=scorer, chain=chain, joint=True)
