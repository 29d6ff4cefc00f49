"""The training loop, as plain functions: `train_one_epoch`, `predict`, `fit`.

A checkpoint is a dict (model, optimizer, scheduler, epoch, history, best, early-stopping state,
config). `last.pt` is written after every epoch (to a temporary file, then renamed, so a kill
never leaves half a checkpoint); `best.pt` holds the weights of the best validation accuracy.
Both hold tensors and plain Python values only and are read back with weights_only=True
(`read_checkpoint`): a checkpoint crafted to run code when unpickled is refused unread, and a
damaged or foreign one is one line naming the file.

Determinism: everything random in epoch e (shuffle, which view, dropout) is seeded by
(seed, e) alone, so a run killed at any moment and started again from `last.pt` ends with the
same weights and metrics as one that was never interrupted.
"""
from __future__ import annotations

import errno
import logging
import math
import pickle
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from pipeline.sampling import seed_for
from trainers import data, distributed, heads, limits, rundir

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("plateau", "exponential", "cosine", "none")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class LoopConfig:
    """What the training loop needs, whatever it trains (a head on features, a video model on clips)."""
    split: str | None = None       # None: the store's default (group-disjoint where groups exist)
    epochs: int = 30
    batch_size: int = 32           # videos per step
    accumulate: int = 1            # optimizer step every N batches: effective batch N x batch_size
    train_views: str = "augmented" # which stored view an epoch draws per video: augmented | all | clean
    optimizer: str = "adam"        # adam (the seed studies) | adamw (decoupled weight decay)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "plateau"     # plateau: ReduceLROnPlateau on val accuracy, as the seeds
    lr_factor: float = 0.5         # plateau: multiply by this after `lr_patience` flat epochs
    lr_patience: int = 3
    gamma: float = 0.95            # exponential: lr *= gamma per epoch
    class_weighted: bool = False   # cross-entropy weighted by inverse class frequency in train
    patience: int = 10             # early stopping: epochs without val accuracy improving by min_delta
    min_delta: float = 0.001
    seed: int = 0
    device: str = "auto"           # auto: cuda when present
    precision: str = "auto"        # auto: bf16 autocast on cuda and on CPUs with native bf16 (avx512_bf16,
                                   # AMX: 1.4x faster for lstm), else fp32; fp32 | bf16 to choose

    # whole-number settings: (field, lowest, highest)
    WHOLE = (("epochs", 1, 1_000_000), ("batch_size", 1, 1 << 20), ("accumulate", 1, 1 << 20),
             ("lr_patience", 0, 1_000_000), ("patience", 1, 1_000_000), ("seed", -(2**63), 2**63 - 1))
    # real settings: (field, above, at least, below); every one finite
    REAL = (("lr", 0.0, None, None), ("weight_decay", None, 0.0, None), ("min_delta", None, 0.0, None),
            ("lr_factor", 0.0, None, 1.0), ("gamma", 0.0, None, None))

    def check_values(self) -> None:
        """Every setting in its allowed set or range, whatever machine this is: ValueError naming
        the value and what is allowed (nan and inf are never allowed)."""
        checks = ((self.optimizer, OPTIMIZERS, "optimizer"), (self.scheduler, SCHEDULERS, "scheduler"),
                  (self.device, DEVICES, "device"), (self.precision, PRECISIONS, "precision"),
                  (self.train_views, data.TRAIN_VIEWS, "train-views"))
        for value, allowed, name in checks:
            if value not in allowed:
                raise ValueError(f"--{name} {value!r} is not supported; allowed: {', '.join(allowed)}")
        for name, lo, hi in self.WHOLE:
            limits.whole(name, getattr(self, name), lo, hi)
        for name, above, at_least, below in self.REAL:
            limits.real(name, getattr(self, name), above=above, at_least=at_least, below=below)
        if not (self.split is None or isinstance(self.split, str)):
            raise ValueError(f"--split {self.split!r} is not a split name; allowed: a name the store lists, or none")
        if not isinstance(self.class_weighted, bool):
            raise ValueError(f"--class-weighted {self.class_weighted!r} is not supported; allowed: true, false")
        limits.finite(self)

    def validate(self) -> None:
        """check_values, and the device asked for is here."""
        self.check_values()
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible here; use --device cpu or auto")

    # settings that change how fast a run goes, never what it computes: left out of its fingerprint,
    # so changing them resumes (or finds up to date) the same run
    EXECUTION_ONLY = ()
    CPU_BF16 = True   # may precision auto pick bf16 on a CPU with native bf16?

    def as_dict(self) -> dict:
        return asdict(self)

    def fingerprint_dict(self) -> dict:
        return {k: v for k, v in self.as_dict().items() if k not in self.EXECUTION_ONLY}


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """A sequence head trained on cached features."""
    head: str = "lstm"
    head_options: heads.HeadConfig = field(default_factory=heads.HeadConfig)

    def check_values(self) -> None:
        heads.check_options(self.head, self.head_options)
        super().check_values()


