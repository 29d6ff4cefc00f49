"""Content hashing for change detection: sha256 (what lineage records) against BLAKE3 and xxHash3-128.

Prints one JSON line: each algorithm's throughput on one thread (MB/s, a buffer in memory, so
the disk is not measured), with 4 threads over 4 buffers (as lineage.source_fingerprints hashes
files in a pool), and the projected time to hash a UCF101-sized dataset (6.5 GB) from the page
cache. Run: python benchmarks/hash_bench.py [--mb 512]. blake3 and xxhash are optional: missing
ones are reported as such."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

UCF101_BYTES = 6.5e9


def algorithms() -> dict:
    out = {"sha256": lambda b: hashlib.sha256(b).hexdigest()}
    try:
        import blake3

        out["blake3"] = lambda b: blake3.blake3(b).hexdigest()
        out["blake3-mt"] = lambda b: blake3.blake3(b, max_threads=blake3.blake3.AUTO).hexdigest()
    except ImportError:
        pass
    try:
        import xxhash

        out["xxh3_128"] = lambda b: xxhash.xxh3_128(b).hexdigest()
    except ImportError:
        pass
    return out


def best(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--files", type=int, default=0, help="also time har's own source fingerprinting on N files")
    ap.add_argument("--file-mb", type=float, default=0.5, help="size of each file (UCF101: 6.5 GB / 13,320 = 0.5 MB)")
    ap.add_argument("--dir", default="/tmp/har-hash-bench")
    args = ap.parse_args()
    bufs = [os.urandom(args.mb << 20) for _ in range(4)]
    rows = {}
    for name, h in algorithms().items():
        one = best(lambda: h(bufs[0]))
        with ThreadPoolExecutor(4) as pool:
            four = best(lambda: list(pool.map(h, bufs)))
        mbps1, mbps4 = args.mb / one, 4 * args.mb / four
        rows[name] = {"MB_per_s_1_thread": round(mbps1), "MB_per_s_4_threads": round(mbps4),
                      "ucf101_seconds_4_threads": round(UCF101_BYTES / (mbps4 * (1 << 20)), 1)}
    doc = {"benchmark": "hash", "buffer_MB": args.mb, "cpus": os.cpu_count(), "machine": platform.machine(),
           "results": rows}
    if args.files:
        doc["fingerprints"] = fingerprints(args.files, args.file_mb, args.dir)
    print(json.dumps(doc))


def fingerprints(n: int, file_mb: float, folder: str) -> dict:
    """lineage.source_fingerprints on n files (page cache warm): every file hashed (a first run,
    or --verify) against the size/mtime/ctime/inode fast path of a no-op rerun."""
    from pathlib import Path

    from pipeline.core import lineage

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    rels = [f"c{i % 101:03d}/v{i:05d}.avi" for i in range(n)]
    block = os.urandom(int(file_mb * (1 << 20)))
    for rel in rels:
        p = root / rel
        if not p.exists() or p.stat().st_size != len(block):
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(block)
    full = best(lambda: lineage.source_fingerprints(root, rels), reps=2)
    known = {s.path: s for s in lineage.source_fingerprints(root, rels)}
    fast = best(lambda: lineage.source_fingerprints(root, rels, known))
    total = n * len(block)
    return {"files": n, "bytes": total, "full_hash_s": round(full, 2), "fast_path_s": round(fast, 3),
            "full_hash_MB_per_s": round(total / full / (1 << 20))}


if __name__ == "__main__":
    main()
