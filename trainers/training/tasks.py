"""Kinds of training task, in one registry: what a run trains on and how har reads it back; and
`Task`, the base every task class inherits.

    head          trainers.training.head_task   a sequence head on a feature store (har train-head, cv)
    video-model   trainers.training.clip_task   a video model end to end on a frame store (har train-e2e)
    joint-head    trainers.training.joint       a sequence head on several feature stores at once (train-head, 2+ --features)
    joint-video-model  trainers.training.joint_e2e  a video model on several frame stores at once (train-e2e, 2+ --frames)

Each kind lives in its own module, which defines its `TaskKind` as `KIND`. The registry names
that module and imports it the first time the kind is asked for (as backbones name their
torchvision builder), so `runner` and `predictor` load, resume, evaluate and use any run through
here without importing a concrete task, and no module imports one that imports it back. A new
kind is one new module and one line below.

`Task` is what `loop.fit` trains and `runner` evaluates and reports: a kind's task class defines
the data and the model (`build`, `batches`, `prepare`, `probabilities`, `close`) and inherits
the rest with its default (one parameter group, cross-entropy, every video once an epoch, the
store's split, every metric over all videos, one report), overriding what it does otherwise (a
joint task what differs for several stores). The loop and `runner` call every method; none asks whether a task has one.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.registry import Registry

if TYPE_CHECKING:   # light: torch and the losses are imported where a default needs them
    import numpy as np
    import torch
    from torch import nn

    from trainers.data import views
    from trainers.training import distributed, losses


@dataclass(frozen=True)
class TaskKind:
    name: str
    config: type                       # its frozen training config (a loop.LoopConfig), as config.json holds it
    store: str                         # the kind of store it trains on: "features" | "frames"
    inputs: tuple[str, str]            # lineage.json "inputs": (store path key, store fingerprint key)
    card: dict[str, type]              # the model card's entries besides the recipe (lineage.json "predict")
    open: Callable[..., Any]           # (store path, config, run folder) -> the Task on it (for evaluate)
    scorer: Callable[..., Callable]    # (run folder, config, card, device) -> uint8 clips (K, T, H, W, 3)
                                       # -> (K, C) logits, the run's own chain (for predict)
    chain: Callable[..., Any]          # (run folder, config, card, device) -> trainers.models.chain.Chain: the same
                                       # chain with gradients and layers reachable (for explain)
    joint: bool = False                # trained on several stores at once: one output layer per dataset


class Task(ABC):
    """What `loop.fit` trains on and `runner` evaluates and reports: the data and the model it
    builds, behind these names. Each kind's module defines its task class on this base: the
    abstract methods are its own, the others have the default every single-store task uses."""
    view: views.StoreView    # the store trained on (a joint task: one fingerprint for all its stores)
    labels: np.ndarray      # [N] class of every video
    classes: list[str]

    @abstractmethod
    def build(self, cfg, train: np.ndarray | None) -> nn.Module:
        """A fresh model (seeded by fit); train=None: its weights come from a checkpoint."""

    @abstractmethod
    def batches(self, cfg, videos: np.ndarray, epoch: int, world: distributed.World) -> Iterable:
        """CPU (x, y) batches of `videos` in a (seed, epoch)-determined order: this rank's share."""

    @abstractmethod
    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A batch on the device made ready for the model (crop, flip, ...: seeded by `generator`)."""

    @abstractmethod
    def probabilities(self, model: nn.Module, videos: np.ndarray, device: torch.device, cfg) -> np.ndarray:
        """(len(videos), C) class probabilities, clips averaged per video."""

    @abstractmethod
    def close(self) -> None:
        """Let go of loader workers, if any."""

    # ---- the rest: a default each, overridden where a kind does otherwise ----

    def param_groups(self, cfg, model: nn.Module):
        """The optimizer's parameter groups: by default one, every parameter at --lr."""
        return model.parameters()

    def loss(self, cfg, weight: torch.Tensor | None) -> losses.Loss:
        """The training loss (its `correct` counts training accuracy): by default cross-entropy
        with the class weights and label smoothing of `cfg`."""
        from trainers.training import losses

        return losses.CrossEntropy(weight, cfg.label_smoothing)

    def epoch_videos(self, cfg, videos: np.ndarray) -> int:
        """How many videos an epoch trains on (the warm-up counts its steps by it): by default each
        of `videos` once."""
        return len(videos)

    def score(self, probs: np.ndarray, videos: np.ndarray, weight: torch.Tensor | None) -> tuple[float, float]:
        """(loss, accuracy) of validation probabilities, what selects the best epoch: by default
        over all `videos` at once."""
        from trainers.training import losses

        return losses.loss_and_accuracy(probs, self.labels[videos], weight)

    def make_split(self, name: str | None) -> views.Split:
        """The split called `name` (None: the store's default) of the store."""
        from trainers.data import views

        return views.make_split(self.view, name)

    def evaluate(self, model: nn.Module, videos: np.ndarray, device: torch.device, cfg) -> dict:
        """Every metric of `videos` (clips averaged per video); where the store's dataset has classes
        paired with their time-reversed twin (its attrs say which), also the accuracy on those."""
        import numpy as np

        from trainers.runs import metrics

        probs = self.probabilities(model, videos, device, cfg)
        y = self.labels[videos]
        m = metrics.classification(y, probs, self.classes)
        pairs = self.view.reversed_pairs
        if pairs:
            keep = np.isin(np.asarray(self.classes)[y], pairs)
            m["reversed_pairs_top1"] = metrics.subset_accuracy(y, probs, keep)
        return m

    def report(self, run_dir: Path, summary: dict, history: list[dict]) -> None:
        """A finished run's tables, figures and report.md (trainers.runs.report)."""
        from trainers.runs import report

        report.write(run_dir, summary, history, self.classes)


KINDS: Registry[str] = Registry("task kind")
KINDS.add("head", "trainers.training.head_task", "a sequence head on a feature store")
KINDS.add("video-model", "trainers.training.clip_task", "a video model trained end to end on a frame store")
KINDS.add("joint-head", "trainers.training.joint", "a sequence head trained on several feature stores at once")
KINDS.add("joint-video-model", "trainers.training.joint_e2e", "a video model trained on several frame stores at once")


def get(name: str) -> TaskKind:
    """The kind registered as `name` (ValueError naming the allowed ones)."""
    return importlib.import_module(KINDS.get(name)).KIND


def kinds() -> list[TaskKind]:
    return [get(n) for n in KINDS.names()]


def for_inputs(inputs: object) -> TaskKind | None:
    """The kind whose run names its store under these lineage inputs; None when none does."""
    if not isinstance(inputs, dict):
        return None
    def names_store(value) -> bool:  # a path, or (joint runs) a list of paths
        return isinstance(value, str) or (isinstance(value, list) and len(value) > 1
                                          and all(isinstance(v, str) for v in value))
    return next((k for k in kinds() if all(names_store(inputs.get(key)) for key in k.inputs)), None)


def store_of(inputs: dict, kind: TaskKind) -> tuple[Path | list[Path], str]:
    """(store path, fingerprint) a run of `kind` recorded in its lineage inputs (a joint run: the
    paths of its stores, their joint fingerprint)."""
    path_key, fp_key = kind.inputs
    value = inputs[path_key]
    return ([Path(v) for v in value] if isinstance(value, list) else Path(value)), inputs[fp_key]
