"""A run folder and its files are not trusted: crafted or damaged checkpoints, configs and
lineage, out-of-range settings, a model too large for the machine, a store whose classes do not
cover its labels, a foreign or busy --out folder and a full disk each end in one line (a
ValueError; OSError ENOSPC for the disk), and nothing in a run folder runs code."""
import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import har
import torch

from helpers import reversed_pair_features, write_feature_store
from trainers.runs import cv as crossval
from trainers.training import config, head_task, loop, losses
from trainers.data import views
from trainers.inference import predictor
from trainers.runs import runner

CLASSES = ["Grow", "Shrink", "Brighten", "Darken"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    f, y, g = reversed_pair_features(videos_per_class=6, frames=4, dim=8)
    return write_feature_store(tmp_path_factory.mktemp("feats") / "f.zarr", f, y, g, CLASSES)


def _cfg(**kw):
    base = dict(head="gru", head_options=config.HeadConfig(hidden=8, dropout=0.0), epochs=2, batch_size=16,
                precision="fp32", device="cpu")
    return head_task.HeadTrainConfig(**{**base, **kw})


def _rc(store, out, **kw):
    return head_task.HeadRunConfig(_cfg(**kw), features=store, out=out)


@pytest.fixture(scope="module")
def finished(store, tmp_path_factory):
    """A finished run; tests tamper with copies of it."""
    return head_task.train_head(_rc(store, tmp_path_factory.mktemp("finished") / "run")).run_dir


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


_cli = har


def _one_line_exit_2(res, *fragments):
    text = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stdout + res.stderr
    for f in fragments:
        assert f in text, text


class Crafted:
    """Unpickling this runs code: it makes the folder `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


# ---- 1. last.pt is read weights-only: a crafted pickle is refused unread -------------------------

def test_a_crafted_last_pt_is_refused_before_any_of_it_runs(store, tmp_path):
    cfg = _rc(store, tmp_path / "r", epochs=3)
    head_task.train_head(cfg, stop_after=1)
    marker = tmp_path / "pwned"
    torch.save({"fingerprint": "x", "model": Crafted(marker)}, tmp_path / "r" / "last.pt")
    with pytest.raises(ValueError, match=r"r/last\.pt is not a readable har checkpoint: .*refused unread.*"
                                         r"delete it to train this run from the start"):
        head_task.train_head(cfg)
    assert not marker.exists(), "unpickling last.pt ran code"
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_last_pt_holds_only_what_weights_only_loading_reads(store, tmp_path, monkeypatch):
    """Even when a task's numbers come back as numpy scalars, last.pt and best.pt load weights-only,
    and the run resumes from them."""
    real = losses.loss_and_accuracy
    monkeypatch.setattr(losses, "loss_and_accuracy", lambda *a: tuple(np.float64(v) for v in real(*a)))
    for sched in ("plateau", "exponential", "cosine", "none"):
        cfg = _rc(store, tmp_path / sched, epochs=3, scheduler=sched, optimizer="adamw")
        head_task.train_head(cfg, stop_after=1)
        for name in ("last.pt", "best.pt"):
            torch.load(tmp_path / sched / name, weights_only=True)
        assert head_task.train_head(cfg).summary["epochs_run"] == 3


# ---- 2. a damaged or crafted best.pt / last.pt: one line naming the file -------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_truncated_best_pt_is_one_line_in_evaluate_predict_and_load_best(run):
    _truncate(run / "best.pt")
    msg = r"run/best\.pt is not a readable har checkpoint: .*; retrain or restore it"
    with pytest.raises(ValueError, match=msg):
        runner.evaluate_run(run)
    with pytest.raises(ValueError, match=msg):
        predictor.load(run, "cpu")
    fs = views.load(json.loads((run / "lineage.json").read_text())["inputs"]["features_store"])
    with pytest.raises(ValueError, match=msg):
        loop.load_best(head_task.FeatureTask(fs).build(_cfg(), None), run, torch.device("cpu"))
    _one_line_exit_2(_cli("evaluate", run), "best.pt is not a readable har checkpoint")


def test_a_crafted_best_pt_is_refused_unread(run, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": Crafted(marker)}, run / "best.pt")
    with pytest.raises(ValueError, match=r"best\.pt is not a readable har checkpoint: .*refused unread"):
        runner.evaluate_run(run)
    assert not marker.exists()
    _one_line_exit_2(_cli("evaluate", run), "best.pt is not a readable har checkpoint")


def test_a_truncated_last_pt_is_refused_not_trained_over(store, tmp_path):
    cfg = _rc(store, tmp_path / "r", epochs=3)
    head_task.train_head(cfg, stop_after=1)
    _truncate(tmp_path / "r" / "last.pt")
    with pytest.raises(ValueError, match=r"r/last\.pt is not a readable har checkpoint: .*delete it to train"):
        head_task.train_head(cfg)
    (tmp_path / "r" / "last.pt").unlink()  # as the message says: then it trains from the start
    assert head_task.train_head(cfg).summary["epochs_run"] == 3


# ---- 3. config.json, lineage.json and checkpoint contents are checked ---------------------------

def _edit_json(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize("tamper, message", [
    (lambda r: (r / "config.json").write_text("{not json"), r"config\.json is not valid JSON"),
    (lambda r: (r / "config.json").write_text("[1, 2]"), r"config\.json holds a JSON list"),
    (lambda r: _edit_json(r / "config.json", lambda c: c.pop("lr")), r"config\.json: key lr is missing"),
    (lambda r: _edit_json(r / "config.json", lambda c: c.update(evil=1)), r"config\.json: unknown key evil"),
    (lambda r: _edit_json(r / "config.json", lambda c: c["head_options"].pop("hidden")),
     r"config\.json: key head_options\.hidden is missing"),
    (lambda r: _edit_json(r / "config.json", lambda c: c["head_options"].update(hidden="big")),
     r"config\.json: head_options\.hidden is 'big'"),
    (lambda r: _edit_json(r / "config.json", lambda c: c.update(lr=float("nan"))), r"config\.json: --lr nan"),
    (lambda r: _edit_json(r / "config.json", lambda c: c.update(head="svm")), r"config\.json: unknown head 'svm'"),
    (lambda r: (r / "lineage.json").unlink(), r"lineage\.json is missing"),
    (lambda r: (r / "lineage.json").write_text("\x00garbled"), r"lineage\.json is not valid JSON"),
    (lambda r: _edit_json(r / "lineage.json", lambda c: c.pop("inputs")), r"lineage\.json: key inputs"),
    (lambda r: _edit_json(r / "lineage.json", lambda c: c["predict"].pop("dim")), r"lineage\.json: predict\.dim"),
])
def test_a_damaged_config_or_lineage_is_one_line_naming_the_file_and_key(run, tamper, message):
    tamper(run)
    load = predictor.load if "predict" in message else runner.load_run
    with pytest.raises(ValueError, match=message):
        load(run)


def test_a_run_from_before_the_newer_settings_loads_with_their_neutral_values(run):
    """config.json of an earlier har has no label_smoothing or warmup_epochs: it ran without them."""
    _edit_json(run / "config.json", lambda c: [c.pop(k) for k in ("label_smoothing", "warmup_epochs")])
    cfg, _, _ = runner.load_run(run)
    assert (cfg.label_smoothing, cfg.warmup_epochs) == (0.0, 0.0)
    assert runner.evaluate_run(run)["top1"] >= 0


def test_damaged_config_is_exit_2_in_evaluate_and_predict(run, synthetic_root):
    _edit_json(run / "config.json", lambda c: c.update(evil=1))
    _one_line_exit_2(_cli("evaluate", run), "config.json: unknown key evil")
    clip = synthetic_root / "Grow" / "v_Grow_g01_c01.avi"
    _one_line_exit_2(_cli("predict", clip, "--run", run), "config.json: unknown key evil")


def test_checkpoint_contents_are_checked(run, store, tmp_path):
    own = torch.load(run / "best.pt", weights_only=True)
    torch.save({"weights": own["model"]}, run / "best.pt")
    with pytest.raises(ValueError, match=r"run/best\.pt is not a readable har checkpoint: no \"model\" weights"):
        runner.evaluate_run(run)
    own["model"].pop("1.fc.bias")
    torch.save(own, run / "best.pt")
    with pytest.raises(ValueError, match=r"best\.pt does not fit this run's model \(missing 1\.fc\.bias"):
        runner.evaluate_run(run)
    other = head_task.train_head(_rc(store, tmp_path / "wide", head_options=config.HeadConfig(hidden=12))).run_dir
    shutil.copy(other / "best.pt", run / "best.pt")
    with pytest.raises(ValueError, match=r"run/best\.pt does not fit this run's model \(.* has shape \(36, 8\), "
                                         r"this run's model \(24, 8\)"):
        runner.evaluate_run(run)


# ---- 3b. metrics.json is read back through one checked reader (compare, cv, serve, up to date) ------

@pytest.mark.parametrize("tamper, message", [
    (lambda m: m.update(split="groups"), "key split is 'groups'; allowed: an object with the split's name"),
    (lambda m: m["split"].update(name=7), "key split.name is 7; allowed: text"),
    (lambda m: m["test"]["per_class"][0].pop("class"), "key test.per_class[0].class is missing; allowed: a class name"),
    (lambda m: m.update(test=[1]), "key test is [1]; allowed: an object of metrics"),
    (lambda m: m["test"]["per_class"][1].update(f1="high"),
     "key test.per_class[1].f1 is 'high'; allowed: a number from 0 to 1, or NaN"),
    (lambda m: m["test"]["per_class"].append(dict(m["test"]["per_class"][0])),
     "key test.per_class[4].class is 'Grow'; allowed: a class name (text), each once in test.per_class"),
    (lambda m: m["test"]["per_class"].append(3), "key test.per_class[4] is 3"),
    (lambda m: m["test"].pop("top1"), "key test.top1 is missing"),
    (lambda m: m["test"].update(top5=float("inf")), "key test.top5 is inf"),
    (lambda m: m["test"].update(f1_macro=1.5), "key test.f1_macro is 1.5; allowed: a number from 0 to 1"),
    (lambda m: m["val"].update(videos=-3), "key val.videos is -3; allowed: a whole number >= 0"),
    (lambda m: m.update(epochs_run=True), "key epochs_run is True; allowed: a whole number >= 0"),
    (lambda m: m.pop("fingerprint"), "key fingerprint is missing; allowed: text"),
    (lambda m: m.update(joint=True), "key val.datasets is missing; allowed: an object of each dataset's metrics"),
    (lambda m: m["test"].update(datasets={"a": {"videos": 1}}), "key test.datasets.a.top1 is missing"),
    (lambda m: m.update(alone={"a": 1}), "key alone.a is 1"),
    (lambda m: m.update(backbone=["r", 18]), "key backbone is ['r', 18]; allowed: text or null"),
])
def test_a_damaged_metrics_json_is_one_line_naming_the_file_and_key(run, tamper, message):
    _edit_json(run / "metrics.json", tamper)
    with pytest.raises(ValueError) as e:
        runner.read_metrics(run)
    assert str(e.value).startswith(f"{run / 'metrics.json'}: {message}"), str(e.value)
    assert "\n" not in str(e.value) and str(e.value).endswith(runner.RUN_REMEDY)


def test_a_sound_metrics_json_reads_as_written_and_a_missing_one_is_an_unfinished_run(run):
    assert json.dumps(runner.read_metrics(run)) == json.dumps(json.loads((run / "metrics.json").read_text()))
    (run / "metrics.json").unlink()
    with pytest.raises(ValueError, match=r"run is not finished \(no metrics\.json\)"):
        runner.read_metrics(run)


def test_an_up_to_date_rerun_checks_metrics_json_before_saying_so(run, store):
    """The fingerprint matches (the same command): the rest of metrics.json is what the command
    prints, so a damaged key is one line, never a KeyError after "up to date"."""
    cfg = _rc(store, run)
    assert head_task.train_head(cfg).up_to_date
    _edit_json(run / "metrics.json", lambda m: m["test"].pop("videos"))
    with pytest.raises(ValueError, match=r"metrics\.json: key test\.videos is missing"):
        head_task.train_head(cfg)


def test_cv_reads_its_finished_folds_through_the_checked_reader(store, tmp_path):
    out = tmp_path / "cv"
    cmd = ("cv", "mean", "--features", store, "--epochs", 1, "--out", out, "--tracker", "none")
    first = _cli(*cmd)
    assert first.returncode == 0, first.stderr
    fold = sorted(p for p in out.iterdir() if (p / "metrics.json").exists())[1]
    _edit_json(fold / "metrics.json", lambda m: m["test"].update(f1_macro="high"))
    cv_json = (out / "cv.json").read_bytes()
    _one_line_exit_2(_cli(*cmd), f"{fold / 'metrics.json'}: key test.f1_macro is 'high'; allowed: a number")
    assert (out / "cv.json").read_bytes() == cv_json


# ---- 3c. "up to date" is said only over a best.pt that every reader would load --------------------

@pytest.mark.parametrize("damage, message", [
    (lambda p, marker: torch.save({"model": Crafted(marker)}, p), "refused unread"),
    (lambda p, marker: _truncate(p), "is not a readable har checkpoint"),
    (lambda p, marker: torch.save({"model": {"w": torch.zeros(3)}}, p), "does not fit this run's model"),
])
def test_train_head_is_not_up_to_date_over_a_best_pt_that_is_not_its_own(store, tmp_path, damage, message):
    out = tmp_path / "r"
    cmd = ("train-head", "mean", "--features", store, "--epochs", 1, "--out", out, "--tracker", "none")
    first = _cli(*cmd)
    assert first.returncode == 0, first.stderr
    assert "up to date" in _cli(*cmd).stdout
    marker = tmp_path / "pwned"
    damage(out / "best.pt", marker)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    res = _cli(*cmd)
    _one_line_exit_2(res, str(out / "best.pt"), message, "har does not train over a file it did not write")
    assert "up to date" not in res.stdout + res.stderr
    assert not marker.exists(), "unpickling best.pt ran code"
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}  # nothing trained over it


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

def _no_space(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_saving_a_checkpoint_leaves_no_temporary_file(store, tmp_path, monkeypatch):
    real_save = torch.save

    def half_then_full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:100])
        _no_space()

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError) as e:
        head_task.train_head(_rc(store, tmp_path / "r"))
    assert e.value.errno == errno.ENOSPC
    left = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert not [n for n in left if "tmp" in n] and "best.pt" not in left, left


def test_a_full_disk_while_writing_metrics_or_figures_leaves_no_partial_file(store, tmp_path, monkeypatch):
    import matplotlib.figure

    real_write = Path.write_text

    def half_then_full(self, text, *a, **k):
        if "metrics.json" in self.name:  # the file or its temporary (.metrics.json.XXXX.tmp)
            real_write(self, text[: len(text) // 2], *a, **k)
            _no_space()
        return real_write(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError) as e:
        head_task.train_head(_rc(store, tmp_path / "r"))
    assert e.value.errno == errno.ENOSPC
    left = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert not [n for n in left if "tmp" in n] and "metrics.json" not in left, left
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
