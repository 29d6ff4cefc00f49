"""Where a no-op rerun's time and memory go at a dataset's size: each step `har extract` takes
before it can say "up to date", timed in one process, with the memory it keeps (growth of the
process's resident set, psutil) and the process's peak resident set.

    .venv/bin/python benchmarks/rerun_phases.py DATASET ROOT STORE

DATASET ROOT: what `har extract` was given; STORE: its finished frame store. Steps: index the
dataset (annotations, folder listing), open the store, read its recorded sources, fingerprint
the sources against them (stat only: unchanged files keep their hashes), the lineage fingerprint.
Prints one JSON object.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.datasets import datasets  # noqa: E402
from pipeline.core import lineage
from pipeline.stores import store
from pipeline.stages.extract import Recipe, build_lineage, recorded_sources  # noqa: E402


def main(argv: list[str]) -> int:
    name, root, path = argv[0], Path(argv[1]), Path(argv[2])
    import resource

    import psutil

    proc = psutil.Process()
    steps: dict[str, dict] = {}
    kept: list = []

    def step(label, fn):
        t0, before = time.perf_counter(), proc.memory_info().rss
        out = fn()
        kept.append(out)
        steps[label] = {"s": round(time.perf_counter() - t0, 2),
                        "kept_mib": round((proc.memory_info().rss - before) / 2**20, 1)}
        return out

    index = step("index", lambda: datasets.load(name, root))
    reader = step("open_store", lambda: store.StoreReader(path))
    recorded = step("recorded_sources", lambda: recorded_sources(reader))
    known = {s.path: s for s in recorded}
    rels = [v.path for v in index.videos]
    sources = step("fingerprint_sources", lambda: lineage.source_fingerprints(index.root, rels, known))
    lin = step("lineage", lambda: build_lineage(index, Recipe(**reader.attrs["recipe"]), sources))
    print(json.dumps({"bench": "rerun_phases", "dataset": name, "videos": len(rels),
                      "up_to_date": lin["fingerprint"] == reader.attrs["lineage"]["fingerprint"],
                      "steps": steps, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
