"""The command line as a user meets it: help, errors, a real run on the default local cluster."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import har, har_process

ROOT = Path(__file__).resolve().parent.parent


def test_help_is_light():
    code = "import sys, cli; print(sorted(m for m in ('torch', 'numpy', 'av', 'zarr', 'dask', 'h5py', 'cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["synth", "extract", "features", "status", "demo"])
def test_every_command_has_help_with_examples(command):
    res = har(command, "--help")
    assert res.returncode == 0 and "Examples" in res.stdout and f"har {command}" in res.stdout


def test_every_choice_is_a_registry_the_help_lists():
    """One registry shape: each choice option reads a pipeline.core.registry.Registry directly (a rename
    fails here, not in a user's --help), and the command's help lists exactly its names."""
    from pipeline.core.registry import Registry
    from trainers import clikit

    for param in clikit.CHOICES:
        reg = clikit.registry(param)
        assert isinstance(reg, Registry) and len(reg) >= 2, param
    from trainers.models import heads

    shown = har("train-head", "--help").stdout
    part = shown[shown.index("--temporal-input"):]
    part = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", part[:part.index(".", part.index("One of:")) + 1]))
    assert part.endswith("One of: " + ", ".join(heads.TEMPORAL_INPUTS.names()) + "."), part


@pytest.mark.parametrize("args, message", [
    (["extract", "kinetics"], "unknown dataset 'kinetics'; allowed: ucf50, ucf101, hmdb51, folder, kinetics400, kinetics600, kinetics700, ssv2, synthetic"),
    (["extract", "synthetic", "--frames", "-3"], "--frames -3 is out of range; allowed: >= 1"),
    (["extract", "synthetic", "--size", "12x"], "--size '12x' is not a size; allowed: PX or HxW"),
    (["extract", "synthetic", "--sampling", "zigzag"], "unknown sampling 'zigzag'; allowed: uniform, random-uniform, clip, multiclip"),
    (["extract", "synthetic", "--recipe", "fast"], "unknown recipe 'fast'; allowed: default"),
    (["extract", "synthetic", "--format", "tiff"], "--format 'tiff' is not supported; allowed: zarr, hdf5"),
    (["extract", "synthetic", "--clips", "3"], "--clips 3 needs --sampling multiclip"),
    (["extract", "synthetic", "--threads", "0"], "--threads 0 is out of range; allowed: 1..1024"),
    (["extract", "synthetic", "--rotate", "200"], "--rotate 200.0 is out of range; allowed: 0 to 180 degrees"),
    (["extract", "ucf50", "--root", "/nonexistent/UCF50"], "ucf50: no dataset folder at /nonexistent/UCF50. Download: https://www.crcv.ucf.edu/data/UCF50.rar"),
    (["extract", "synthetic", "--root", "/nonexistent"], "har synth"),
    (["synth", "x", "--classes", "11"], "--classes 11 is out of range; allowed: 1..10"),
])
def test_usage_errors_are_one_line_exit_2(args, message):
    res = har(*args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_second_writer_refused_from_cli(synthetic_root, tmp_path):
    from pipeline.stores.swap import WriterLock

    out = tmp_path / "s.zarr"
    with WriterLock(out):
        res = har_process("extract", "synthetic", "--root", synthetic_root, "--out", out, "--scheduler", "synchronous")
    assert res.returncode == 2 and "is being written by pid" in res.stderr and not out.exists()


FULL_DISK = """
import errno, sys
import cli
from pipeline.stores import store
real, calls = store.write_batch, []
def write_batch(*a, **k):  # the second batch meets a full disk
    calls.append(1)
    if len(calls) == 2:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(*a, **k)
store.write_batch = write_batch
sys.argv[0] = "har"
cli.app()
"""


def test_full_disk_is_one_line_exit_4_and_the_same_command_finishes(synthetic_root, tmp_path):
    from helpers import assert_same_arrays, store_arrays as arrays

    args = ["extract", "synthetic", "--root", synthetic_root, "--frames", "4", "--size", "32", "--scheduler", "synchronous"]
    out = tmp_path / "s.zarr"
    res = subprocess.run([sys.executable, "-c", FULL_DISK, *map(str, args), "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 4, res.stderr
    assert f"no space left on the device of {out}" in res.stderr and "run the same command again" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing half-written where the store belongs
    assert har(*args, "--out", out).returncode == 0
    assert har(*args, "--out", tmp_path / "clean.zarr").returncode == 0
    assert_same_arrays(arrays(out), arrays(tmp_path / "clean.zarr"))


def test_extract_status_and_stale_detection(synthetic_root, tmp_path, har_home):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    env = {"HAR_HOME": str(har_home)}
    res = har("extract", "synthetic", "--root", root, "--frames", 8, "--size", 48, "--workers", 2, env=env)
    assert res.returncode == 0, res.stderr
    assert "24 ok, 0 failed" in res.stdout and "x the" in res.stdout
    assert re.search(r"frames:  192 \(decoded [\d,]+ of [\d,]+ source frames, \d+%\)", res.stdout), res.stdout
    store = next((har_home / "stores" / "synthetic").glob("*/frames.zarr"))
    assert str(store) in res.stdout
    again = har("extract", "synthetic", "--root", root, "--frames", 8, "--size", 48, env=env)
    assert again.returncode == 0 and again.stdout.startswith("up to date")
    st = har("status", env=env)
    assert "current" in st.stdout and "stale (" not in st.stdout
    (root / "Grow" / "v_Grow_g01_c01.avi").unlink()
    st = har("status", env=env)
    assert "stale (sources: 1 removed)" in st.stdout


def test_failed_videos_listed_exit_3(synthetic_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    (root / "Grow" / "v_Grow_g07_c01.avi").write_bytes(b"")
    res = har("extract", "synthetic", "--root", root, "--out", tmp_path / "s.zarr", "--frames", 4, "--size", 32,
              "--scheduler", "synchronous")
    assert res.returncode == 3
    assert "1 videos failed" in res.stderr and "Grow/v_Grow_g07_c01.avi: empty file" in res.stderr
    assert "24 ok, 1 failed" in res.stdout


@pytest.mark.parametrize("args, flag", [
    (["predict", "s3://b/video.mp4", "--run", "runs/x"], "VIDEO|DIR... s3://b/video.mp4"),
    (["evaluate", "s3://b/runs/lstm"], "RUN_DIR s3://b/runs/lstm"),
])
def test_a_url_where_a_local_path_is_taken_is_one_line_and_writes_nothing(tmp_path, args, flag):
    """pathlib reads s3://bucket/x.zarr as the relative path s3:/bucket/x.zarr: har must not write a
    folder named 's3:' in the current directory and report success (where it takes no URL yet)."""
    code, _, err = har(*args, cwd=tmp_path)
    assert code == 2 and f"error: {flag}: object storage and other URLs are not supported yet" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["extract", "synthetic", "--out", "ftp://host/x.zarr"], "--out ftp://host/x.zarr: URL scheme 'ftp' is not supported"),
    (["extract", "synthetic", "--out", "s3://bucket"], "--out s3://bucket is a whole bucket"),
    (["extract", "folder", "--out", "gs://bucket/x.zarr"], "gs:// needs the gcsfs package"),
    (["extract", "synthetic", "--out", "s3://bucket/x.h5"], "--out s3://bucket/x.h5: an HDF5 file cannot be written "
                                                            "to object storage"),
    (["extract", "synthetic", "--format", "hdf5", "--out", "s3://bucket/x"], "an HDF5 file cannot be written"),
    (["features", "--store", "s3://b/../x.zarr", "--backbone", "resnet18"], "without '.' or '..' parts"),
])
def test_urls_that_cannot_be_stores_are_one_line_before_any_request(tmp_path, args, message, synthetic_root):
    code, _, err = har(*[synthetic_root if a == "ROOT" else a for a in args], "--root", synthetic_root, cwd=tmp_path) \
        if args[0] == "extract" else har(*args, cwd=tmp_path)
    assert code == 2 and message in err, err
    assert list(tmp_path.iterdir()) == []
