"""Clips for end-to-end models, straight from the frame store: no video decoding while training.

DataLoader workers only read and decompress (one Zarr chunk = one stored sample); random crop
and flip happen per batch on the device that trains (`random_crop_flip`), so on a GPU the
augmentation costs the CPU nothing. Training draws, per video and epoch, one stored sample (a
random clip of a random view, as the feature heads do); evaluation takes every clean clip of a
video (and optionally three crops) and averages.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.core import location
from pipeline.stores import checksums, inputs, store
from pipeline.core.lineage import seed_for
from trainers.data import views


class ClipDataset(torch.utils.data.Dataset):
    """(video, sample) -> (uint8 clip (T, H, W, 3), label). Each worker process opens the store
    once, lazily (a Zarr or HDF5 handle does not cross a fork well)."""

    def __init__(self, path: Path, labels: np.ndarray, fingerprint: str = ""):
        self.path, self.labels, self.fingerprint = str(path), labels, fingerprint
        self._frames = self._sums = self._videos = None

    def _check_version(self) -> None:
        """StoreError when the store at `path` is no longer the version training began with."""
        with store.StoreReader(location.of(self.path)) as r:   # unfinished: a publish under way
            now = r.attrs.get("lineage", {}).get("fingerprint") if r.attrs.get("complete") else None
        if self.fingerprint and now != self.fingerprint:
            raise store.StoreError(f"{self.path} was replaced while training read it; nothing was mixed: "
                                   "run the same command again")

    def __getitem__(self, key: tuple[int, int]):
        if self._frames is None:
            self._check_version()
            r = store.StoreReader(location.of(self.path))
            self._frames, self._sums = r["frames"], np.asarray(r["checksum"][...])  # N x S uint32: small
            self._videos = r.read("video") if checksums.binds(r.attrs) else None        # what each checksum covers
        v, s = key
        # checked against its checksum: a lost or changed chunk stops training, never trains on zeros;
        # a store swapped in meanwhile fails its old checksums too, and is then named as replaced
        try:
            clip = inputs.read_sample(self._frames, self._sums, location.of(self.path), v, s,
                                      None if self._videos is None else self._videos[v])
        except store.DamagedStoreError:
            self._check_version()
            raise
        return torch.from_numpy(clip), int(self.labels[v])


class StackedClips(torch.utils.data.Dataset):
    """Several frame stores as one (a joint run, trainers.training.joint_e2e): video v of the joint numbering
    is video v - offsets[i] of store i (the last offset <= v), its label shifted by shifts[i] (that
    store's first output row)."""

    def __init__(self, sets: list[ClipDataset], offsets: list[int], shifts: list[int]):
        self.sets, self.offsets, self.shifts = sets, np.asarray(offsets), shifts

    def __getitem__(self, key: tuple[int, int]):
        v, s = key
        i = int(np.searchsorted(self.offsets, v, side="right")) - 1
        clip, y = self.sets[i][(v - int(self.offsets[i]), s)]
        return clip, y + self.shifts[i]


def _dataset(source) -> torch.utils.data.Dataset:
    """What a loader reads: a dataset as given, or a store's clips (a StoreView)."""
    if isinstance(source, torch.utils.data.Dataset):
        return source
    return ClipDataset(source.path, source.labels, source.fingerprint)


class _Items(torch.utils.data.Sampler):
    """The (video, sample) pairs of the current pass, in order; set before each pass."""

    def __init__(self):
        self.items: list[tuple[int, int]] = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class ClipLoader:
    """One DataLoader whose worker processes live for the whole run: each pass (a training epoch, an
    evaluation) hands it its own (video, sample) items. Forking fresh workers every epoch from a
    process that holds a CUDA context and a model cost seconds per epoch on a GPU machine (measured:
    the whole training pipeline ran at 0.2x the bare model). Call `close()` (or drop it) to stop
    the workers."""

    def __init__(self, cs: views.StoreView | torch.utils.data.Dataset, batch_size: int, workers: int, pin: bool = False,
                 persistent: bool = True):
        self._items = _Items()
        self.loader = torch.utils.data.DataLoader(
            _dataset(cs), batch_size=batch_size, sampler=self._items, num_workers=workers,
            pin_memory=pin, persistent_workers=persistent and workers > 0, prefetch_factor=4 if workers else None,
            generator=torch.Generator().manual_seed(0))  # its worker-seed draw leaves the global RNG (dropout) alone

    def __call__(self, items: np.ndarray):
        """Batches of (uint8 (B, T, H, W, 3), int64 (B,)) in the order of `items` ((N, 2) pairs)."""
        self._items.items = [(int(v), int(s)) for v, s in np.asarray(items).reshape(-1, 2)]
        return self.loader

    def close(self) -> None:
        it = self.loader._iterator  # the persistent workers' iterator, if one was started
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None


class _EpochBatches(torch.utils.data.Sampler):
    """Batches of (video, sample) keys for epochs start, start + 1, ... without end; each epoch's
    last batch may be short, as in a per-epoch loader."""

    def __init__(self, items_for: Callable[[int], np.ndarray], start: int, batch_size: int):
        self.items_for, self.start, self.batch_size = items_for, start, batch_size

    def __iter__(self):
        for epoch in itertools.count(self.start):
            items = [(int(v), int(s)) for v, s in self.items_for(epoch)]
            for i in range(0, len(items), self.batch_size):
                yield items[i:i + self.batch_size]


class EpochStream:
    """Training batches for consecutive epochs from one DataLoader iterator that never restarts, so
    the workers read the next epoch's first batches while this epoch's last ones train (a loader that
    restarts every epoch drains and refills its prefetch queue at each boundary: on an H100 the
    training thread waited for it 12-35 % of the time with 300-video epochs). `epoch(e)` yields
    exactly epoch e's batches; asking for any other epoch than the next one, or leaving an epoch
    unfinished, starts a fresh iterator at the asked epoch."""

    def __init__(self, cs: views.StoreView | torch.utils.data.Dataset, items_for: Callable[[int], np.ndarray],
                 batch_size: int, workers: int, pin: bool = False):
        self.cs, self.items_for, self.batch_size, self.workers, self.pin = cs, items_for, batch_size, workers, pin
        self._it, self._next = None, None

    def _start(self, epoch: int) -> None:
        self.close()
        loader = torch.utils.data.DataLoader(
            _dataset(self.cs), batch_sampler=_EpochBatches(self.items_for, epoch, self.batch_size),
            num_workers=self.workers, pin_memory=self.pin, prefetch_factor=4 if self.workers else None,
            generator=torch.Generator().manual_seed(0))
        self._it = iter(loader)

    def epoch(self, epoch: int):
        if self._it is None or epoch != self._next:
            self._start(epoch)
        self._next = None  # until this epoch's batches are all taken
        for _ in range(-(-len(self.items_for(epoch)) // self.batch_size)):
            yield next(self._it)
        self._next = epoch + 1

    def close(self) -> None:
        if self._it is not None and hasattr(self._it, "_shutdown_workers"):
            self._it._shutdown_workers()
        self._it, self._next = None, None


def train_items(cs: views.StoreView, videos: np.ndarray, seed: int, epoch: int, which: str = "augmented") -> np.ndarray:
    """(len(videos), 2) (video, sample) pairs in a (seed, epoch)-shuffled order, one sample per
    video drawn as the feature heads draw theirs."""
    rng = np.random.default_rng(seed_for(seed, "clips", epoch))
    order = videos[rng.permutation(len(videos))]
    return np.stack([order, views.train_samples(cs.view_index, order, rng, which)], axis=1)


def eval_items(cs: views.StoreView, videos: np.ndarray) -> np.ndarray:
    """Every clean sample (one per clip) of each video, video-major: (len(videos) * K, 2)."""
    clean = views.eval_samples(cs)
    return np.stack([np.repeat(videos, len(clean)), np.tile(clean, len(videos))], axis=1)


def loader(cs: views.StoreView, items: np.ndarray, batch_size: int, workers: int, pin: bool = False):
    """One pass: batches of (uint8 (B, T, H, W, 3), int64 (B,)) in the order of `items`."""
    return ClipLoader(cs, batch_size, workers, pin, persistent=False)(items)


def random_crop_flip(clips: torch.Tensor, size: int, generator: torch.Generator, hflip: bool = True) -> torch.Tensor:
    """(B, T, H, W, 3) -> (B, T, size, size, 3): a random size x size window and a coin-flip
    horizontal mirror per clip (the same for all its frames; the coin is drawn with `hflip` off too,
    so the windows stay the same), on whatever device `clips` is. `generator` lives on the CPU so
    the draws are the same on every device."""
    b, _, h, w, _ = clips.shape
    if size > min(h, w):
        raise ValueError(f"--crop {size} is larger than the stored frames ({h}x{w})")
    tops = torch.randint(0, h - size + 1, (b,), generator=generator).tolist()
    lefts = torch.randint(0, w - size + 1, (b,), generator=generator).tolist()
    flips = (torch.rand(b, generator=generator) < 0.5).tolist()
    out = []
    for i in range(b):
        c = clips[i, :, tops[i]:tops[i] + size, lefts[i]:lefts[i] + size]
        out.append(c.flip(2) if flips[i] and hflip else c)
    return torch.stack(out)


def augment(clips: torch.Tensor, size: int, generator: torch.Generator, rotate: float = 0.0, vflip: bool = False,
            jitter: float = 0.0, hflip: bool = True) -> torch.Tensor:
    """Training-time augmentation on the device, the set `har extract` stores as views: a random
    size x size window and a coin-flip horizontal mirror unless `hflip` is off (random_crop_flip, drawn first, so runs
    without the rest are what they were), then per clip a rotation uniform in +-`rotate` degrees
    (uncovered corners mirrored), a coin-flip vertical mirror, and brightness, contrast and
    saturation factors uniform in 1 +- `jitter`; the same for every frame of a clip. uint8 in and out."""
    out = random_crop_flip(clips, size, generator, hflip)
    b = out.shape[0]
    if rotate > 0:
        angles = (torch.rand(b, generator=generator, dtype=torch.float64) * 2 - 1) * rotate
        out = rotate_clips(out, angles)
    if vflip:
        down = (torch.rand(b, generator=generator) < 0.5).to(out.device).view(b, 1, 1, 1, 1)
        out = torch.where(down, out.flip(2), out)
    if jitter > 0:
        factors = 1 + (torch.rand(b, 3, generator=generator, dtype=torch.float64) * 2 - 1) * jitter
        out = jitter_clips(out, factors)
    return out


def rotate_clips(clips: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """(B, T, S, S, 3) uint8 square clips, clip b turned degrees[b] counter-clockwise about its
    centre (as pipeline.decoding.augment.rotate turns a stored view): bilinear, reflected borders."""
    b, t, h, w, c = clips.shape
    x = clips.permute(0, 1, 4, 2, 3).reshape(b, t * c, h, w).float()
    a = torch.deg2rad(degrees).float().to(clips.device)
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    # output pixel -> where to read in the input (normalised coordinates, y down): the inverse turn
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    y = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).reshape(b, t, c, h, w).permute(0, 1, 3, 4, 2).contiguous()


GREY = (0.299, 0.587, 0.114)  # the luma weights pipeline.decoding.augment's jitter uses


def jitter_clips(clips: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) uint8, factors (B, 3) brightness, contrast, saturation: the stored views'
    colour jitter (pipeline.decoding.augment), per frame, the same factors for a whole clip."""
    x = clips.float()
    f = factors.float().to(clips.device).view(-1, 3, 1, 1, 1, 1).unbind(1)
    grey_w = torch.tensor(GREY, device=clips.device)
    x = x * f[0]
    grey = (x * grey_w).sum(-1, keepdim=True)
    mean = grey.mean(dim=(2, 3), keepdim=True)
    x = mean + (x - mean) * f[1]
    grey = (x * grey_w).sum(-1, keepdim=True)
    x = grey + (x - grey) * f[2]
    return (x + 0.5).clamp_(0, 255).to(torch.uint8)


def centre_crops(clips: torch.Tensor, size: int, three: bool = False) -> list[torch.Tensor]:
    """The centred size x size window, or three along the longer side (start, centre, end)."""
    _, _, h, w, _ = clips.shape
    top, left = (h - size) // 2, (w - size) // 2
    if not three:
        return [clips[:, :, top:top + size, left:left + size]]
    if w >= h:
        return [clips[:, :, top:top + size, x:x + size] for x in (0, left, w - size)]
    return [clips[:, :, y:y + size, left:left + size] for y in (0, top, h - size)]
