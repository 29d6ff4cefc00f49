"""Data-parallel training under torchrun (DDP): one process per GPU (or per CPU slot with gloo).

    torchrun --nproc-per-node 8 -m cli train-e2e r2plus1d_18 --dataset ucf101 --batch-size 16

Every rank walks the same seeded epoch order and takes its own share of each epoch (padded by
repetition so every rank does the same number of steps); gradients are averaged by DDP, so the
effective batch is world x --batch-size. The epoch's training loss and accuracy are summed over
every rank's share. Validation runs on every rank (same weights, same answer); only rank 0 writes
checkpoints, history, metrics and the report.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """The torchrun world of this process (size 1 outside torchrun); joins the process group once."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def device_for(w: World, name: str) -> torch.device | None:
    """cuda:LOCAL_RANK for a multi-process CUDA run; None to let the caller decide."""
    if w.size > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", w.local_rank)
    return None


def shard(items: np.ndarray, w: World) -> np.ndarray:
    """This rank's share of `items` (rows r, r + size, ...), padded by repeating the first rows so
    that every rank gets the same count (as torch's DistributedSampler does)."""
    if w.size == 1:
        return items
    pad = (-len(items)) % w.size
    full = np.concatenate([items, items[:pad]]) if pad else items
    return full[w.rank::w.size]


def wrap(model: torch.nn.Module, w: World, device: torch.device) -> torch.nn.Module:
    if w.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(t: torch.Tensor, w: World) -> torch.Tensor:
    """`t` summed over every rank (itself outside torchrun)."""
    if w.size > 1:
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(w: World) -> None:
    if w.size > 1:
        import torch.distributed as dist

        dist.barrier()