class Task(Protocol):
    """What `fit` trains on: the data and the model it builds, behind five names."""
    labels: np.ndarray      # [N] class of every video
    classes: list[str]

    def build(self, cfg, train: np.ndarray | None) -> nn.Module: ...           # a fresh model (seeded by fit);
                                                                               # None: weights come from a checkpoint
    def batches(self, cfg, videos: np.ndarray, epoch: int,                     # CPU (x, y) in a seeded order,
                world: distributed.World) -> Iterable: ...                     # this rank's share
    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...  # on the device
    def predict(self, model: nn.Module, videos: np.ndarray, device: torch.device, cfg) -> np.ndarray: ...


def resolve_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


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

class FeatureTask:
    """A head on a feature store: batches are gathered feature sequences (B, T, D)."""

    def __init__(self, fs: data.FeatureSet):
        self.fs, self.labels, self.classes = fs, fs.labels, fs.classes

    def build(self, cfg: TrainConfig, train: np.ndarray | None) -> nn.Module:
        """The head, with Standardize set from the training videos' features (all their samples);
        train=None skips that pass (a checkpoint about to be loaded holds the statistics)."""
        mean, std = data.feature_stats(self.fs, train) if train is not None else (None, None)
        return heads.build(cfg.head, self.fs.dim, len(self.classes), self.fs.frames, cfg.head_options, mean, std)

    def batches(self, cfg: LoopConfig, videos: np.ndarray, epoch: int, world: distributed.World = distributed.World()):
        rng = np.random.default_rng(seed_for(cfg.seed, "epoch", epoch))
        order = videos[rng.permutation(len(videos))]
        samples = data.train_samples(self.fs.view_index, order, rng, cfg.train_views)
        order, samples = distributed.shard(np.stack([order, samples], axis=1), world).T
        for a in range(0, len(order), cfg.batch_size):
            vb, sb = order[a:a + cfg.batch_size], samples[a:a + cfg.batch_size]
            yield torch.from_numpy(data.gather(self.fs, vb, sb)), torch.from_numpy(self.labels[vb])

    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x

    def predict(self, model: nn.Module, videos: np.ndarray, device: torch.device, cfg: LoopConfig | None = None,
                batch: int = 256) -> np.ndarray:
        return predict(model, self.fs, videos, device, batch, cfg)


def make_optimizer(cfg: TrainConfig, model: nn.Module):
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, opt):
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.lr_factor,
                                                          patience=cfg.lr_patience)
    if cfg.scheduler == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


