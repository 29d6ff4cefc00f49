"""Dask worker preload for `benchmarks/scale.py --noop-decoder`: har's per-video decode becomes a
blank result of the recipe's shape, so a run measures what har spends around the decoder
(indexing, hashing, task graph and scheduling, store writes and metadata) at sizes whose decoding
would take hours here. Everything else runs as in `har extract`: sources are hashed, every video's
samples, checksums and status are written, and the store is swapped in. Never imported by har.

    dask worker <scheduler> --preload benchmarks/noop_decoder.py
"""
from __future__ import annotations

import numpy as np

from pipeline.decoding import augment
from pipeline.decoding.reader import VideoSamples
from pipeline.decoding.recipe import sample_plan
from pipeline.stages import extract

FRAMES_IN_SOURCE = 250   # a 10-s Kinetics clip at 25 fps


def blank_video(path, rel: str, recipe, threads: int = 0) -> VideoSamples:
    idx = sample_plan(recipe, rel, FRAMES_IN_SOURCE)
    return VideoSamples(
        np.zeros((recipe.samples, recipe.frames, recipe.height, recipe.width, 3), np.uint8),
        np.asarray(idx, np.int32), FRAMES_IN_SOURCE, 25.0,
        np.zeros((recipe.samples, len(augment.FIELDS)), np.float32), 0)


def dask_setup(worker) -> None:
    extract.extract_video = blank_video
