"""What `--format hdf5` costs on top of the Zarr store: the copy into one gzip-filtered HDF5 file.

    .venv/bin/python benchmarks/hdf5_copy.py STORE.zarr [--repeats 2] [--real CLIP ...]

STORE.zarr is a finished frame store (e.g. /tmp/har-bench/gop250/store_224_w2.zarr, left by
extract_bench.py). In one run, alternating, the same store is copied
- the old way: every chunk through HDF5's own gzip filter (one core), level 4 and level 1;
- har's way (`hdf5.zarr_to_hdf5`): chunks deflated on every core, written pre-compressed.
Prints one JSON object per copy (seconds, bytes) and the ratios. With --real, the 224 px samples
of real clips (e.g. ../shared/data/videos/*.avi) are deflated at levels 1 and 4, for their sizes:
the synthetic frames are smoother than real ones.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stores import hdf5, store  # noqa: E402
from pipeline.core.cluster import cpu_count  # noqa: E402


def filter_copy(src: Path, dst: Path, level: int) -> None:
    """The frames through HDF5's gzip filter, shard by shard (what har did before)."""
    import h5py

    arr = store._zarr().open_group(str(src), mode="r")["frames"]
    with h5py.File(dst, "w") as h5:
        ds = h5.create_dataset("frames", shape=arr.shape, dtype=arr.dtype, chunks=tuple(arr.chunks),
                               compression="gzip", compression_opts=level)
        step = arr.shards[0]
        for i in range(0, arr.shape[0], step):
            ds[i:i + step] = arr[i:i + step]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--real", type=Path, nargs="*", default=[])
    a = ap.parse_args()
    if a.real:
        import zlib

        from pipeline.stages.extract import Recipe, extract_video

        recipe = Recipe(frames=16, height=224, width=224)
        samples = [extract_video(p, p.name, recipe).frames.tobytes() for p in a.real]
        raw = sum(len(x) for x in samples)
        for level in (1, 4):
            print(json.dumps({"what": "real_clips_size", "clips": len(samples), "gzip_level": level,
                              "bytes_over_raw": sum(len(zlib.compress(x, level)) for x in samples) / raw}))
    out = a.store.parent / "hdf5_copy.h5"
    ways = {"hdf5 gzip filter, level 4": lambda: filter_copy(a.store, out, 4),
            "hdf5 gzip filter, level 1": lambda: filter_copy(a.store, out, 1),
            f"har zarr_to_hdf5 (level {hdf5.HDF5_GZIP_LEVEL}, {cpu_count()} threads)": lambda: hdf5.zarr_to_hdf5(a.store, out)}
    best: dict[str, float] = {}
    for _ in range(a.repeats):
        for name, fn in ways.items():
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            best[name] = min(best.get(name, np.inf), dt)
            print(json.dumps({"what": "copy", "way": name, "seconds": dt, "file_bytes": out.stat().st_size}))
    out.unlink()
    base = best["hdf5 gzip filter, level 4"]
    print(json.dumps({"what": "summary", "cores": cpu_count(), "store": str(a.store),
                      **{f"speedup_vs_filter_level4[{k}]": base / v for k, v in best.items()}}))


if __name__ == "__main__":
    main()
