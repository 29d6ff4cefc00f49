"""Kinds of training task, in one registry: what a run trains on and how har reads it back.

    head          trainers.training.head_task   a sequence head on a feature store (har train-head, cv)
    video-model   trainers.training.clip_task   a video model end to end on a frame store (har train-e2e)
    joint-head    trainers.training.joint       a sequence head on several feature stores at once (train-head, 2+ --features)
    joint-video-model  trainers.training.joint_e2e  a video model on several frame stores at once (train-e2e, 2+ --frames)

Each kind lives in its own module, which defines its `TaskKind` as `KIND`. The registry names
that module and imports it the first time the kind is asked for (as backbones name their
torchvision builder), so `runs` and `predictor` load, resume, evaluate and use any run through
here without importing a concrete task, and no module imports one that imports it back. A new
kind is one new module and one line below.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.registry import Registry


@dataclass(frozen=True)
class TaskKind:
    name: str
    config: type                       # its frozen training config (a loop.LoopConfig), as config.json holds it
    store: str                         # the kind of store it trains on: "features" | "frames"
    inputs: tuple[str, str]            # lineage.json "inputs": (store path key, store fingerprint key)
    card: dict[str, type]              # the model card's entries besides the recipe (lineage.json "predict")
    open: Callable[..., Any]           # (store path, config) -> the loop.Task on it (for evaluate)
    scorer: Callable[..., Callable]    # (run folder, config, card, device) -> uint8 clips (K, T, H, W, 3)
                                       # -> (K, C) logits, the run's own chain (for predict)
    chain: Callable[..., Any]          # (run folder, config, card, device) -> trainers.models.chain.Chain: the same
                                       # chain with gradients and layers reachable (for explain)
    joint: bool = False                # trained on several stores at once: one output layer per dataset


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
