"""The trust guarantees, tried as a careless and as a hostile user would (issue 12's findings).

Each test reproduces one finding; the comment names it. The CLI runs in-process (typer's
CliRunner) where a single process is the real situation, as a subprocess where it spans processes.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import har, har_process

from pipeline.stores import inputs, store, swap
from pipeline.stages.extract import ExtractConfig, Recipe, extract
from pipeline.stores.status import store_state

ROOT = Path(__file__).resolve().parents[2]
SYNC = "synchronous"
TINY = Recipe(frames=4, height=24, width=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 classes x 2 groups x 1 clip of 10 frames: a dataset extracted in a second or two."""
    from pipeline.datasets.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("trust") / "data"
    generate(root, SynthConfig(classes=3, groups=2, clips=1, frames=10))
    return root


@pytest.fixture
def data(dataset, tmp_path):
    """A private copy of the dataset that a test may change."""
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    return root


def one_line_error(code, err, expected_code=2):
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def run(root, out, recipe=TINY, **kw):
    return extract(ExtractConfig("synthetic", recipe, root=root, out=out, scheduler=SYNC, **kw))


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. outputs: never delete what is not ours ------------------------------------------------

def test_extract_force_never_deletes_a_users_folder(data, tmp_path):
    mine = tmp_path / "thesis"
    (mine / "chapters").mkdir(parents=True)
    (mine / "chapters" / "1.tex").write_text("months of work")
    before = snapshot(mine)
    code, _, err = har("extract", "synthetic", "--root", data, "--out", mine, "--force", "--scheduler", SYNC)
    assert "not a har frame store" in one_line_error(code, err)
    assert snapshot(mine) == before


