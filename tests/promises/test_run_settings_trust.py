"""What a training run is asked to do is not trusted either: out-of-range settings, a model too
large for the machine, a store whose classes do not cover its labels, a foreign or busy --out
folder and a full disk each end in one line (a ValueError; OSError ENOSPC for the disk), and leave
nothing half-written. The run folder's own files: test_runs_trust.py, whose fixtures these share."""
import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import har, reversed_pair_features, write_feature_store
from test_runs_trust import CLASSES, ROOT, _edit_json, _one_line_exit_2, _rc, finished, run, store  # noqa: F401 (fixtures by name)

from trainers.data import views
from trainers.inference import predictor
from trainers.runs import cv as crossval
from trainers.runs import runner
from trainers.training import config, head_task

_cli = har


# ---- 4. every setting in its range: nan, inf and out-of-range values name the value -----------------

@pytest.mark.parametrize("kw, message", [
    ({"lr": float("inf")}, "--lr inf is not a finite number; allowed: a finite number > 0"),
    ({"lr": float("nan")}, "--lr nan is not a finite number"),
    ({"lr": -1.0}, "--lr -1.0 must be > 0"),
    ({"min_delta": float("nan")}, "--min-delta nan is not a finite number; allowed: a finite number >= 0"),
    ({"min_delta": -0.1}, "--min-delta -0.1 must be >= 0"),
    ({"weight_decay": float("nan")}, "--weight-decay nan is not a finite number"),
    ({"weight_decay": -1e-4}, "--weight-decay -0.0001 must be >= 0"),
    ({"gamma": float("inf")}, "--gamma inf is not a finite number"),
    ({"lr_factor": 1.5}, "--lr-factor 1.5 must be > 0 and < 1"),
    ({"epochs": 0}, "--epochs 0 must be >= 1 (allowed: 1..1000000)"),
    ({"epochs": 10**9}, "--epochs 1000000000 must be <= 1000000"),
    ({"batch_size": 0}, "--batch-size 0 must be >= 1"),
    ({"patience": 0}, "--patience 0 must be >= 1"),
    ({"patience": 10**9}, "--patience 1000000000 must be <= 1000000"),
    ({"seed": 2**70}, "--seed 1180591620717411303424 must be <= "),
    ({"head_options": config.HeadConfig(dropout=float("nan"))},
     "--dropout nan is out of range; allowed: 0 <= dropout < 1"),
    ({"head_options": config.HeadConfig(dropout=-0.1)}, "--dropout -0.1 is out of range"),
    ({"head_options": config.HeadConfig(hidden=0)}, "--hidden 0 must be >= 1"),
    ({"head_options": config.HeadConfig(layers=0)}, "--layers 0 must be >= 1"),
    ({"head_options": config.HeadConfig(layers=100_000)}, "--layers 100000 must be <= 256"),
    ({"head_options": config.HeadConfig(heads=0)}, "--heads 0 must be >= 1"),
    ({"head": "attention", "head_options": config.HeadConfig(hidden=30)}, "--hidden 30 must be a multiple of --heads 4"),
])
def test_training_settings_out_of_range_are_refused(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        head_task.HeadTrainConfig(**kw).validate()


@pytest.mark.parametrize("kw, message", [
    ({"lr": float("inf")}, "--lr inf is not a finite number"),
    ({"min_delta": float("nan")}, "--min-delta nan is not a finite number"),
    ({"crop": 10**6}, "--crop 1000000 must be <= 4096"),
    ({"workers": -1}, "--workers -1 must be >= 0"),
    ({"epochs": 0}, "--epochs 0 must be >= 1"),
])
def test_e2e_settings_out_of_range_are_refused(kw, message):
    from trainers.training import clip_task

    with pytest.raises(ValueError, match=message):
        clip_task.E2EConfig(model="small-cnn-rnn", **kw).validate()


@pytest.mark.parametrize("args, message", [
    (["--lr", "inf"], "--lr inf is not a finite number"),
    (["--min-delta", "nan"], "--min-delta nan is not a finite number"),
    (["--weight-decay", "nan"], "--weight-decay nan is not a finite number"),
    (["--dropout", "1.5"], "--dropout 1.5 is out of range"),
])
def test_train_head_refuses_out_of_range_settings_with_exit_2(store, tmp_path, args, message):
    _one_line_exit_2(_cli("train-head", "mean", "--features", store, "--epochs", "1", "--out", tmp_path / "r", *args),
                     message)
    assert not (tmp_path / "r").exists()


# ---- 5. a model too large for the machine is refused before it is built ------------------------------

def test_a_head_too_large_to_train_is_refused_before_allocating(store, tmp_path):
    with pytest.raises(ValueError, match=r"--hidden 100000000 --layers 1: training the lstm head \([\d,]+ parameters; "
                                         r".*\) needs about .* of memory but cpu has .* available; choose a smaller"):
        head_task.train_head(_rc(store, tmp_path / "r", head="lstm", head_options=config.HeadConfig(hidden=100_000_000)))
    _one_line_exit_2(_cli("train-head", "lstm", "--features", store, "--hidden", "100000000", "--device", "cpu",
                          "--out", tmp_path / "r"), "--hidden 100000000", "available")
    assert not (tmp_path / "r").exists()


def test_a_config_json_asking_for_a_huge_head_is_refused_before_building_it(run):
    _edit_json(run / "config.json", lambda c: c["head_options"].update(hidden=100_000_000))
    with pytest.raises(ValueError, match=r"config\.json: --hidden 100000000 --layers 1: loading the gru head \("):
        runner.evaluate_run(run)
    with pytest.raises(ValueError, match=r"config\.json: --hidden 100000000"):
        predictor.load(run, "cpu")


# ---- 6. a store whose class list does not cover its labels ---------------------------------------

@pytest.mark.parametrize("classes, message", [
    (["Grow"], "lists classes ['Grow']; allowed: 2 or more distinct class names"),
    (["Grow", "Shrink"], "has labels 0..3 but lists 2 classes (labels 0..1)"),
    (["Grow", "Grow", "Shrink", "Darken"], "allowed: 2 or more distinct class names"),
])
def test_a_store_with_too_few_classes_is_one_line_naming_it(tmp_path, classes, message):
    from pipeline.stores import store as stores

    f, y, g = reversed_pair_features(videos_per_class=3, frames=4, dim=8)
    path = write_feature_store(tmp_path / "few.zarr", f, y, g, CLASSES)
    stores._zarr().open_group(path, mode="r+").attrs["classes"] = classes
    with pytest.raises(stores.DamagedStoreError, match="attributes were changed"):
        views.load(path)  # edited after it was sealed: damage
    stores.mark_complete(path)  # sealed so: as a store made from such a dataset would be
    with pytest.raises(ValueError) as e:
        views.load(path)
    assert str(path) in str(e.value) and message in str(e.value)
    _one_line_exit_2(_cli("train-head", "mean", "--features", path, "--out", tmp_path / "r"), "few.zarr", message)


# ---- 7. --out: never a foreign folder or an input; one writer at a time -----------------------------

def test_train_head_refuses_a_folder_that_is_not_a_run(store, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "report.md").write_text("my own report")
    with pytest.raises(ValueError, match=r"--out .*mine is a folder with other files, not a har run folder"):
        head_task.train_head(_rc(store, out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.md"]
    assert (out / "report.md").read_text() == "my own report"
    _one_line_exit_2(_cli("train-head", "mean", "--features", store, "--out", out), "not a har run folder")
    with pytest.raises(ValueError, match="is an input of this command"):
        head_task.train_head(_rc(store, store))


def test_cv_refuses_a_folder_that_is_not_a_cv_folder(store, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a har cv folder"):
        crossval.cv(_rc(store, out), "logo")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_second_writer_of_a_run_folder_is_refused_with_one_line(store, tmp_path):
    """Another process holds the run folder's lock (as a running train-head does): a second
    train-head into it, in another process and in this one, is refused; once free, it trains."""
    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, b'pid %d' % os.getpid())\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {**os.environ, "HAR_HOME": str(tmp_path / "home")}
        res = subprocess.run([sys.executable, "-m", "cli", "train-head", "mean", "--features", str(store),
                              "--epochs", "1", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
        assert res.returncode == 2, res.stdout + res.stderr
        assert f"is being written by another har run (pid {holder.pid})" in " ".join(res.stderr.split())
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 3
        with pytest.raises(ValueError, match="is being written by another har run"):
            head_task.train_head(_rc(store, out))
        assert [p.name for p in out.iterdir()] == [".lock"]
    finally:
        holder.stdin.close()
        holder.wait()
    assert head_task.train_head(_rc(store, out)).summary["epochs_run"] == 2


def test_a_run_holds_its_lock_while_it_trains(store, tmp_path):
    out = tmp_path / "r"
    seen = []

    def on_epoch(row):
        fd = os.open(out / ".lock", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        seen.append(row["epoch"])

    head_task.train_head(_rc(store, out), on_epoch=on_epoch)
    assert seen == [1, 2]
    again = head_task.train_head(_rc(store, out))  # released afterwards, and the folder is still a run
    assert again.up_to_date


# ---- 8. a full disk: no temporary file left, the OSError goes on ----------------------------------

def _train_into_a_full_disk(store, run: Path, name: str) -> None:
    """train_head into `run` ends in ENOSPC, leaving no temporary file and no (partial) `name`."""
    with pytest.raises(OSError) as e:
        head_task.train_head(_rc(store, run))
    assert e.value.errno == errno.ENOSPC
    left = sorted(p.name for p in run.iterdir())
    assert not [n for n in left if "tmp" in n] and name not in left, left


def _no_space(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_saving_a_checkpoint_leaves_no_temporary_file(store, tmp_path, monkeypatch):
    real_save = torch.save

    def half_then_full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:100])
        _no_space()

    monkeypatch.setattr(torch, "save", half_then_full)
    _train_into_a_full_disk(store, tmp_path / "r", "best.pt")


def test_a_full_disk_while_writing_metrics_or_figures_leaves_no_partial_file(store, tmp_path, monkeypatch):
    import matplotlib.figure

    real_write = Path.write_text

    def half_then_full(self, text, *a, **k):
        if "metrics.json" in self.name:  # the file or its temporary (.metrics.json.XXXX.tmp)
            real_write(self, text[: len(text) // 2], *a, **k)
            _no_space()
        return real_write(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", half_then_full)
    _train_into_a_full_disk(store, tmp_path / "r", "metrics.json")
    monkeypatch.undo()
    assert head_task.train_head(_rc(store, tmp_path / "r")).summary["epochs_run"] == 2  # the same call finishes

    real_savefig = matplotlib.figure.Figure.savefig

    def half_figure(self, fname, *a, **k):
        real_savefig(self, fname, *a, **k)
        Path(fname).write_bytes(Path(fname).read_bytes()[:50])
        _no_space()

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_figure)
    with pytest.raises(OSError):
        head_task.train_head(_rc(store, tmp_path / "fig"))
    left = sorted(p.name for p in (tmp_path / "fig").iterdir())
    assert not [n for n in left if "tmp" in n or n.endswith(".png")], left
