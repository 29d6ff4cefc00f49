"""The training loop, as plain functions, for any task: `train_one_epoch`, `fit`, `load_best`.

It knows nothing of heads or clips. A task (trainers.training.tasks: a head on features, a video model on
clips) gives the data and the model behind the names of `tasks.Task`; `fit` trains it, selects on
validation accuracy (averaged over the last `val_window` epochs), early-stops and checkpoints
(trainers.training.checkpoint): `last.pt` after every epoch, `best.pt` with the weights of the best.

Determinism: everything random in epoch e (shuffle, which view, dropout) is seeded by
(seed, e) alone, so a run killed at any moment and started again from `last.pt` ends with the
same weights and metrics as one that was never interrupted.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pipeline.core import device as devices
from pipeline.core.lineage import seed_for
from trainers.training import checkpoint, distributed, optim
from trainers.data import views
from trainers.runs import rundir
from trainers.training.config import LoopConfig
from trainers.training.losses import Loss

if TYPE_CHECKING:   # annotations only: tasks never imports the loop
    from trainers.training.tasks import Task

logger = logging.getLogger(__name__)


def warmup_factor(cfg: LoopConfig, epoch: int, batch: int, batches: int) -> float:
    """The learning rate's share at `batch` (1-based) of `batches` in `epoch` (1-based): rising
    linearly per step to 1 at the end of `warmup_epochs`; 1 without warm-up."""
    if cfg.warmup_epochs <= 0:
        return 1.0
    return min(1.0, ((epoch - 1) * batches + batch) / (cfg.warmup_epochs * batches))


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when present, else cpu; cpu; cuda (ValueError when none is visible)."""
    return torch.device(devices.resolve(name))