@pytest.mark.parametrize("out", ["ROOT", "PARENT", "", "."])
def test_extract_never_writes_over_its_dataset_or_the_current_directory(data, tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    target = {"ROOT": data, "PARENT": data.parent, "": "", ".": "."}[out]
    before = snapshot(data)
    code, _, err = har("extract", "synthetic", "--root", data, "--out", target, "--force", "--scheduler", SYNC)
    one_line_error(code, err)
    assert snapshot(data) == before
    assert {p.name for p in tmp_path.iterdir()} <= {"data", "har_home"}  # nothing written beside it


def test_a_stray_working_store_name_is_never_deleted(data, tmp_path):
    """recover/resumable remove only har's own leftovers, judged by content, not by name."""
    out = tmp_path / "s.zarr"
    (tmp_path / "s.zarr.partial.zarr").mkdir()
    (tmp_path / "s.zarr.partial.zarr" / "notes.txt").write_text("mine")
    (tmp_path / "s.zarr.old-notes").write_text("mine too")
    with pytest.raises(store.StoreError, match="not a har working store"):
        run(data, out)
    assert (tmp_path / "s.zarr.partial.zarr" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "s.zarr.old-notes").read_text() == "mine too"


# ---- 2. features never replaces its input or another kind of store ---------------------------

def test_features_never_writes_over_its_own_frame_store(data, tmp_path):
    frames = run(data, tmp_path / "f.zarr").store
    before = snapshot(frames)
    code, _, err = har("features", "--store", frames, "--out", frames, "--backbone", "resnet18", "--weights", "none",
                       "--device", "cpu")
    assert "input of this command" in one_line_error(code, err)
    assert snapshot(frames) == before


def test_features_never_replaces_a_frame_store_or_a_folder(data, tmp_path):
    frames = run(data, tmp_path / "f.zarr").store
    other = run(data, tmp_path / "other.zarr", Recipe(frames=2, height=24, width=32)).store
    before = snapshot(other)
    for force in ([], ["--force"]):
        code, _, err = har("features", "--store", frames, "--out", other, "--backbone", "resnet18", "--weights",
                           "none", "--device", "cpu", *force)
        assert "not a har feature store" in one_line_error(code, err)
    assert snapshot(other) == before


# ---- 6. a store replaced while it is read ----------------------------------------------------

def test_features_stops_when_its_frame_store_is_replaced_midway(data, tmp_path):
    from pipeline.stages import features as F

    frames = run(data, tmp_path / "f.zarr").store
    other = run(data, tmp_path / "other.zarr", Recipe(frames=4, height=24, width=32, seed=7, sampling="random-uniform"))
    swapped = []

    def replace_after_first(done, total, n):
        if done and not swapped:  # what `har extract --force` does: rename the new version into place
            work = swap.work_path(frames)
            shutil.copytree(other.store, work)
            swap.swap_in(work, frames, "zarr")
            swapped.append(True)

    out = tmp_path / "feat.zarr"
    with pytest.raises(F.StoreChanged, match="replaced while har features read it"):
        F.features(F.FeatureConfig(backbone="resnet18", weights="none", store=frames, out=out, device="cpu",
                                   batch_size=8), progress=replace_after_first)
    assert swapped and not out.exists() and not swap.work_path(out).exists()


# ---- 7. an interrupted run's working store is not an input -----------------------------------

def test_a_partial_store_is_refused_and_reported_incomplete(data, tmp_path):
    frames = run(data, tmp_path / "f.zarr").store
    partial = tmp_path / "x.zarr.partial.zarr"
    shutil.copytree(frames, partial)
    import zarr

    zarr.open_group(str(partial), mode="r+").attrs["complete"] = False
    with pytest.raises(store.StoreError, match="unfinished"):
        inputs.open_input(partial, "frames", "har features")
    assert store_state(partial).state == "incomplete"
    code, out, _ = har("status", partial)
    assert code == 3 and "incomplete" in out


# ---- 8. change detection compares content when a file is rewritten in place ------------------

def test_a_rewritten_video_with_restored_size_and_mtime_is_redone(data, tmp_path):
    out = tmp_path / "f.zarr"
    run(data, out)
    video = sorted(data.rglob("*.avi"))[0]
    st = video.stat()
    raw = bytearray(video.read_bytes())
    other = sorted(data.rglob("*.avi"))[-1].read_bytes()
    raw[-200:] = other[-200:] if len(other) >= 200 else raw[-200:]
    raw[len(raw) // 2] ^= 0x55
    video.write_bytes(bytes(raw))
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert video.stat().st_size == st.st_size and video.stat().st_mtime_ns == st.st_mtime_ns
    assert store_state(out).state == "stale"
    again = run(data, out)
    assert not again.up_to_date and again.decoded == 1


def test_verify_rehashes_every_source(data, tmp_path, monkeypatch):
    from pipeline.core import lineage

    out = tmp_path / "f.zarr"
    run(data, out)
    hashed = []
    real = lineage.file_sha256
    monkeypatch.setattr(lineage, "file_sha256", lambda p, *a: hashed.append(p) or real(p, *a))
    assert run(data, out).up_to_date and not hashed  # the fast path: nothing read
    assert run(data, out, verify=True).up_to_date and len(hashed) == 6


# ---- 9. failures are facts, not verdicts ------------------------------------------------------

def test_a_transient_failure_is_retried_by_the_next_run(data, tmp_path, monkeypatch):
    from pipeline.stages import extract as E
    from pipeline.decoding import video

    out = tmp_path / "f.zarr"
    real = E.extract_video

    def refuses(path, rel, recipe, threads=0):
        raise video.VideoError("decoder refused: resource temporarily unavailable")

    monkeypatch.setattr(E, "extract_video", refuses)
    first = run(data, out)
    assert len(first.failed) == 6
    monkeypatch.setattr(E, "extract_video", real)
    again = run(data, out)
    assert not again.up_to_date and again.ok == 6 and not again.failed


def test_a_permanent_failure_of_an_unchanged_file_is_not_retried(data, tmp_path):
    bad = sorted(data.rglob("*.avi"))[0]
    bad.write_bytes(b"")
    out = tmp_path / "f.zarr"
    first = run(data, out)
    assert [v for v, _ in first.failed] == [str(bad.relative_to(data))] and "[permanent]" in first.failed[0][1]
    assert run(data, out).up_to_date


# ---- 10. special files and dangling links ------------------------------------------------------

def test_a_fifo_and_a_dangling_symlink_are_recorded_failed_not_fatal(data, tmp_path):
    cls = sorted(p for p in data.iterdir() if p.is_dir())[0]
    os.mkfifo(cls / f"v_{cls.name}_g01_c09.avi")
    (cls / f"v_{cls.name}_g02_c09.avi").symlink_to(tmp_path / "nowhere.avi")
    out = tmp_path / "f.zarr"
    res = har_process("extract", "synthetic", "--root", data, "--out", out, "--scheduler", SYNC, timeout=120)
    assert res.returncode == 3, res.stderr
    assert "FIFO" in res.stderr and "dangling symlink" in res.stderr and "Traceback" not in res.stderr
    with store.StoreReader(out) as r:
        assert (r.read("status") == store.OK).sum() == 6


# ---- 11. bounded resources: refused before allocating, nothing left behind --------------------

@pytest.mark.parametrize("args", [["--frames", "100000000"], ["--views", "100000"],
                                  ["--sampling", "multiclip", "--clips", "100000"]])
def test_requests_that_cannot_fit_are_refused_in_one_line(data, tmp_path, args):
    out = tmp_path / "f.zarr"
    code, _, err = har("extract", "synthetic", "--root", data, "--out", out, "--scheduler", SYNC, *args)
    assert "needs about" in one_line_error(code, err) and "available" in err
    assert {p.name for p in tmp_path.iterdir()} <= {"data", "har_home"}  # no store, no lock, no working store


# ---- 12. the error boundary -------------------------------------------------------------------

def test_a_bug_is_one_line_with_please_report_and_exit_1(data, tmp_path, monkeypatch):
    from pipeline.stages import extract as E

    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(E, "extract", bug)
    code, _, err = har("extract", "synthetic", "--root", data, "--out", tmp_path / "f.zarr")
    line = one_line_error(code, err, expected_code=1)
    assert "bug in har" in line and "please report" in line
    assert "http" not in line and "traceback" in line  # no made-up address: what to send, and how to get it


def test_status_exit_codes(data, tmp_path):
    out = run(data, tmp_path / "f.zarr").store
    assert har("status", out)[0] == 0
    sorted(data.rglob("*.avi"))[0].unlink()
    code, stdout, _ = har("status", out)
    assert code == 3 and "stale" in stdout
    code, stdout, _ = har("status", tmp_path / "nothing.zarr")
    assert code == 3 and "unreadable" in stdout


def as_from_a_shell() -> None:
    """SIGINT as a shell starts a command: default and unblocked (the test process may have
    inherited or set otherwise, e.g. under a CI runner)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_on_extract_is_one_line_and_exit_130(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: no worker prints a traceback."""
    import signal
    import time

    from pipeline.datasets.synth import SynthConfig, generate

    root = tmp_path / "data"
    generate(root, SynthConfig(classes=4, groups=8, clips=2, frames=40))  # 64 videos: still running when signalled
    out = tmp_path / "s.zarr"
    p = subprocess.Popen([sys.executable, "-m", "cli", "extract", "synthetic", "--root", root, "--out", out,
                          "--workers", "2", "--size", "224", "--frames", "48"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, "COLUMNS": "300"}, preexec_fn=as_from_a_shell)
    t0 = time.time()
    while not (swap.work_path(out) / "frames" / "c").exists() and p.poll() is None and time.time() - t0 < 60:
        time.sleep(0.05)  # until the workers are up and the first batch is written
    assert p.poll() is None, "extraction ended before it could be interrupted"
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "error: interrupted; the finished videos are kept, run the same command again to finish"]


def test_a_full_disk_while_training_is_exit_4_with_nothing_half_written(tmp_path, monkeypatch):
    import errno

    import torch
    from helpers import reversed_pair_features, write_feature_store

    f, y, g = reversed_pair_features(videos_per_class=6, groups=3, frames=4, dim=8)
    feats = write_feature_store(tmp_path / "f.zarr", f, y, g, ["A", "B", "C", "D"])
    calls = []

    def full(obj, path, *a, **k):
        calls.append(path)
        if len(calls) > 2:  # a few checkpoints fit, then the disk is full
            Path(path).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(obj, path, *a, **k)

    real = torch.save
    monkeypatch.setattr(torch, "save", full)
    run = tmp_path / "run"
    code, _, err = har("train-head", "mean", "--features", feats, "--out", run, "--epochs", "5", "--device", "cpu")
    assert "no space left" in one_line_error(code, err, expected_code=4)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or "tmp" in p.suffix]


