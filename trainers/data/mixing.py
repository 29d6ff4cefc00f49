"""How a joint run's batches mix its datasets: one registry of seeded rules (trainers.training.joint).

    proportional   every training video of every dataset once per epoch, in one shuffled order,
                   so a batch holds the datasets in proportion to their sizes (in expectation)
    balanced       each dataset's training videos reshuffled and repeated up to the largest
                   dataset's count, then interleaved: every batch holds the datasets in equal
                   shares, an epoch is (datasets x largest) videos

Light on purpose (numpy only): the configs check `--mix` against it.
"""
from __future__ import annotations

import numpy as np

from pipeline.core.registry import Registry

MIXES: Registry = Registry("batch mixing")   # (per-dataset training videos (global indices), rng) -> epoch order


@MIXES.register("proportional", "every training video once per epoch, one shuffled order (datasets by size)")
def _proportional(parts: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    videos = np.concatenate(parts)
    return videos[rng.permutation(len(videos))]


@MIXES.register("balanced", "each dataset repeated to the largest one's count, interleaved: equal shares per batch")
def _balanced(parts: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    most = max(len(p) for p in parts)
    columns = []
    for p in parts:
        passes = -(-most // len(p))
        columns.append(np.concatenate([p[rng.permutation(len(p))] for _ in range(passes)])[:most])
    return np.stack(columns, axis=1).reshape(-1)
