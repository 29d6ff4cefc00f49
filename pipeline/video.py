"""Decoding with PyAV: streaming, frame-exact, bounded memory.

Frame k of a video is the k-th frame the decoder outputs (presentation order). We never seek:
seeking by timestamp is where frame-exactness breaks (B-frames, variable frame rate, AVI
timestamps). Instead every frame is decoded, and only the wanted ones are converted to RGB, so
the cost of a video is about the decode ceiling whatever T is.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".ogv", ".flv",
                  ".wmv", ".gif", ".m4v", ".3gp")


class VideoError(Exception):
    """A file that cannot be decoded as a video; the message says why."""


@dataclass(frozen=True)
class Probe:
    frames_estimate: int  # header count, or packets counted by demuxing when the header has none
    fps: float            # average frame rate
    width: int
    height: int


def _open(path: Path):
    import av

    if not path.exists():
        raise VideoError("file not found")
    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise VideoError(f"not a readable container: {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoError("no video stream (audio-only or data file)")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg
    return container, stream


def probe(path: Path) -> Probe:
    """Cheap facts about a video; the frame count is only an estimate (headers lie, see HMDB51)."""
    container, stream = _open(path)
    with container:
        n = stream.frames
        if n <= 0:  # e.g. WebM carries no count: demux (no decoding) and count packets
            n = sum(1 for p in container.demux(stream) if p.size)
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        return Probe(int(n), float(rate), stream.codec_context.width, stream.codec_context.height)


def scan(path: Path, wanted: Callable[[int], bool], on_frame: Callable[[int, object], None],
         threads: int = 0) -> int:
    """Decode every frame of `path`, call on_frame(index, av.VideoFrame) for the wanted ones.

    Returns how many frames were decoded: the true frame count. A corrupt packet is skipped
    (and logged) and decoding goes on, so a damaged stream gives the frames a player would show;
    a truncated file ends where the demuxer gives up. `threads` 0 lets FFmpeg choose.
    """
    import av

    container, stream = _open(path)
    if threads:
        stream.codec_context.thread_count = threads
    k = 0
    bad = 0
    with container:
        try:
            for packet in container.demux(stream):
                try:
                    decoded = stream.decode(packet)
                except av.error.InvalidDataError:
                    bad += 1
                    continue
                for frame in decoded:
                    if wanted(k):
                        on_frame(k, frame)
                    k += 1
        except av.error.FFmpegError as e:  # truncated or damaged container
            logger.warning("%s: demuxing stopped after %d frames: %s", path, k, e)
    if bad:
        logger.warning("%s: skipped %d corrupt packets", path, bad)
    return k


def frame_rgb(frame) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame, rotated upright when the stream says so."""
    rgb = frame.to_ndarray(format="rgb24")
    rot = int(getattr(frame, "rotation", 0) or 0) % 360
    if rot:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rot // 90))
    return rgb


def decode_all(path: Path) -> np.ndarray:
    """Every frame as RGB, (n, H, W, 3). For tests and small files only: memory grows with n."""
    out: list[np.ndarray] = []
    scan(path, lambda k: True, lambda k, f: out.append(frame_rgb(f)))
    return np.stack(out)


def count_frames(path: Path) -> int:
    """Decode everything and count: the only count that is always right."""
    return scan(path, lambda k: False, lambda k, f: None)


def write_video(path: Path, frames, fps: float = 25, codec: str = "mpeg4",
                options: dict | None = None, pts: Iterable[int] | None = None,
                time_base: Fraction | None = None, bit_rate: int | None = None) -> Path:
    """Encode RGB frames, an (n, H, W, 3) uint8 array or any iterable of (H, W, 3) frames
    (streamed: a 10-minute video needs no 10 minutes of frames in memory), to a real video file.

    `pts` with `time_base` gives each frame its own timestamp (variable frame rate).
    The container comes from the suffix; `.avi` with mpeg4 is tagged XVID like UCF50's files.
    """
    import av

    path = Path(path)
    it = iter(frames)
    first = next(it)
    h, w = first.shape[:2]
    pts_iter = iter(pts) if pts is not None else None
    with av.open(str(path), mode="w") as out:
        rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4" and path.suffix == ".avi":
            stream.codec_tag = "XVID"
        if bit_rate:
            stream.bit_rate = bit_rate
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        for img in _chain(first, it):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if pts_iter is not None:
                vf.pts = next(pts_iter)
                vf.time_base = time_base
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _chain(first, rest):
    yield first
    yield from rest
