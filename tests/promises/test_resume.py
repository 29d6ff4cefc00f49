"""kill -9 at any moment, run the same command again: it finishes what is missing, and the store
equals an uninterrupted run's, array for array."""
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import numpy as np

from pipeline.stores.store import StoreReader


def har_argv(*args, **kw):
    return [sys.executable, "-m", "cli", *map(str, args)]


def arrays(path):
    with StoreReader(path) as r:
        return {n: r.read(n) for n in r.names()}, r.attrs["lineage"]["fingerprint"]


def pending_fraction(work):
    try:
        with StoreReader(work) as r:
            s = r.read("status")
        return float((s == 0).mean())
    except Exception:
        return None


def test_kill_9_then_rerun_equals_uninterrupted(synthetic_root, tmp_path):
    out = tmp_path / "killed.zarr"
    work = tmp_path / "killed.zarr.partial.zarr"
    cmd = har_argv("extract", "synthetic", "--root", synthetic_root, "--out", out, "--frames", 12, "--size", 96,
              "--views", 2, "--scheduler", "synchronous")
    cwd = str(Path(__file__).resolve().parents[2])
    partial_kills = 0
    delay = 0.8
    for _ in range(30):
        p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if p.poll() is not None:
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        frac = pending_fraction(work)
        if frac is not None and 0 < frac < 1:
            partial_kills += 1
        delay += 0.25
    assert partial_kills >= 1, "no kill landed half-way through; the test did not test resuming"
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.exists() and not work.exists()
    ref = subprocess.run(har_argv("extract", "synthetic", "--root", synthetic_root, "--out", tmp_path / "ref.zarr",
                             "--frames", 12, "--size", 96, "--views", 2, "--scheduler", "synchronous"),
                         cwd=cwd, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    (a, fa), (b, fb) = arrays(out), arrays(tmp_path / "ref.zarr")
    assert fa == fb and a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    again = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert "up to date" in again.stdout
