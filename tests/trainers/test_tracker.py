"""Training dashboards: TensorBoard events (read back with TensorBoard's own reader), live during
training, rank 0 only, not part of a run's fingerprint; MLflow and W&B in their local modes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import har, reversed_pair_features, write_feature_store
from PIL import Image

from trainers.training import head_task
from trainers.training.config import HeadConfig, HeadTrainConfig

CLASSES = ["Grow", "Shrink", "Brighten", "Darken"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    f, y, g = reversed_pair_features()
    return write_feature_store(tmp_path_factory.mktemp("feats") / "f.zarr", f, y, g, CLASSES)


def events(folder):
    """The run's one TensorBoard run (RUN/tensorboard/<fingerprint>), or `folder` itself."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if folder.name == "tensorboard":
        (folder,) = [p for p in folder.iterdir() if p.is_dir()]

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_holds_every_epoch_the_confusion_image_and_the_hyperparameters(store, tmp_path):
    r = har("train-head", "lstm", "--features", store, "--epochs", 4, "--hidden", 16, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    acc = events(tmp_path / "run" / "tensorboard")
    for tag, key in (("accuracy/val", "val_acc"), ("accuracy/train", "train_acc"), ("loss/train", "train_loss"),
                     ("loss/val", "val_loss"), ("lr", "lr"), ("time/epoch_seconds", "seconds")):
        got = scalars(acc, tag)
        assert [s for s, _ in got] == [h["epoch"] for h in history]
        np.testing.assert_allclose([v for _, v in got], [h[key] for h in history], rtol=1e-6, atol=1e-7)
    speed = scalars(acc, "time/videos_per_second")
    assert len(speed) == 4 and all(v > 0 for _, v in speed)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert scalars(acc, "test/top1")[0][1] == pytest.approx(metrics["test"]["top1"])
    (img,) = acc.Images("confusion/test")
    with Image.open(tmp_path / "run" / "confusion.png") as png:
        assert (img.width, img.height) == png.size
    from tensorboard.plugins.hparams import plugin_data_pb2

    (board,) = (tmp_path / "run" / "tensorboard").iterdir()
    hp = events(board / "hparams").PluginTagToContent("hparams")
    start = next(plugin_data_pb2.HParamsPluginData.FromString(c) for c in hp.values()
                 if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
    got = start.session_start_info.hparams
    assert got["lr"].number_value == pytest.approx(1e-3) and got["head"].string_value == "lstm"
    assert got["head_options.hidden"].number_value == 16 and got["split"].string_value == "groups"


def test_epochs_reach_the_dashboard_while_training_and_a_resume_adds_only_the_rest(store, tmp_path):
    seen = []
    cfg = head_task.HeadRunConfig(HeadTrainConfig(epochs=5, head_options=HeadConfig(hidden=16), patience=50),
                              features=store, out=tmp_path / "run")

    def on_epoch(row):  # called after the tracker: the event file already holds this epoch
        seen.append([s for s, _ in scalars(events(tmp_path / "run" / "tensorboard"), "accuracy/val")])

    head_task.train_head(cfg, on_epoch=on_epoch, stop_after=2)  # as a kill after epoch 2 would leave it
    assert seen == [[1], [1, 2]]
    head_task.train_head(cfg)
    steps = [s for s, _ in scalars(events(tmp_path / "run" / "tensorboard"), "accuracy/val")]
    assert sorted(steps) == [1, 2, 3, 4, 5]


def test_the_tracker_changes_nothing_a_run_computes(store, tmp_path):
    args = ["train-head", "mean", "--features", store, "--epochs", 2, "--out", tmp_path / "run"]
    assert har(*args, "--tracker", "none").returncode == 0
    assert not (tmp_path / "run" / "tensorboard").exists()
    r = har(*args)  # tensorboard now: the same run, already finished
    assert r.returncode == 0 and "up to date" in r.stdout


@pytest.mark.parametrize("name, message", [("visdom", "allowed: tensorboard, mlflow, wandb, none"),
                                           ("", "allowed: tensorboard")])
def test_an_unknown_tracker_is_one_line_before_anything_is_written(store, tmp_path, name, message):
    r = har("train-head", "mean", "--features", store, "--out", tmp_path / "run", "--tracker", name)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_missing_optional_tracker_names_the_extra(store, tmp_path, monkeypatch):
    from trainers.runs import tracker

    monkeypatch.setitem(tracker.NEEDS, "mlflow", ("no_such_mlflow_module", "har[mlflow]"))
    r = har("train-head", "mean", "--features", store, "--out", tmp_path / "run", "--tracker", "mlflow")
    assert r.returncode == 2 and "pip install 'har[mlflow]'" in r.stderr
    assert not (tmp_path / "run").exists()


def test_a_video_model_run_writes_the_dashboard_too(frames, tmp_path):
    r = har("train-e2e", "small-c3d", "--frames", frames, "--epochs", 2, "--crop", 32, "--workers", 0,
            "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    acc = events(tmp_path / "run" / "tensorboard")
    assert [s for s, _ in scalars(acc, "accuracy/val")] == [1, 2]
    assert acc.Images("confusion/test")


def test_mlflow_local_file_store(store, tmp_path):
    pytest.importorskip("mlflow")
    r = har("train-head", "mean", "--features", store, "--epochs", 3, "--out", tmp_path / "run", "--tracker", "mlflow")
    assert r.returncode == 0, r.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("har").experiment_id])
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    got = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "accuracy_val"), key=lambda m: m.step)]
    np.testing.assert_allclose(got, [h["val_acc"] for h in history])
    assert run.data.params["head"] == "mean"
    assert "confusion.png" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_wandb_offline(store, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    r = har("train-head", "mean", "--features", store, "--epochs", 3, "--out", tmp_path / "run", "--tracker", "wandb")
    assert r.returncode == 0, r.stderr
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")  # what `wandb sync` uploads; wandb offers no reader of it
    data = log.read_bytes()
    assert data.count(b"accuracy/val") >= 3 and b"test/top1" in data and b"head_options.hidden" in data, \
        (len(data), r.stderr[-2000:])


def test_a_failing_tracker_is_a_warning_and_the_run_finishes(store, tmp_path, monkeypatch):
    from trainers.runs import tracker

    def broken(self, row, throughput):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracker.TensorBoard, "epoch", broken)
    r = har("train-head", "mean", "--features", store, "--epochs", 2, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert "--tracker tensorboard failed at epoch (OSError" in r.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_another_config_in_the_same_folder_gets_its_own_dashboard(store, tmp_path):
    cfg = head_task.HeadRunConfig(HeadTrainConfig(epochs=3, head_options=HeadConfig(hidden=16)), features=store,
                              out=tmp_path / "run")
    head_task.train_head(cfg, stop_after=2)                      # interrupted
    from dataclasses import replace

    head_task.train_head(replace(cfg, train=replace(cfg.train, lr=3e-3)), stop_after=1)  # another config, started over
    boards = sorted(p for p in (tmp_path / "run" / "tensorboard").iterdir())
    assert len(boards) == 2
    assert sorted(len(scalars(events(b), "accuracy/val")) for b in boards) == [1, 2]
