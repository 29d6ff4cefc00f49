"""Run independent tasks: in-process, on a local Dask cluster, or on an existing one.

Plan first, then hand the frozen tasks to `run_tasks`; the same plan runs the same way on any
executor, so tests can compare them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

SYNCHRONOUS = "synchronous"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def torch_threads(share: int = 1) -> int:
    """The threads torch's CPU kernels get when `share` pools in this process run at once:
    OMP_NUM_THREADS where it is set (every torch program honours it: how a shared machine, a job
    scheduler or a test runner with several workers caps one; OpenMP's list form `4,2` means 4),
    else this process's cores (its affinity, a container's share, where torch's own default counts
    the machine's), each divided by `share`. E.g. OMP_NUM_THREADS=4, share 2 -> 2; unset on 2
    cores, share 4 -> 1. In a Dask worker the variable is dask's (its nanny sets 1 for every
    worker it starts), not the user's: there the worker's cores are shared among its task threads."""
    workers = _dask_task_threads()
    if workers is not None:
        return max(1, cpu_count() // (workers * share))
    m = re.match(r"\s*\+?([0-9]+)", os.environ.get("OMP_NUM_THREADS", ""), re.ASCII)
    total = int(m[1]) if m and int(m[1]) > 0 else cpu_count()
    return max(1, total // share)


def _dask_task_threads() -> int | None:
    """The task threads of the Dask worker this code runs in; None outside one."""
    if "distributed" not in sys.modules:   # never imported: not a worker (and no import cost)
        return None
    from distributed import get_worker

    try:
        return max(1, int(get_worker().state.nthreads))
    except ValueError:   # "no worker found"
        return None


# Settings for the worker processes of the local cluster (an existing cluster keeps its own):
# - the statistical profiler samples every thread every 10 ms: pure overhead here;
# - dask's nannies export MALLOC_TRIM_THRESHOLD_=65536, and setting it freezes glibc's mmap
#   threshold at 128 KiB, so every frame-sized buffer (a decoded frame, a sample, a batch) is a
#   fresh mmap that the kernel zeroes page by page: a fifth of the time of extracting a 224 px
#   sample (BENCHMARKS.md). A worker's memory is bounded by its batch, so glibc's defaults do.
# - Ctrl-C reaches every process of the terminal's process group: the workers ignore it (each
#   would print a KeyboardInterrupt traceback) and this process, which owns them, closes them.
LOCAL_WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.preload": ["pipeline.core.cluster"],
}


def dask_setup(worker) -> None:
    """Run by each local worker process as it starts (the preload above): leave SIGINT to the parent."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_tasks(fn: Callable[[Any], Any], tasks: Iterable[Any], on_result: Callable[[Any], None],
              scheduler: str | None = None, workers: int | None = None,
              resources: dict[str, float] | None = None,
              on_error: Callable[[Any, Exception], None] | None = None) -> None:
    """Call fn(task) for every task and on_result(result) as each finishes (any order).

    scheduler None: a local dask.distributed cluster of `workers` processes (default: all cores),
    one thread each. "synchronous": a plain loop in this process. Anything else: the address of
    a running dask.distributed scheduler (tcp://host:8786) whose workers can import `pipeline`
    and reach the store path. `resources` (e.g. {"GPU": 1}) places each task on a worker started
    with that resource (`dask worker --resources GPU=1`, one per GPU). `on_error(task, exception)`,
    when given, takes a task that failed (its exception, or a worker that died running it:
    KilledWorker) and the others go on; without it the first failure is raised.
    """
    tasks = list(tasks)
    if not tasks:
        return
    if scheduler == SYNCHRONOUS:
        for t in tasks:
            try:
                result = fn(t)
            except Exception as e:
                if on_error is None:
                    raise
                on_error(t, e)
                continue
            on_result(result)
        return
    from dask.distributed import Client, LocalCluster, as_completed

    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO  # not --verbose
    if quiet:  # cluster start/stop chatter
        for name in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.ERROR)
    import dask

    cluster = None
    if scheduler is None:
        n = max(1, min(workers or cpu_count(), len(tasks)))
        environ = dict(os.environ)
        with dask.config.set(LOCAL_WORKER_CONFIG), _sigint_held():
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   dashboard_address=None,
                                   # no dashboard; its HTTP server on any free port (it takes 8787 by
                                   # default and warns on stderr when a user's dask already holds it)
                                   scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
                                   # a worker whose heartbeat meets the closing scheduler logs an
                                   # ERROR with a traceback (dask/distributed#7105); a failed task
                                   # reaches us as its exception, so workers speak only in --verbose
                                   silence_logs=logging.CRITICAL if quiet else logging.WARNING)
        _restore_environ(environ)
        client = Client(cluster)
    else:
        client = Client(scheduler, timeout="20s")
    try:
        futures = client.map(fn, tasks, pure=False, resources=resources)
        task_of = dict(zip(futures, tasks))
        for fut in as_completed(futures):
            try:
                result = fut.result()
            except Exception as e:
                if on_error is None:
                    raise
                on_error(task_of[fut], e)
                continue
            on_result(result)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
            _restore_environ(environ)


@contextlib.contextmanager
def _sigint_held():
    """SIGINT blocked while the worker processes are spawned: they inherit the blocked signal (so a
    Ctrl-C never reaches them, even while they import), and this process gets a Ctrl-C pressed
    meanwhile as soon as the cluster is up."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _restore_environ(saved: dict[str, str]) -> None:
    """Undo what dask's nannies write into this process's environment to pass it to the workers
    they spawn (OMP_NUM_THREADS=1 and friends, PYTHONHASHSEED): torch imported later in this
    process (`har demo` trains after extracting) would otherwise run on one thread."""
    for k in set(os.environ) - set(saved):
        del os.environ[k]
    for k, v in saved.items():
        if os.environ.get(k) != v:
            os.environ[k] = v
