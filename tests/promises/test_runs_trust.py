"""A run folder and its files are not trusted: crafted or damaged checkpoints, configs, lineage
and metrics each end in one line (a ValueError) naming the file, nothing in a run folder runs
code, and "up to date" is said only over files every reader would load. What a run is asked to do
(settings, size, classes, --out, a full disk): test_run_settings_trust.py, on these fixtures."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import har, reversed_pair_features, write_feature_store

from trainers.data import views
from trainers.inference import predictor
from trainers.runs import runner
from trainers.training import config, head_task, loop, losses

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
