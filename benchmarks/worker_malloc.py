"""What dask's MALLOC_TRIM_THRESHOLD_ costs the extraction workers (pipeline/core/cluster.py leaves it out).

    .venv/bin/python benchmarks/worker_malloc.py [--data /tmp/har-bench/gop250/data] [--repeats 2]

DATA is a `har synth` dataset (extract_bench.py makes /tmp/har-bench/gop250/data). In one run,
alternating: the decode ceiling and `har extract` (uniform 16 frames, 224 px) on a local cluster
of --workers workers, once with the workers' environment as dask sets it (MALLOC_TRIM_THRESHOLD_
=65536) and once with glibc's defaults (har's setting). Prints one JSON object per measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extract_bench import time_ceiling, time_har  # noqa: E402

from pipeline.core import cluster  # noqa: E402
from pipeline.stores.store import choose_batch  # noqa: E402

KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/har-bench/gop250/data"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    paths = sorted(str(p) for p in a.data.rglob("*.avi"))
    bsize = choose_batch(len(paths), 16 * 112 * 112 * 3)
    threads = max(1, cluster.cpu_count() // a.workers)
    har_setting = dict(cluster.LOCAL_WORKER_CONFIG)
    for _ in range(a.repeats):
        for name, trim in (("dask's MALLOC_TRIM_THRESHOLD_=65536", 65536), ("glibc defaults (har)", None)):
            cluster.LOCAL_WORKER_CONFIG = {**har_setting, KEY: trim}
            ceiling_s, _, _ = time_ceiling(paths, bsize, a.workers, threads)
            har_s, _, rss = time_har(a.data, Path("/tmp/worker_malloc.zarr"), a.size, a.workers)
            print(json.dumps({"what": "worker_malloc", "setting": name, "workers": a.workers, "size": a.size,
                              "ceiling_videos_per_s": len(paths) / ceiling_s, "har_videos_per_s": len(paths) / har_s,
                              "har_vs_ceiling": ceiling_s / har_s, "har_peak_rss_mib_per_worker": rss}), flush=True)
    cluster.LOCAL_WORKER_CONFIG = har_setting


if __name__ == "__main__":
    main()
