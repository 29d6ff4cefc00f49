"""The local Dask cluster that runs extraction: its workers' settings, and that the caller keeps its own."""
from __future__ import annotations

import os

from pipeline.cluster import run_tasks


def worker_settings(_task) -> dict:
    import dask

    return {"trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "profile": dask.config.get("distributed.worker.profile.enabled")}


def test_local_workers_keep_glibc_malloc_defaults_and_no_profiler(monkeypatch):
    # dask's nannies export MALLOC_TRIM_THRESHOLD_, which pins glibc's mmap threshold at 128 KiB:
    # every frame-sized buffer then costs fresh zeroed pages (a quarter of a 224 px extraction)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    import dask
    import distributed  # noqa: F401  (loads its config defaults)

    before = dask.config.get("distributed.nanny.pre-spawn-environ", default=None)
    seen: list[dict] = []
    run_tasks(worker_settings, [0, 1], seen.append, workers=1)
    assert seen == [{"trim": None, "profile": False}] * 2
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ  # the nanny did not leave it to later children
    assert dask.config.get("distributed.nanny.pre-spawn-environ", default=None) == before


def test_synchronous_runs_in_this_process_in_order():
    seen: list[int] = []
    run_tasks(lambda t: (os.getpid(), t), [3, 1, 2], seen.append, scheduler="synchronous")
    assert seen == [(os.getpid(), 3), (os.getpid(), 1), (os.getpid(), 2)]
