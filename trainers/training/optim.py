"""Optimizers and learning-rate schedules, one registry each: the name in a config chooses.

Light on purpose: torch is imported when an entry is built, so a config can check its names here
without importing torch (trainers.training.config).
"""
from __future__ import annotations

from collections.abc import Callable

from pipeline.core.registry import Registry

OPTIMIZERS: Registry[Callable] = Registry("optimizer")   # (parameters, config) -> optimizer
SCHEDULERS: Registry[Callable] = Registry("scheduler")   # (optimizer, config) -> scheduler or None


@OPTIMIZERS.register("adam", "Adam with L2 weight decay (the seed studies)")
def _adam(params, cfg):
    import torch

    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw", "AdamW: decoupled weight decay")
def _adamw(params, cfg):
    import torch

    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@SCHEDULERS.register("plateau", "lr x lr_factor after lr_patience epochs without val-accuracy gain (the seeds)")
def _plateau(opt, cfg):
    import torch

    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience)


@SCHEDULERS.register("exponential", "lr x gamma every epoch")
def _exponential(opt, cfg):
    import torch

    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.gamma)


@SCHEDULERS.register("cosine", "cosine annealing to 0 over the epochs")
def _cosine(opt, cfg):
    import torch

    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)


@SCHEDULERS.register("none", "a constant learning rate")
def _none(opt, cfg):
    return None


def make_optimizer(cfg, params):
    """The optimizer of `cfg` over `params`: parameters, or groups ({"params": [...], "lr": ...})."""
    return OPTIMIZERS.get(cfg.optimizer)(params, cfg)


def make_scheduler(cfg, opt):
    return SCHEDULERS.get(cfg.scheduler)(opt, cfg)
