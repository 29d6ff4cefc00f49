"""Videos made on the spot for tests: frames that carry their own index, bad files, small datasets."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.video import write_video

BITS = 10          # indices up to 1023
BLOCK = 16         # px per bit block at full size


def indexed_frames(n: int, h: int = 64, w: int = 96) -> np.ndarray:
    """(n, h, w, 3) frames; frame k shows k in binary as 2 rows x 5 black/white blocks."""
    out = np.full((n, h, w, 3), 128, np.uint8)
    for k in range(n):
        for b in range(BITS):
            r, c = divmod(b, 5)
            y, x = 8 + r * (BLOCK + 8), 4 + c * (BLOCK + 2)
            out[k, y:y + BLOCK, x:x + BLOCK] = 255 if (k >> b) & 1 else 0
    return out


def read_index(frame: np.ndarray) -> int:
    """Inverse of indexed_frames for a frame at any scale of the original (h, w)."""
    h, w = frame.shape[:2]
    sy, sx = h / 64, w / 96
    k = 0
    for b in range(BITS):
        r, c = divmod(b, 5)
        y, x = (8 + r * (BLOCK + 8) + BLOCK / 2) * sy, (4 + c * (BLOCK + 2) + BLOCK / 2) * sx
        patch = frame[int(y - 2 * sy):int(y + 2 * sy) + 1, int(x - 2 * sx):int(x + 2 * sx) + 1]
        if patch.mean() > 128:
            k |= 1 << b
    return k


# (suffix, codec, options, description)
CODECS = [
    (".avi", "mpeg4", {"bf": "2", "qscale": "2"}, "MPEG-4/Xvid in AVI with B-frames"),
    (".mp4", "libx264", {"bf": "3", "preset": "veryfast", "crf": "12"}, "H.264 in MP4 with B-frames"),
    (".webm", "libvpx-vp9", {"crf": "10", "b": "0", "cpu-used": "8", "deadline": "realtime"}, "VP9 in WebM"),
    (".mkv", "libx264", {"bf": "2", "preset": "veryfast", "crf": "12"}, "H.264 in Matroska"),
]


def write_indexed(path: Path, n: int, codec: str = "mpeg4", options: dict | None = None, fps: float = 25) -> Path:
    return write_video(path, indexed_frames(n), fps=fps, codec=codec, options=options)


def write_vfr(path: Path, n: int, seed: int = 0) -> Path:
    """H.264 MP4 whose frame durations vary between 20 and 90 ms."""
    rng = np.random.default_rng(seed)
    pts = np.cumsum(np.concatenate([[0], rng.integers(20, 90, n - 1)]))
    return write_video(path, indexed_frames(n), fps=25, codec="libx264",
                       options={"bf": "2", "preset": "veryfast", "crf": "12"},
                       pts=pts.tolist(), time_base=Fraction(1, 1000))


def write_audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as out:
        st = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path