def test_a_users_folder_that_looks_like_a_run_is_not_one(tmp_path):
    from pipeline.core import outputs

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.json").write_text('{"lr": 0.1}')
    (exp / "report.md").write_text("my notes")
    with pytest.raises(outputs.OutputError, match="not a har run folder"):
        outputs.check_output(exp, "run")


def test_a_truncated_video_is_a_permanent_failure_and_a_rerun_is_up_to_date(data, tmp_path):
    video = sorted(data.rglob("*.avi"))[0]
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    out = tmp_path / "f.zarr"
    first = run(data, out)
    assert len(first.failed) == 1 and "[permanent]" in first.failed[0][1]
    assert run(data, out).up_to_date


def test_a_symlinked_out_is_written_through_and_rerun(data, tmp_path):
    real = tmp_path / "real.zarr"
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    first = run(data, link)
    assert real.is_dir() and link.is_symlink() and first.ok == 6
    assert run(data, link, force=True).ok == 6 and link.is_symlink()
    assert run(data, link).up_to_date


def test_an_output_inside_an_input_is_refused(data, tmp_path):
    frames = run(data, tmp_path / "f.zarr").store
    code, _, err = har("features", "--store", frames, "--out", frames / "feat.zarr", "--backbone", "resnet18",
                       "--weights", "none", "--device", "cpu")
    assert "inside" in one_line_error(code, err) and not (frames / "feat.zarr").exists()


