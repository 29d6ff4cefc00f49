"""Where a video's extraction time goes, and what the frame codec costs.

    .venv/bin/python benchmarks/extract_phases.py DATA_ROOT [--size 224] [--threads 1] [--real CLIP ...]

DATA_ROOT is a `har synth` dataset (e.g. /tmp/har-bench/gop250/data, made by extract_bench.py).
One process, scheduler "synchronous": each phase is wrapped and timed with time.process_time
(CPU of every thread of the process: decoding uses FFmpeg's threads; source hashing, which runs
in a pool of threads, with its own thread's CPU time) and reported per video, beside the decode
ceiling's CPU per video (every frame decoded, nothing converted, same decoder threads). With
every core busy (as many workers as cores), har's videos/s can be at most about ceiling CPU /
har CPU of the ceiling's. Then the first 16 videos' frames are written again with the store's
codec, with other codecs and block sizes and with no compression, to split the write into
compression and Zarr's own work.
Prints one JSON object per measurement.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stages import extract as E  # noqa: E402
from pipeline.core import lineage  # noqa: E402
from pipeline.stores import store
from pipeline.decoding import video
from pipeline.stages.extract import ExtractConfig, Recipe  # noqa: E402

PHASES = [(E, "extract_video"), (video, "scan_sparse"), (video, "scan"), (video, "packet_plan"),
          (video, "probe"), (store, "write_batch"), (lineage, "file_sha256")]


def timed(mod, name: str, acc: dict) -> None:
    fn = getattr(mod, name)
    # hashing runs in a pool of threads, each file within one thread: its own thread's CPU is exact
    clock = time.thread_time if name == "file_sha256" else time.process_time

    def wrapper(*a, **k):
        t = clock()
        try:
            return fn(*a, **k)
        finally:
            acc[name] = acc.get(name, 0.0) + clock() - t

    setattr(mod, name, wrapper)


def write_cost(frames: np.ndarray, codecs: dict) -> float:
    import zarr

    with tempfile.TemporaryDirectory() as d:
        root = zarr.create_group(d, zarr_format=3, overwrite=True)
        a = root.create_array("frames", shape=frames.shape, dtype="uint8", chunks=(1, 1, *frames.shape[2:]),
                              shards=frames.shape, fill_value=0, **codecs)
        a[:] = frames  # warm-up
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            a[:] = frames
            best = min(best, time.process_time() - t)
        nbytes = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())
    return best, nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1, help="decoder threads (1: as each worker when workers = cores)")
    ap.add_argument("--real", type=Path, nargs="*", default=[],
                    help="real clips (e.g. ../shared/data/videos/*.avi) whose samples each codec also compresses")
    a = ap.parse_args()

    paths = sorted(p for p in a.root.rglob("*") if p.suffix in video.VIDEO_SUFFIXES)
    t = time.process_time()
    for p in paths:
        video.scan(p, lambda k: False, lambda k, f: None, threads=a.threads)
    ceiling = (time.process_time() - t) / len(paths)

    acc: dict[str, float] = {}
    for mod, name in PHASES:
        timed(mod, name, acc)
    out = Path(tempfile.mkdtemp()) / "phases.zarr"
    t = time.process_time()
    res = E.extract(ExtractConfig("synthetic", Recipe(frames=16, height=a.size, width=a.size), root=a.root,
                                  out=out, scheduler="synchronous", threads=a.threads))
    total = time.process_time() - t
    n = res.ok
    print(json.dumps({"what": "phases", "size": a.size, "threads": a.threads, "videos": n,
                      "ceiling_cpu_ms_per_video": 1000 * ceiling, "total_cpu_ms_per_video": 1000 * total / n,
                      "ceiling_cpu_over_har_cpu": ceiling * n / total,
                      **{f"{k}_cpu_ms_per_video": 1000 * v / n for k, v in acc.items()}}))

    from zarr.codecs import BloscCodec, BloscShuffle

    with store.StoreReader(out) as r:
        frames = np.asarray(r["frames"][0:16])
    shutil.rmtree(out.parent, ignore_errors=True)
    store._zarr()  # the store's Zarr settings (no fill-value scan)
    plain_zstd = {"compressors": BloscCodec(cname="zstd", clevel=1, typesize=1, shuffle=BloscShuffle.noshuffle,
                                            blocksize=1 << 20)}
    lz4 = {"compressors": BloscCodec(cname="lz4", clevel=1, typesize=1, shuffle=BloscShuffle.bitshuffle,
                                     blocksize=1 << 20)}
    zstd_4mib = {"compressors": BloscCodec(cname="zstd", clevel=1, typesize=1, shuffle=BloscShuffle.bitshuffle,
                                           blocksize=1 << 22)}
    candidates = [("store codec (zstd-1, bit shuffle, 1 MiB blocks)", store._frame_codecs(False)),
                  ("zstd-1, bit shuffle, 4 MiB blocks", zstd_4mib),
                  ("zstd-1, no shuffle", plain_zstd), ("lz4-1, bit shuffle", lz4)]
    for name, codecs in candidates + [("no compression", {"compressors": None})]:
        cpu, nbytes = write_cost(frames, codecs)
        print(json.dumps({"what": "write", "codec": name, "cpu_ms_per_video": 1000 * cpu / len(frames),
                          "bytes_over_raw": nbytes / frames.nbytes}))
    if a.real:  # synthetic frames are smoother than real ones: the sizes that decide are these
        recipe = Recipe(frames=16, height=a.size, width=a.size)
        real = np.stack([E.extract_video(p, p.name, recipe).frames for p in a.real])
        for name, codecs in candidates:
            _, nbytes = write_cost(real, codecs)
            print(json.dumps({"what": "real_clips_size", "clips": len(a.real), "codec": name,
                              "bytes_over_raw": nbytes / real.nbytes}))


if __name__ == "__main__":
    main()
