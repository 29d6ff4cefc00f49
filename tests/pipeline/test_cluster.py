"""The local Dask cluster that runs extraction: its workers' settings, and that the caller keeps its own."""
from __future__ import annotations

import os

import pytest

from pipeline.core.cluster import run_tasks


def worker_settings(_task) -> dict:
    import dask

    return {"trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "profile": dask.config.get("distributed.worker.profile.enabled")}


def test_local_workers_keep_glibc_malloc_defaults_and_no_profiler(monkeypatch):
    # dask's nannies export MALLOC_TRIM_THRESHOLD_, which pins glibc's mmap threshold at 128 KiB:
    # every frame-sized buffer then costs fresh zeroed pages (a fifth of a 224 px extraction)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    import dask
    import distributed  # noqa: F401  (loads its config defaults)

    before = dask.config.get("distributed.nanny.pre-spawn-environ", default=None)
    seen: list[dict] = []
    run_tasks(worker_settings, [0, 1], seen.append, workers=1)
    assert seen == [{"trim": None, "profile": False}] * 2
    assert dask.config.get("distributed.nanny.pre-spawn-environ", default=None) == before


def test_the_callers_environment_is_left_as_it_was(monkeypatch):
    # dask's nannies write OMP_NUM_THREADS=1 (and more) into the parent's environment before
    # spawning; torch imported afterwards in the same process (har demo trains after extracting)
    # would then run on one thread, and child processes would inherit it
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = dict(os.environ)
    seen: list[dict] = []
    run_tasks(worker_settings, [0], seen.append, workers=1)
    assert seen  # the workers did run
    assert dict(os.environ) == before


def log_an_error(task: int) -> int:
    import logging

    logging.getLogger("distributed.worker").error("worker-error-%d", task)
    return task


def test_worker_logs_stay_off_stderr_unless_verbose(capfd):
    # e.g. the heartbeat traceback a worker may log while the cluster closes (dask/distributed#7105)
    import logging

    run_tasks(log_an_error, [7], lambda r: None, workers=1)
    assert "worker-error-7" not in capfd.readouterr().err
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # as `har -v` sets it
    try:
        run_tasks(log_an_error, [8], lambda r: None, workers=1)
    finally:
        root.setLevel(level)
    assert "worker-error-8" in capfd.readouterr().err


def test_synchronous_runs_in_this_process_in_order():
    seen: list[int] = []
    run_tasks(lambda t: (os.getpid(), t), [3, 1, 2], seen.append, scheduler="synchronous")
    assert seen == [(os.getpid(), 3), (os.getpid(), 1), (os.getpid(), 2)]


def fails_on_two(t: int) -> int:
    if t == 2:
        raise RuntimeError("task two broke")
    return t * 10


def dies_on_two(t: int) -> int:
    if t == 2:
        os._exit(1)  # the worker process dies, as one killed for memory does
    return t * 10


def test_on_error_takes_a_failed_task_and_the_others_go_on():
    import pytest

    for scheduler, fn in (("synchronous", fails_on_two), (None, fails_on_two), (None, dies_on_two)):
        done, failed = [], []
        run_tasks(fn, [1, 2, 3], done.append, scheduler=scheduler, workers=1,
                  on_error=lambda t, e: failed.append((t, type(e).__name__)))
        lost = [t for t, _ in failed]
        if fn is fails_on_two:
            assert sorted(done) == [10, 30] and lost == [2], (scheduler, failed)
        else:  # a dying worker may take a task queued beside it along (dask marks both KilledWorker)
            assert 2 in lost and sorted([d // 10 for d in done] + lost) == [1, 2, 3], (done, failed)
            assert {name for _, name in failed} == {"KilledWorker"}
    with pytest.raises(RuntimeError, match="task two broke"):  # without on_error: raised, as before
        run_tasks(fails_on_two, [1, 2, 3], lambda r: None, scheduler="synchronous")


def test_a_busy_dashboard_port_gives_no_warning():
    # dask's scheduler serves HTTP on 8787 even with its dashboard off, and warns on stderr when a
    # user's own dask holds that port: a line in every `har extract` that is not about har
    import socket
    import warnings

    held = socket.socket()
    try:
        held.bind(("", 8787))
        held.listen()
    except OSError:
        pass   # something else holds it already: the same situation
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seen: list = []
            run_tasks(worker_settings, [0], seen.append, workers=1)
        assert seen and not [str(w.message) for w in caught if "8787" in str(w.message)]
    finally:
        held.close()


@pytest.mark.parametrize("omp, cores, share, threads", [
    (None, 2, 1, 2), (None, 8, 2, 4), (None, 2, 4, 1),   # unset: this process's cores, shared
    ("1", 8, 1, 1), ("4", 2, 2, 2), ("3", 2, 4, 1),       # the user's cap wins, shared the same way
    ("4,2", 8, 1, 4), (" +3", 8, 1, 3),                  # OpenMP's list form: the outer level
    ("0", 6, 1, 6), ("two", 6, 2, 3), ("", 6, 1, 6), ("-2", 6, 1, 6), ("²", 6, 1, 6),   # not a count: ignored
])
def test_torch_threads_honour_omp_num_threads_and_share_the_cores(monkeypatch, omp, cores, share, threads):
    from pipeline.core import cluster

    monkeypatch.setattr(cluster, "cpu_count", lambda: cores)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert cluster.torch_threads(share) == threads


def threads_in_a_worker(_task) -> dict:
    from distributed import get_worker

    from pipeline.core import cluster

    return {"torch": cluster.torch_threads(), "cores": cluster.cpu_count(), "omp": os.environ.get("OMP_NUM_THREADS"),
            "task_threads": get_worker().state.nthreads}


def test_in_a_dask_worker_torch_shares_the_workers_cores_not_dasks_omp_setting():
    # dask's nanny starts every worker with OMP_NUM_THREADS=1; har features on a cluster
    # (--scheduler) encodes there, on the worker's cores shared among its task threads
    seen: list[dict] = []
    run_tasks(threads_in_a_worker, [0], seen.append, workers=1)
    (w,) = seen
    assert w["omp"] == "1" and w["torch"] == max(1, w["cores"] // w["task_threads"]), w
