"""Clips for end-to-end models, straight from the frame store: no video decoding while training.

DataLoader workers only read and decompress (one Zarr chunk = one stored sample); random crop
and flip happen per batch on the device that trains (`random_crop_flip`), so on a GPU the
augmentation costs the CPU nothing. Training draws, per video and epoch, one stored sample (a
random clip of a random view, as the feature heads do); evaluation takes every clean clip of a
video (and optionally three crops) and averages.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import store
from pipeline.sampling import seed_for


@dataclass(frozen=True)
class ClipStore:
    path: Path
    labels: np.ndarray      # [N] int64
    groups: np.ndarray      # [N]
    ok: np.ndarray          # [N] bool
    clip_index: np.ndarray  # [N, S]
    view_index: np.ndarray  # [N, S]
    splits: dict
    attrs: dict
    videos: np.ndarray      # [N] str

    @property
    def classes(self) -> list[str]:
        return list(self.attrs["classes"])

    def failed(self) -> list[str]:
        return [str(v) for v in self.videos[~self.ok]]

    @property
    def frame_shape(self) -> tuple[int, int, int]:  # (T, H, W)
        r = self.attrs["recipe"]
        return r["frames"], r["height"], r["width"]


def open_store(path: Path) -> ClipStore:
    path = Path(path)
    if not path.exists():
        raise store.StoreError(f"frame store {path} does not exist; run `har extract` first")
    with store.StoreReader(path) as r:
        if r.attrs.get("kind") != "frames":
            raise store.StoreError(f"{path} is a {r.attrs.get('kind')} store; end-to-end models train on a frame store")
        return ClipStore(path, r.read("label").astype(np.int64), r.read("group").astype(np.int64),
                         r.read("status") == store.OK, r.read("clip_index"), r.read("view_index"),
                         {n.split("/", 1)[1]: r.read(n) for n in r.names() if n.startswith("split/")}, r.attrs,
                         r.read("video"))


class ClipDataset(torch.utils.data.Dataset):
    """(video, sample) pairs -> (uint8 clip (T, H, W, 3), label). Each worker process opens the
    store once, lazily (a Zarr or HDF5 handle does not cross a fork well)."""

    def __init__(self, path: Path, items: np.ndarray, labels: np.ndarray):
        self.path, self.items, self.labels = str(path), np.asarray(items), labels
        self._frames = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        if self._frames is None:
            self._frames = store.StoreReader(Path(self.path))["frames"]
        v, s = (int(x) for x in self.items[i])
        return torch.from_numpy(np.asarray(self._frames[v, s])), int(self.labels[v])


def train_items(cs: ClipStore, videos: np.ndarray, seed: int, epoch: int, which: str = "augmented") -> np.ndarray:
    """(len(videos), 2) (video, sample) pairs in a (seed, epoch)-shuffled order, one sample per
    video drawn as the feature heads draw theirs."""
    from trainers.data import train_samples

    rng = np.random.default_rng(seed_for(seed, "clips", epoch))
    order = videos[rng.permutation(len(videos))]
    return np.stack([order, train_samples(cs.view_index, order, rng, which)], axis=1)


def eval_items(cs: ClipStore, videos: np.ndarray) -> np.ndarray:
    """Every clean sample (one per clip) of each video, video-major: (len(videos) * K, 2)."""
    clean = np.flatnonzero(cs.view_index[0] == 0)
    return np.stack([np.repeat(videos, len(clean)), np.tile(clean, len(videos))], axis=1)


def loader(cs: ClipStore, items: np.ndarray, batch_size: int, workers: int, pin: bool = False):
    """Batches of (uint8 (B, T, H, W, 3), int64 (B,)) in the order of `items`."""
    return torch.utils.data.DataLoader(ClipDataset(cs.path, items, cs.labels), batch_size=batch_size, shuffle=False,
                                       num_workers=workers, pin_memory=pin, persistent_workers=False,
                                       prefetch_factor=4 if workers else None)


def random_crop_flip(clips: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T, H, W, 3) -> (B, T, size, size, 3): a random size x size window and a coin-flip
    horizontal mirror per clip (the same for all its frames), on whatever device `clips` is.
    `generator` lives on the CPU so the draws are the same on every device."""
    b, _, h, w, _ = clips.shape
    if size > min(h, w):
        raise ValueError(f"--crop {size} is larger than the stored frames ({h}x{w})")
    tops = torch.randint(0, h - size + 1, (b,), generator=generator).tolist()
    lefts = torch.randint(0, w - size + 1, (b,), generator=generator).tolist()
    flips = (torch.rand(b, generator=generator) < 0.5).tolist()
    out = []
    for i in range(b):
        c = clips[i, :, tops[i]:tops[i] + size, lefts[i]:lefts[i] + size]
        out.append(c.flip(2) if flips[i] else c)
    return torch.stack(out)


def centre_crops(clips: torch.Tensor, size: int, three: bool = False) -> list[torch.Tensor]:
    """The centred size x size window, or three along the longer side (start, centre, end)."""
    _, _, h, w, _ = clips.shape
    top, left = (h - size) // 2, (w - size) // 2
    if not three:
        return [clips[:, :, top:top + size, left:left + size]]
    if w >= h:
        return [clips[:, :, top:top + size, x:x + size] for x in (0, left, w - size)]
    return [clips[:, :, y:y + size, left:left + size] for y in (0, top, h - size)]
