"""Memory and time of `har predict --window` as a video grows: streaming keeps memory flat.

    .venv/bin/python benchmarks/timeline_memory.py --run RUN [--minutes 1 10 60] [--work DIR]

For each length, a 320x240 25 fps MPEG-4 video is written (frames generated one by one), then
`har predict VIDEO --run RUN --window 2 --stride 1 --json` runs in a fresh process; its peak
resident memory (the child's ru_maxrss) and wall time are measured. The baseline in the same run is
the shortest video: the ratios say how memory and time grow with length (memory should stay flat;
time should grow linearly). Prints one JSON line per length.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def frames(n: int, h: int = 240, w: int = 320):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(n):
        f = base.copy()
        x = (i * 3) % (w - 40)
        f[100:140, x:x + 40] = (i * 7) % 255
        yield f


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    from pipeline.decoding.video import write_video

    work = a.work or Path(tempfile.mkdtemp(prefix="har-timeline-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    base = None
    for m in sorted(a.minutes):
        path = work / f"long_{m:g}min.mp4"
        if not path.exists():
            write_video(path, frames(int(m * 60 * 25)), fps=25)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "cli", "predict", str(path), "--run", str(a.run), "--window", "2",
                            "--stride", "1", "--out", str(work / "tl"), "--json", "--device", "cpu"],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB; the largest child so far
        doc = json.loads(r.stdout)["predictions"][0]
        row = {"minutes": m, "frames": doc["frames"], "windows": len(doc["windows"]), "segments": len(doc["segments"]),
               "wall_s": round(wall, 1), "peak_rss_mib": round(peak / 1024, 1),
               "video_mib": round(path.stat().st_size / 2**20, 1)}
        if base is None:
            base = row
        else:
            row["time_ratio"] = round(wall / base["wall_s"], 2)
            row["length_ratio"] = round(m / base["minutes"], 2)
            row["peak_rss_ratio"] = round(row["peak_rss_mib"] / base["peak_rss_mib"], 3)
            row["peak_grew"] = peak > before  # ru_maxrss is a maximum over children: only growth shows
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
