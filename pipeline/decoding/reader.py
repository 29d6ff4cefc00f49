"""One video read as a recipe says: its S samples (`read_video`: what `har extract` stores for it, and
what predict, explain and export score), and the clean frames of one streamed decode
(`clean_frames`: the timeline of a long video). The PyAV objects stay in here and in `video`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.decoding import augment, video
from pipeline.decoding.recipe import Recipe, sample_axes, sample_plan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoSamples:
    frames: np.ndarray       # (S, T, H, W, 3) uint8
    frame_idx: np.ndarray    # (S, T) int32 source frame of each stored frame
    num_frames: int          # frames the source really decodes to
    fps: float               # average frame rate
    view_params: np.ndarray  # (S, 10) float32 crop/flip/jitter/rotation/vflip of each sample (augment.FIELDS)
    decoded: int = 0         # source frames the decoder was given, each counted once (<= num_frames;
                             # fewer when partial): a second pass and the views add none
    passes: int = 1          # decoding passes over the file (2 when the header's frame count was wrong)


def read_video(path: Path, rel: str, recipe: Recipe, threads: int = 0) -> VideoSamples:
    """Decode one video into its S samples. Raises video.VideoError for a bad file.

    A video that decodes to far fewer frames than its container announces (a truncated
    download) fails rather than being sampled from the part that survived.

    When one demux pass locates every frame (`video.packet_plan`), the indices are planned on
    that count and only the GOPs holding sampled frames are decoded. Otherwise the header's
    frame count plans them; if decoding everything finds another count (HMDB51's headers are
    often one off), the plan is redone with the true count and, if it moved, the video is
    decoded again, so stored frames are always exactly frame_idx of the stream.
    """
    from av.video.reformatter import VideoReformatter

    info = video.probe(path)
    out_hw = (recipe.height, recipe.width)
    reformatter = VideoReformatter()  # keeps its swscale context between frames
    _, view_of = sample_axes(recipe)
    plan = video.packet_plan(path)  # when packets locate the frames, decode only what is needed
    n = plan.frames if plan is not None else max(1, info.frames_estimate)
    decoded = 0   # the most source frames one pass gave the decoder: a second pass re-decodes, it adds none
    for attempt in range(2):
        idx = sample_plan(recipe, rel, n)
        where: dict[int, list[tuple[int, int]]] = {}
        for (s, t), k in np.ndenumerate(idx):
            where.setdefault(int(k), []).append((s, t))
        out = np.zeros((recipe.samples, recipe.frames, *out_hw, 3), np.uint8)
        params: dict[int, augment.ViewParams] = {}
        src_hw: list[tuple[int, int]] = []

        def on_frame(k: int, frame) -> None:
            if not src_hw:
                src_hw.append(augment.upright_hw(frame))
            rgb = None
            for s, t in where[k]:
                v = int(view_of[s])
                if v == 0:
                    out[s, t] = augment.clean(frame, out_hw, reformatter)
                    continue
                if rgb is None:
                    rgb = video.frame_rgb(frame)
                if v not in params:
                    params[v] = augment.params_for(recipe.seed, rel, v, rgb.shape[:2], out_hw, recipe.rotate, recipe.vflip,
                                                   recipe.hflip)
                out[s, t] = augment.apply(rgb, params[v], out_hw)

        sent = video.scan_sparse(path, plan, where, on_frame, threads=threads) if plan is not None else None
        if sent is not None:
            true_n = plan.frames
            decoded = max(decoded, sent)
        else:
            plan = None  # decode every frame from here on; on_frame overwrites what it wrote
            true_n = video.scan(path, where.__contains__, on_frame, threads=threads)
            decoded = true_n   # every frame
        if true_n == 0:
            # the file's bytes are the reason: a decoder short of memory or threads raised in video.scan
            raise video.VideoError("no decodable video frames", permanent=True)
        if true_n < info.frames_estimate - max(2, info.frames_estimate // 20):
            raise video.VideoError(f"truncated or damaged: the container announces {info.frames_estimate} frames, "
                                   f"only {true_n} decode", permanent=True)
        if true_n == n or np.array_equal(sample_plan(recipe, rel, true_n), idx):
            vp = np.stack([augment.params_for(recipe.seed, rel, int(v), src_hw[0], out_hw, recipe.rotate,
                                              recipe.vflip, recipe.hflip).as_array() for v in view_of])
            return VideoSamples(out, idx, true_n, info.fps, vp, min(decoded, true_n), attempt + 1)
        logger.info("%s: header said %d frames, decoded %d; sampling again", rel, n, true_n)
        n = true_n
    raise video.VideoError(f"frame count changed between two decodes ({n})")


def clean_frames(path: Path, out_hw: tuple[int, int], wanted: Callable[[int], bool]
                 ) -> Iterator[tuple[int, float | None, np.ndarray | None]]:
    """Decode every frame of `path` once (`video.frames`): (index, presentation time in seconds or
    None when the stream has none, the clean view (H, W, 3) uint8 at `out_hw` when `wanted(index)`,
    else None: only wanted frames are converted). `wanted` is asked as each frame is decoded, so a
    caller may change what it wants as it goes. Raises video.VideoError as `video.frames` does."""
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()  # keeps its swscale context between frames
    for k, frame in video.frames(path):
        yield k, frame.time, (augment.clean(frame, out_hw, reformatter) if wanted(k) else None)