def class_weights(labels: np.ndarray, classes: int) -> torch.Tensor:
    """n / (C * n_c) per class present in `labels`; 1 for absent classes (they never occur)."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


def train_one_epoch(model: nn.Module, task: Task, videos: np.ndarray, cfg: LoopConfig, epoch: int,
                    opt, loss_fn: nn.Module, device: torch.device,
                    world: distributed.World = distributed.World()) -> tuple[float, float]:
    """One pass over `videos` in a (seed, epoch)-determined order, view draw, crop and dropout:
    (mean loss, accuracy), over every rank's share under DDP. With accumulate=N the optimizer steps
    every N batches. The running sums stay on the device (no host sync per step)."""
    torch.manual_seed(seed_for(cfg.seed, "dropout", epoch))
    gen = torch.Generator().manual_seed(seed_for(cfg.seed, "crop", epoch))
    model.train()
    sums, seen, i = torch.zeros(2, dtype=torch.float64, device=device), 0, 0   # loss sum, right answers
    opt.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(task.batches(cfg, videos, epoch, world), 1):
        x = task.prepare(x.to(device, non_blocking=True), gen)
        y = y.to(device)
        with autocast(cfg, device):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        (loss / cfg.accumulate if cfg.accumulate > 1 else loss).backward()
        if i % cfg.accumulate == 0:
            opt.step()
            opt.zero_grad(set_to_none=True)
        sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double()])
        seen += len(y)
    if i % cfg.accumulate:
        opt.step()
        opt.zero_grad(set_to_none=True)
    total_loss, correct, seen = distributed.all_sum(torch.cat([sums, sums.new_tensor([seen])]), world).tolist()
    return total_loss / max(1, seen), correct / max(1, seen)


@torch.inference_mode()
def predict(model: nn.Module, fs: data.FeatureSet, videos: np.ndarray, device: torch.device,
            batch: int = 256, cfg: LoopConfig | None = None) -> np.ndarray:
    """(len(videos), C) video probabilities: softmax of every clean clip, averaged per video."""
    model.eval()
    clips = data.eval_samples(fs)
    out = np.zeros((len(videos), len(fs.classes)), np.float32)
    for a in range(0, len(videos), batch):
        vb = videos[a:a + batch]
        rows = np.repeat(vb, len(clips))
        x = torch.from_numpy(data.gather(fs, rows, np.tile(clips, len(vb)))).to(device)
        with autocast(cfg or LoopConfig(precision="fp32"), device):
            logits = model(x)
        p = torch.softmax(logits.float(), dim=1).cpu().numpy().reshape(len(vb), len(clips), -1)
        out[a:a + len(vb)] = p.mean(axis=1)
    return out


def _loss_and_acc(probs: np.ndarray, y: np.ndarray, weight: torch.Tensor | None) -> tuple[float, float]:
    if len(y) == 0:
        return float("nan"), float("nan")
    logp = torch.log(torch.from_numpy(probs).clamp_min(1e-12))
    loss = nn.functional.nll_loss(logp, torch.from_numpy(y), weight=weight)
    return float(loss), float((probs.argmax(1) == y).mean())


def _plain(obj):
    """`obj` with numpy scalars and arrays as Python numbers and lists and paths as str: what a
    checkpoint read with weights_only=True can hold besides tensors."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _save(obj: dict, path: Path) -> None:
    """torch.save to a temporary file renamed into place: a kill leaves the old checkpoint, a full
    disk (OSError ENOSPC, which goes on to the caller) leaves no temporary file."""
    rundir.replace_atomically(path, lambda tmp: torch.save(obj, tmp))


# ---- reading checkpoints back ------------------------------------------------------------------------

def _why_unreadable(e: Exception) -> str:
    """torch.load's error for a damaged or foreign file, in a few words."""
    if isinstance(e, pickle.UnpicklingError):
        found = re.search(r"unsupported global:? (?:GLOBAL )?[\w.]+|unsupported operand \d+", str(e), re.IGNORECASE)
        return ("it holds more than tensors and plain values, which har never writes (refused unread"
                + (f": {found.group(0)}" if found else "") + ")")
    if isinstance(e, EOFError):
        return "it ends early (empty or truncated)"
    if isinstance(e, OSError) and e.errno == errno.EINVAL:
        return "not a complete checkpoint archive (truncated or damaged)"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
    return f"{type(e).__name__}: {first[:200]}"


def read_checkpoint(path: Path, device: torch.device | str = "cpu", remedy: str = "retrain or restore it") -> dict:
    """A checkpoint dict of har's, read with weights_only=True: tensors and plain values only, so a
    file crafted to run code when unpickled is refused before any of it runs. RunError naming the
    file when it is missing, truncated, damaged, crafted or has no "model" weights; other OSErrors
    (a failing disk) go on as they are."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise rundir.RunError(f"{path} is missing; {remedy}") from None
    except OSError as e:
        if e.errno not in (None, errno.EINVAL, errno.EISDIR):  # the disk's or the system's, not the bytes'
            raise
        raise rundir.RunError(f"{path} is not a readable har checkpoint: {_why_unreadable(e)}; {remedy}") from None
    except Exception as e:  # torch.load's errors for damaged bytes are no documented set: zip reader
        # (RuntimeError, OSError EINVAL), pickle, EOF, KeyError, UnicodeDecodeError ...
        raise rundir.RunError(f"{path} is not a readable har checkpoint: {_why_unreadable(e)}; {remedy}") from None
    weights = ck.get("model") if isinstance(ck, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise rundir.RunError(f"{path} is not a readable har checkpoint: no \"model\" weights in it; {remedy}")
    return ck


def load_weights(model: nn.Module, ck: dict, path: Path, remedy: str = "retrain or restore it") -> nn.Module:
    """`model` with the checkpoint's weights; RunError naming the file when a name is missing or
    extra or a shape differs (another model's checkpoint, or a tampered one)."""
    want = model.state_dict()
    got = ck["model"]
    missing, extra = [k for k in want if k not in got], [k for k in got if k not in want]
    wrong = [k for k in want if k in got and tuple(got[k].shape) != tuple(want[k].shape)]
    if missing or extra or wrong:
        if wrong:
            k = wrong[0]
            what = f"{k} has shape {tuple(got[k].shape)}, this run's model {tuple(want[k].shape)}"
        else:
            what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}"
        more = len(missing) + len(extra) + len(wrong) - 1
        raise rundir.RunError(f"{path} does not fit this run's model ({what}{f' and {more} more' if more else ''}); "
                              f"{remedy}")
    model.load_state_dict(got)
    return model