def cpu_has_bf16() -> bool:
    """Does this CPU multiply bf16 natively (AVX512-BF16 or AMX)? Else bf16 is emulated, slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device, cpu_bf16: bool = True) -> str:
    """auto: bf16 on CUDA; on the CPU bf16 where it is native and `cpu_bf16` (the config's CPU_BF16)."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (cpu_bf16 and cpu_has_bf16()) else "fp32"


def precision_of(cfg: LoopConfig, device: torch.device) -> str:
    return resolve_precision(cfg.precision, device, cfg.CPU_BF16)


def autocast(cfg: LoopConfig, device: torch.device):
    """bf16 autocast for precision bf16 (or auto where bf16 is native); a no-op context for fp32."""
    bf16 = precision_of(cfg, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_val_acc: float
    stopped_early: bool
    resumed_from: int           # epochs found done in last.pt (0 = fresh)
    seconds: float


# ---- pieces ----------------------------------------------------------------------------------------

def class_weights(labels: np.ndarray, classes: int) -> torch.Tensor:
    """n / (C * n_c) per class present in `labels`; 1 for absent classes (they never occur)."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


def train_one_epoch(model: nn.Module, task: Task, videos: np.ndarray, cfg: LoopConfig, epoch: int,
                    opt, loss_fn: Loss, device: torch.device,
                    world: distributed.World = distributed.World()) -> tuple[float, float]:
    """One pass over `videos` in a (seed, epoch)-determined order, view draw, crop and dropout:
    (mean loss, accuracy), over every rank's share under DDP. With accumulate=N the optimizer steps
    every N batches. The running sums stay on the device (no host sync per step)."""
    torch.manual_seed(seed_for(cfg.seed, "dropout", epoch))
    gen = torch.Generator().manual_seed(seed_for(cfg.seed, "crop", epoch))
    model.train()
    sums, seen, i = torch.zeros(2, dtype=torch.float64, device=device), 0, 0   # loss sum, right answers
    base = [g["lr"] for g in opt.param_groups]   # the schedule's rates for this epoch; warm-up scales them
    per_epoch = task.epoch_videos(cfg, videos)
    batches = max(1, -(-per_epoch // max(1, world.size) // cfg.batch_size))

    def step(batch: int) -> None:
        f = warmup_factor(cfg, epoch, batch, batches)
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * f
        opt.step()
        opt.zero_grad(set_to_none=True)

    opt.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(task.batches(cfg, videos, epoch, world), 1):
        x = task.prepare(x.to(device, non_blocking=True), gen)
        y = y.to(device)
        with autocast(cfg, device):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        (loss / cfg.accumulate if cfg.accumulate > 1 else loss).backward()
        if i % cfg.accumulate == 0:
            step(i)
        right = loss_fn.correct(logits.detach(), y)
        sums += torch.stack([loss.detach().double() * len(y), right.double()])
        seen += len(y)
    if i % cfg.accumulate:
        step(i)
    for g, lr in zip(opt.param_groups, base):  # the scheduler goes on from the epoch's own rates
        g["lr"] = lr
    total_loss, correct, seen = distributed.all_sum(torch.cat([sums, sums.new_tensor([seen])]), world).tolist()
    return total_loss / max(1, seen), correct / max(1, seen)


def trailing_mean(rows: list[dict], key: str) -> float:
    """The mean of rows' `key`: validation accuracy or loss over the last `val_window` epochs, what
    selects the best checkpoint and counts for early stopping (from the first full window on:
    a lucky first epoch is never its own mean). With 24 validation videos one epoch's accuracy
    moves in steps of 4 points; a few epochs' mean is a steadier criterion."""
    return float(np.mean([r[key] for r in rows]))


# what fit's resumable state holds: name -> allowed types
STATE = {"epoch": int, "history": list, "best_acc": (int, float), "best_loss": (int, float), "best_epoch": int,
         "stale": int, "done": bool}
LAST_REMEDY = "delete it to train this run from the start"


def _resume(ck: dict, path: Path, model: nn.Module, opt, sched) -> dict:
    """Load last.pt's model, optimizer, scheduler and loop state; RunError naming the file when any
    part is missing or does not fit."""
    state = ck.get("state")
    if not isinstance(state, dict) or any(not isinstance(state.get(k), t) for k, t in STATE.items()) \
            or not all(isinstance(h, dict) and all(isinstance(h.get(k), (int, float)) for k in ("val_acc", "val_loss"))
                       for h in state["history"]) or len(state["history"]) != state["epoch"]:
        raise rundir.RunError(f"{path} is not a readable har checkpoint: its training state is missing or damaged; "
                              f"{LAST_REMEDY}")
    checkpoint.load_weights(model, ck, path, LAST_REMEDY)
    try:
        opt.load_state_dict(ck["optimizer"])
        if sched is not None:
            sched.load_state_dict(ck["scheduler"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        raise rundir.RunError(f"{path} is not a readable har checkpoint: its optimizer or scheduler state does not "
                              f"fit ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                              f"{LAST_REMEDY}") from None
    return state


# ---- the loop --------------------------------------------------------------------------------------

def fit(cfg: LoopConfig, task: Task, split: views.Split, run_dir: Path, fingerprint: str,
        on_epoch: Callable[[dict], None] | None = None, stop_after: int | None = None) -> FitResult:
    """Train on split.train, select on split.val; checkpoints in run_dir. Resumes from
    run_dir/last.pt when it belongs to the same `fingerprint`. `stop_after` ends the call after
    that many epochs in total, as an interruption would (tests)."""
    t0 = time.perf_counter()
    world = distributed.world()
    device = distributed.device_for(world, cfg.device) or resolve_device(cfg.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":  # fixed input shapes: let cuDNN time its algorithms once (not bitwise reproducible)
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    model = task.build(cfg, split.train).to(device)  # the same initial weights on every rank (same seed)
    opt = optim.make_optimizer(cfg, task.param_groups(cfg, model))
    sched = optim.make_scheduler(cfg, opt)
    weight = class_weights(task.labels[split.train], len(task.classes)) if cfg.class_weighted else None
    loss_fn = task.loss(cfg, weight).to(device)
    val = split.val if len(split.val) else split.train
    state = {"epoch": 0, "history": [], "best_acc": -1.0, "best_loss": math.inf, "best_epoch": 0, "stale": 0,
             "done": False}
    last = run_dir / "last.pt"
    resumed = 0
    if last.exists():
        # an unreadable last.pt is refused, never skipped: har writes it atomically, so a damaged
        # one was not left by a kill, and training over it would destroy what is to be examined
        ck = checkpoint.read(last, device, LAST_REMEDY)
        if ck.get("fingerprint") == fingerprint:
            state = _resume(ck, last, model, opt, sched)
            resumed = state["epoch"]
            logger.info("resuming %s after epoch %d", run_dir, resumed)
    trained = distributed.wrap(model, world, device)
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        if state["done"] or (stop_after is not None and epoch > stop_after):
            break
        te = time.perf_counter()
        lr = opt.param_groups[-1]["lr"]  # the output layer's (with per-layer rates the others are lower)
        train_loss, train_acc = train_one_epoch(trained, task, split.train, cfg, epoch, opt, loss_fn, device, world)
        val_loss, val_acc = task.score(task.probabilities(model, val, device, cfg), val, weight)
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(val_acc)
        elif sched is not None:
            sched.step()
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
               "val_acc": val_acc, "best": False, "seconds": time.perf_counter() - te}
        window = min(cfg.val_window, cfg.epochs)  # epochs before the first full window are not chosen
        better = False
        if epoch >= window:
            recent = [*state["history"][len(state["history"]) - window + 1:], row]
            acc, loss = trailing_mean(recent, "val_acc"), trailing_mean(recent, "val_loss")
            better = bool(acc > state["best_acc"] or (acc == state["best_acc"] and loss < state["best_loss"]))
            state["stale"] = 0 if acc > state["best_acc"] + cfg.min_delta else state["stale"] + 1
            if better:
                state.update(best_acc=acc, best_loss=loss, best_epoch=epoch)
        if better and world.main:
            checkpoint.save({"model": model.state_dict(), "epoch": epoch, "val_acc": float(val_acc),
                   "val_loss": float(val_loss), "fingerprint": fingerprint}, run_dir / "best.pt")
        row["best"] = better
        state["history"].append(checkpoint.plain(row))
        state["epoch"] = epoch
        state["done"] = state["stale"] >= cfg.patience or epoch == cfg.epochs
        if world.main:
            checkpoint.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                   "scheduler": None if sched is None else checkpoint.plain(sched.state_dict()), "state": checkpoint.plain(state),
                   "config": checkpoint.plain(cfg.as_dict()), "fingerprint": fingerprint}, last)
            if on_epoch:
                on_epoch(row)
    distributed.barrier(world)
    best_val = state["history"][state["best_epoch"] - 1]["val_acc"] if state["best_epoch"] else state["best_acc"]
    return FitResult(state["history"], state["best_epoch"], best_val,
                     state["done"] and state["epoch"] < cfg.epochs, resumed, time.perf_counter() - t0)


def load_best(model: nn.Module, run_dir: Path, device: torch.device) -> nn.Module:
    """`model` (freshly built, same config) with the weights of run_dir/best.pt, in eval mode.
    RunError naming best.pt when it is unreadable or another model's."""
    path = Path(run_dir) / "best.pt"
    return checkpoint.load_weights(model, checkpoint.read(path, device), path).to(device).eval()
