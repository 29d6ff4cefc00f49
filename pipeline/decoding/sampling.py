"""Which source frames to store: pure functions of the decoded frame count.

Every function returns an int32 array of shape (K, T): K temporal clips of T frame indices,
0-based in presentation order. A video shorter than what a strategy asks for repeats its last
frame, so the repeats are visible in the store's `frame_idx`:

>>> uniform(3, 5).tolist()
[[0, 1, 2, 2, 2]]
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.core.registry import Registry


def _check(n: int, frames: int) -> None:
    if n < 1:
        raise ValueError(f"a video needs at least 1 frame, got {n}")
    if frames < 1:
        raise ValueError(f"frames per sample must be >= 1, got {frames}")


def _pad_last(idx: np.ndarray, frames: int) -> np.ndarray:
    """(x0..xm) -> (x0..xm, xm, xm, ...) of length `frames`."""
    if len(idx) >= frames:
        return idx[:frames]
    return np.concatenate([idx, np.full(frames - len(idx), idx[-1], dtype=idx.dtype)])


def uniform(n: int, frames: int) -> np.ndarray:
    """T indices evenly spread over [0, n-1], rounded half up; n < T: 0..n-1 then the last repeated."""
    _check(n, frames)
    if n < frames:
        return _pad_last(np.arange(n, dtype=np.int32), frames)[None]
    if frames == 1:
        return np.array([[(n - 1) // 2]], dtype=np.int32)
    idx = np.floor(np.linspace(0, n - 1, frames) + 0.5).astype(np.int32)
    return idx[None]


def random_uniform(n: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """One random index in each of T equal segments of [0, n); n < T falls back to `uniform`."""
    _check(n, frames)
    if n < frames:
        return uniform(n, frames)
    edges = (np.arange(frames + 1) * n) // frames  # segment t is [edges[t], edges[t+1])
    idx = edges[:-1] + (rng.random(frames) * (edges[1:] - edges[:-1])).astype(np.int64)
    return idx.astype(np.int32)[None]


def _clip_at(start: int, n: int, frames: int, stride: int) -> np.ndarray:
    idx = start + stride * np.arange(frames)
    return np.minimum(idx, n - 1).astype(np.int32)


def clip(n: int, frames: int, stride: int = 1, rng: np.random.Generator | None = None) -> np.ndarray:
    """T frames `stride` apart: centred when rng is None (test time), else a random start.

    A video shorter than the span (T-1)*stride+1 starts at 0 and repeats its last frame.
    """
    _check(n, frames)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    room = n - ((frames - 1) * stride + 1)  # how far the start may move
    if room <= 0:
        start = 0
    elif rng is None:
        start = room // 2
    else:
        start = int(rng.integers(0, room + 1))
    return _clip_at(start, n, frames, stride)[None]


def multiclip(n: int, frames: int, clips: int, stride: int = 1) -> np.ndarray:
    """K clips of T frames, their starts evenly spaced from 0 to the last possible start."""
    _check(n, frames)
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    room = max(0, n - ((frames - 1) * stride + 1))
    starts = np.floor(np.linspace(0, room, clips) + 0.5).astype(np.int64) if clips > 1 else [room // 2]
    return np.stack([_clip_at(int(s), n, frames, stride) for s in starts])


# name -> (n, frames, clips, stride, rng or None) -> (K, T); rng None is the deterministic (test-time) choice
STRATEGIES: Registry[Callable[..., np.ndarray]] = Registry("sampling")
STRATEGIES.add("uniform", lambda n, frames, clips, stride, rng: uniform(n, frames),
               "T frames evenly spread over the whole video (the seed studies)")
STRATEGIES.add("random-uniform", lambda n, frames, clips, stride, rng:
               uniform(n, frames) if rng is None else random_uniform(n, frames, rng),
               "one random frame in each of T equal segments (TSN-style); uniform at test time")
STRATEGIES.add("clip", lambda n, frames, clips, stride, rng: clip(n, frames, stride, rng),
               "T consecutive frames --stride apart at a random start; centred at test time")
STRATEGIES.add("multiclip", lambda n, frames, clips, stride, rng: multiclip(n, frames, clips, stride),
               "--clips clips of T frames, evenly spaced over the video")


def sample_indices(strategy: str, n: int, frames: int, clips: int = 1, stride: int = 1,
                   seed: int | None = None) -> np.ndarray:
    """The strategy's (K, T) int32 indices with K == clips; `seed` None means the deterministic
    (test-time) choice."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sampling {strategy!r}; allowed: {', '.join(STRATEGIES.names())}")
    if strategy != "multiclip" and clips != 1:
        raise ValueError(f"--clips {clips} needs --sampling multiclip; {strategy!r} stores one clip")
    rng = None if seed is None else np.random.default_rng(seed)
    return STRATEGIES.get(strategy)(n, frames, clips, stride, rng)