# what fit's resumable state holds: name -> allowed types
STATE = {"epoch": int, "history": list, "best_acc": (int, float), "best_loss": (int, float), "best_epoch": int,
         "stale": int, "done": bool}
LAST_REMEDY = "delete it to train this run from the start"


def _resume(ck: dict, path: Path, model: nn.Module, opt, sched) -> dict:
    """Load last.pt's model, optimizer, scheduler and loop state; RunError naming the file when any
    part is missing or does not fit."""
    state = ck.get("state")
    if not isinstance(state, dict) or any(not isinstance(state.get(k), t) for k, t in STATE.items()) \
            or not all(isinstance(h, dict) for h in state["history"]) or len(state["history"]) != state["epoch"]:
        raise rundir.RunError(f"{path} is not a readable har checkpoint: its training state is missing or damaged; "
                              f"{LAST_REMEDY}")
    load_weights(model, ck, path, LAST_REMEDY)
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

def fit(cfg: LoopConfig, task: Task, split: data.Split, run_dir: Path, fingerprint: str,
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
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(cfg, opt)
    weight = class_weights(task.labels[split.train], len(task.classes)) if cfg.class_weighted else None
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device))
    val = split.val if len(split.val) else split.train
    state = {"epoch": 0, "history": [], "best_acc": -1.0, "best_loss": math.inf, "best_epoch": 0, "stale": 0,
             "done": False}
    last = run_dir / "last.pt"
    resumed = 0
    if last.exists():
        # an unreadable last.pt is refused, never skipped: har writes it atomically, so a damaged
        # one was not left by a kill, and training over it would destroy what is to be examined
        ck = read_checkpoint(last, device, LAST_REMEDY)
        if ck.get("fingerprint") == fingerprint:
            state = _resume(ck, last, model, opt, sched)
            resumed = state["epoch"]
            logger.info("resuming %s after epoch %d", run_dir, resumed)
    trained = distributed.wrap(model, world, device)
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        if state["done"] or (stop_after is not None and epoch > stop_after):
            break
        te = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        train_loss, train_acc = train_one_epoch(trained, task, split.train, cfg, epoch, opt, loss_fn, device, world)
        val_loss, val_acc = _loss_and_acc(task.predict(model, val, device, cfg), task.labels[val],
                                          None if weight is None else weight)
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(val_acc)
        elif sched is not None:
            sched.step()
        better = bool(val_acc > state["best_acc"] or (val_acc == state["best_acc"] and val_loss < state["best_loss"]))
        if better and world.main:
            _save({"model": model.state_dict(), "epoch": epoch, "val_acc": float(val_acc),
                   "val_loss": float(val_loss), "fingerprint": fingerprint}, run_dir / "best.pt")
        state["stale"] = 0 if val_acc > state["best_acc"] + cfg.min_delta else state["stale"] + 1
        if better:
            state.update(best_acc=val_acc, best_loss=val_loss, best_epoch=epoch)
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
               "val_acc": val_acc, "best": better, "seconds": time.perf_counter() - te}
        state["history"].append(_plain(row))
        state["epoch"] = epoch
        state["done"] = state["stale"] >= cfg.patience or epoch == cfg.epochs
        if world.main:
            _save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                   "scheduler": None if sched is None else _plain(sched.state_dict()), "state": _plain(state),
                   "config": _plain(cfg.as_dict()), "fingerprint": fingerprint}, last)
            if on_epoch:
                on_epoch(row)
    distributed.barrier(world)
    return FitResult(state["history"], state["best_epoch"], state["best_acc"],
                     state["done"] and state["epoch"] < cfg.epochs, resumed, time.perf_counter() - t0)


def load_best(model: nn.Module, run_dir: Path, device: torch.device) -> nn.Module:
    """`model` (freshly built, same config) with the weights of run_dir/best.pt, in eval mode.
    RunError naming best.pt when it is unreadable or another model's."""
    path = Path(run_dir) / "best.pt"
    return load_weights(model, read_checkpoint(path, device), path).to(device).eval()