def test_a_frame_store_replaced_during_training_is_named_as_replaced(data, tmp_path):
    from trainers.data import clips, views as training_data

    frames = run(data, tmp_path / "f.zarr", Recipe(sampling="clip", frames=4, height=24, width=32)).store
    cs = training_data.open_view(frames, "frames")
    ds = clips.ClipDataset(cs.path, cs.labels, cs.fingerprint)
    ds[0, 0]  # opened: the old version's checksums are held
    other = run(data, tmp_path / "o.zarr", Recipe(sampling="random-uniform", frames=4, height=24, width=32, seed=5))
    work = swap.work_path(frames)
    shutil.copytree(other.store, work)
    swap.swap_in(work, frames, "zarr")
    with pytest.raises(store.StoreError, match="replaced while training"):
        for v in range(6):
            ds[v, 0]


def test_an_atomic_write_that_fails_removes_its_own_temporary_file_and_nothing_else(tmp_path):
    from pipeline.core.files import current_umask, replace_atomically

    target = tmp_path / "f.json"
    target.write_text("old")

    def half_then_full(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        replace_atomically(target, half_then_full)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    (tmp_path / "f.json.tmp").mkdir()  # someone else's folder and link where a fixed temporary name would go
    (tmp_path / "f.json.tmp" / "keep.txt").write_text("keep")
    (tmp_path / "victim.txt").write_text("victim")
    (tmp_path / ".f.json.tmp").symlink_to(tmp_path / "victim.txt")
    replace_atomically(target, lambda tmp: tmp.write_text("new"))  # a fresh temporary file of its own
    assert (tmp_path / "f.json.tmp" / "keep.txt").read_text() == "keep" and target.read_text() == "new"
    assert (tmp_path / "victim.txt").read_text() == "victim" and not target.is_symlink()
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())
