"""Training on cached features: heads that use time beat the bag of frames on reversed pairs;
seeded runs are identical; interrupted runs (in-process and kill -9) resume to the same result;
memory-mapped features give the same run; splits, views, failed videos and reruns behave."""
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import reversed_pair_features, write_feature_store
from pipeline.stores import store
from trainers.runs import cv as crossval
from trainers.training import clip_task, config, head_task, loop, losses, optim
from trainers.data import views
from trainers.runs import runner

CLASSES = ["Grow", "Shrink", "Brighten", "Darken"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pair_store(tmp_path_factory):
    f, y, g = reversed_pair_features()
    return write_feature_store(tmp_path_factory.mktemp("feats") / "f.zarr", f, y, g, CLASSES)


def _cfg(head="lstm", **kw):
    base = dict(head=head, head_options=config.HeadConfig(hidden=32, dropout=0.1), epochs=25, batch_size=16,
                lr=3e-3, scheduler="cosine", patience=25)
    return head_task.HeadTrainConfig(**{**base, **kw})


def _train(pair_store, out, **kw):
    return head_task.train_head(head_task.HeadRunConfig(_cfg(**kw), features=pair_store, out=out))


def test_sequence_heads_separate_reversed_pairs_and_the_bag_of_frames_cannot(pair_store, tmp_path):
    acc = {h: _train(pair_store, tmp_path / h, head=h).summary["test"]["reversed_pairs_top1"]
           for h in ("lstm", "gru", "attention", "attentive-probe", "mean")}
    for h in ("lstm", "gru", "attention", "attentive-probe"):
        assert acc[h] >= 0.9, acc
    assert acc["mean"] <= 0.7 and acc["lstm"] - acc["mean"] >= 0.3, acc


def test_run_directory_holds_every_metric_and_figure(pair_store, tmp_path):
    res = _train(pair_store, tmp_path / "run", head="gru", epochs=4)
    for name in ("config.json", "lineage.json", "best.pt", "last.pt", "history.json", "metrics.json",
                 "report.md", "curves.png", "confusion.png", "confusion.csv", "per_class.png", "per_class.csv"):
        assert (res.run_dir / name).stat().st_size > 0, name
    m = json.loads((res.run_dir / "metrics.json").read_text())
    for key in ("top1", "top5", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
                "recall_weighted", "f1_weighted", "roc_auc_ovr_macro", "per_class", "confusion"):
        assert key in m["test"], key
    assert len(m["test"]["confusion"]) == 4 and m["split"]["name"] == "groups" and m["split"]["leakage"] == 0
    assert len(json.loads((res.run_dir / "history.json").read_text())) == 4
    lin = json.loads((res.run_dir / "lineage.json").read_text())
    assert lin["inputs"]["features_fingerprint"] == views.load(pair_store).fingerprint
    # the CPU it trained on: another one can take another trajectory with the same code and versions
    assert lin["versions"]["machine"]["arch"] == platform.machine()
    assert lin["versions"]["machine"]["torch_cpu"] == torch.backends.cpu.get_cpu_capability()
    report = (res.run_dir / "report.md").read_text()
    assert "curves.png" in report and "confusion.png" in report and "per_class.png" in report
    assert (res.run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # har evaluate recomputes the same numbers from the checkpoint
    again = runner.evaluate_run(res.run_dir, "test")
    assert again["top1"] == m["test"]["top1"] and again["confusion"] == m["test"]["confusion"]


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "best.pt", weights_only=True)["model"]


def _same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["test"] == mb["test"] and ma["best_epoch"] == mb["best_epoch"]
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (a, b))
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(ha) == strip(hb)


def test_same_seed_same_run_other_seed_other_weights(pair_store, tmp_path):
    _train(pair_store, tmp_path / "a", epochs=5)
    _train(pair_store, tmp_path / "b", epochs=5)
    _same_run(tmp_path / "a", tmp_path / "b")
    _train(pair_store, tmp_path / "c", epochs=5, seed=1)
    assert not torch.equal(_weights(tmp_path / "a")["1.fc.weight"], _weights(tmp_path / "c")["1.fc.weight"])


def test_interrupted_run_resumes_to_the_uninterrupted_result(pair_store, tmp_path):
    _train(pair_store, tmp_path / "whole", epochs=8, scheduler="plateau", lr_patience=1)
    cfg = head_task.HeadRunConfig(_cfg(epochs=8, scheduler="plateau", lr_patience=1), features=pair_store, out=tmp_path / "cut")
    first = head_task.train_head(cfg, stop_after=3)
    assert first.summary == {"interrupted_after": 3} and not (tmp_path / "cut" / "metrics.json").exists()
    head_task.train_head(cfg)
    _same_run(tmp_path / "whole", tmp_path / "cut")


def test_kill_minus_9_mid_training_then_the_same_command_finishes_identically(tmp_path):
    f, y, g = reversed_pair_features(videos_per_class=30, dim=64, frames=16)
    feats = write_feature_store(tmp_path / "f.zarr", f, y, g, CLASSES)
    args = [sys.executable, "-m", "cli", "train-head", "lstm", "--features", str(feats), "--epochs", "12",
            "--hidden", "128", "--batch-size", "8", "--patience", "12", "--scheduler", "exponential"]
    env = {**os.environ, "HAR_HOME": str(tmp_path / "home")}
    subprocess.run(args + ["--out", str(tmp_path / "whole")], cwd=ROOT, env=env, check=True, capture_output=True)
    victim = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(victim)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (victim / "last.pt").exists():
        time.sleep(0.01)
    time.sleep(0.3)  # somewhere in the following epochs
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (victim / "metrics.json").exists(), "the run finished before it could be killed"
    done = torch.load(victim / "last.pt", weights_only=False)["state"]["epoch"]
    assert 1 <= done < 12
    subprocess.run(args + ["--out", str(victim)], cwd=ROOT, env=env, check=True, capture_output=True)
    _same_run(tmp_path / "whole", victim)


def test_memory_mapped_features_train_the_same_run(pair_store, tmp_path):
    fs = views.load(pair_store, ram_limit=0)
    assert fs.mapped and isinstance(fs.features, np.memmap)
    np.testing.assert_array_equal(fs.features, views.load(pair_store).features)
    _train(pair_store, tmp_path / "ram", epochs=3)
    head_task.train_head(head_task.HeadRunConfig(_cfg(epochs=3), features=pair_store, out=tmp_path / "mapped", ram_limit=0))
    _same_run(tmp_path / "ram", tmp_path / "mapped")


def test_rerun_is_up_to_date_and_a_changed_parameter_is_a_new_run(pair_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = head_task.train_head(head_task.HeadRunConfig(_cfg(epochs=2), features=pair_store))
    b = head_task.train_head(head_task.HeadRunConfig(_cfg(epochs=2), features=pair_store))
    assert b.up_to_date and b.run_dir == a.run_dir and a.run_dir.parent == tmp_path / "runs"
    c = head_task.train_head(head_task.HeadRunConfig(_cfg(epochs=2, lr=1e-3), features=pair_store))
    assert not c.up_to_date and c.run_dir != a.run_dir
    with pytest.raises(ValueError, match="holds another run"):
        head_task.train_head(head_task.HeadRunConfig(_cfg(epochs=3), features=pair_store, out=a.run_dir))


def test_random_split_warns_about_leakage(pair_store, tmp_path):
    res = _train(pair_store, tmp_path / "r", split="random", epochs=2)
    assert res.summary["split"]["leakage"] > 0.5
    assert any("split 'random' leaks groups" in w for w in res.warnings)
    assert "Warning" in (res.run_dir / "report.md").read_text()


def test_failed_videos_are_in_no_split_and_are_reported(tmp_path):
    f, y, g = reversed_pair_features(videos_per_class=6)
    status = np.full(len(y), store.OK, np.int8)
    status[[0, 5]] = store.FAILED
    p = write_feature_store(tmp_path / "f.zarr", f, y, g, CLASSES, status=status)
    fs = views.load(p)
    split = views.make_split(fs, "random")
    used = np.concatenate([split.train, split.val, split.test])
    assert 0 not in used and 5 not in used and len(used) == len(y) - 2
    res = head_task.train_head(head_task.HeadRunConfig(_cfg(epochs=1, split="random"), features=p, out=tmp_path / "r"))
    assert len(res.summary["failed_videos"]) == 2
    assert any("2 videos failed extraction" in w for w in res.warnings)


def test_logo_fold_gets_a_group_disjoint_validation_set(pair_store):
    fs = views.load(pair_store)
    split = views.make_split(fs, "logo03")
    assert split.carved_val and len(split.val) > 0
    gs = [set(fs.groups[part]) for part in (split.train, split.val, split.test)]
    assert gs[2] == {3} and not (gs[0] & gs[1]) and not (gs[0] & gs[2]) and not (gs[1] & gs[2])
    with pytest.raises(ValueError, match="unknown split 'official1'.*allowed: groups, logo01"):
        views.make_split(fs, "official1")


def test_training_draws_augmented_views_and_evaluation_uses_the_clean_one(pair_store):
    fs = views.load(pair_store)
    fs3 = replace(fs, view_index=np.tile(np.array([0, 1, 2], np.int16), (len(fs.labels), 1)))
    drawn = views.train_samples(fs3.view_index, np.arange(len(fs.labels)), np.random.default_rng(0))
    assert set(drawn.tolist()) == {1, 2}
    every = np.arange(len(fs.labels))
    assert set(views.train_samples(fs3.view_index, every, np.random.default_rng(0), "all").tolist()) == {0, 1, 2}
    assert set(views.train_samples(fs3.view_index, every, np.random.default_rng(0), "clean").tolist()) == {0}
    clean_only = replace(fs, view_index=np.zeros((len(fs.labels), 1), np.int16))
    assert set(views.train_samples(clean_only.view_index, np.arange(5), np.random.default_rng(0)).tolist()) == {0}
    np.testing.assert_array_equal(views.eval_samples(fs3), [0])


def test_cv_over_logo_folds_reports_mean_and_std(pair_store, tmp_path):
    res = crossval.cv(head_task.HeadRunConfig(_cfg(epochs=3), features=pair_store, out=tmp_path / "cv"), "logo")
    assert [r["fold"] for r in res.folds] == [f"logo{g:02d}" for g in range(1, 7)]
    tops = [r["top1"] for r in res.folds]
    assert res.summary["top1"]["mean"] == pytest.approx(np.mean(tops))
    assert res.summary["top1"]["std"] == pytest.approx(np.std(tops))
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["summary"]["folds"] == "logo"
    for k in ("top5", "f1_macro", "precision_macro", "recall_macro", "roc_auc_ovr_macro"):  # every metric, per fold
        assert res.summary[k]["values"] == pytest.approx([r[k] for r in res.folds])
    md = (tmp_path / "cv" / "cv.md").read_text()
    assert md.count("| logo0") == 6 and f"**{np.mean(tops):.4f} +- {np.std(tops):.4f}**" in md
    again = crossval.cv(head_task.HeadRunConfig(_cfg(epochs=3), features=pair_store, out=tmp_path / "cv"), "logo")
    assert all(r["up_to_date"] for r in again.folds)
    with pytest.raises(ValueError, match="--folds official: f.zarr has no such splits"):
        crossval.cv(head_task.HeadRunConfig(_cfg(), features=pair_store), "official")


def test_bf16_autocast_trains_the_lstm_head_as_well(pair_store, tmp_path):
    res = _train(pair_store, tmp_path / "bf16", precision="bf16")
    assert res.summary["config"]["precision"] == "bf16"
    assert res.summary["test"]["reversed_pairs_top1"] >= 0.9


def test_cv_over_the_official_splits(tmp_path):
    from pipeline.datasets import datasets

    f, y, g = reversed_pair_features(videos_per_class=12)
    official = {f"official{k}": np.where(g % 3 == k - 1, datasets.TEST, datasets.TRAIN).astype(np.int8)
                for k in (1, 2, 3)}
    p = write_feature_store(tmp_path / "f.zarr", f, y, g, CLASSES, dataset="ucf101", extra_splits=official)
    res = crossval.cv(head_task.HeadRunConfig(_cfg(epochs=2), features=p, out=tmp_path / "cv"), "official")
    assert [r["fold"] for r in res.folds] == ["official1", "official2", "official3"]
    assert res.summary["top1"]["folds"] == 3 and "reversed_pairs_top1" not in res.summary  # not synthetic
    for r, k in zip(res.folds, (1, 2, 3)):
        assert r["test_videos"] == int((g % 3 == k - 1).sum())


def test_gradient_accumulation_equals_one_larger_batch(pair_store):
    """Batches of 8 accumulated twice move the weights as batches of 16 do (no dropout here)."""
    fs = views.load(pair_store)
    task = head_task.FeatureTask(fs)
    videos = np.arange(32)
    results = []
    for batch, acc in ((16, 1), (8, 2)):
        cfg = _cfg("mean", batch_size=batch, accumulate=acc, head_options=config.HeadConfig(dropout=0.0),
                   precision="fp32")
        torch.manual_seed(0)
        model = task.build(cfg, videos)
        opt = optim.make_optimizer(cfg, model.parameters())
        loop.train_one_epoch(model, task, videos, cfg, 1, opt, losses.CrossEntropy(), torch.device("cpu"))
        results.append(model.state_dict())
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-5, atol=1e-6)


def test_torchrun_ddp_on_two_cpu_processes_equals_one_process_with_the_whole_batch(tmp_path):
    """Two gloo ranks, each with half of every batch, end with the weights of one process that
    sees the whole batch (DDP averages the gradients); rank 0 alone writes the run."""
    f, y, g = reversed_pair_features(videos_per_class=24)
    feats = write_feature_store(tmp_path / "f.zarr", f, y, g, CLASSES)
    assert len(views.make_split(views.load(feats), "groups").train) % 2 == 0
    common = ["train-head", "mean", "--features", str(feats), "--epochs", "3", "--dropout", "0",
              "--precision", "fp32", "--lr", "0.01"]
    env = {**os.environ, "HAR_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "cli", *common, "--batch-size", "1000", "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "cli", *common,
                          "--batch-size", "500", "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("report:") == 1                      # rank 0 reports, rank 1 stays quiet
    events = list((tmp_path / "two" / "tensorboard").glob("*/events.out.tfevents.*"))
    assert len(events) == 1                                      # and only rank 0 writes the dashboard
    a, b = (torch.load(tmp_path / d / "best.pt", weights_only=True)["model"] for d in ("one", "two"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # the epoch table's training loss and accuracy cover both ranks' shares, not rank 0's alone
    ha, hb = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("one", "two"))
    for ea, eb in zip(ha, hb, strict=True):
        assert eb["train_acc"] == pytest.approx(ea["train_acc"]) and eb["train_loss"] == pytest.approx(ea["train_loss"], rel=1e-4)


def test_a_store_with_several_clips_is_scored_by_averaging_clip_probabilities(tmp_path):
    """Video-level accuracy: every clean clip of a video is scored and the softmaxes averaged."""
    f, y, g = reversed_pair_features(videos_per_class=6, views=2)    # 3 samples per video
    p = write_feature_store(tmp_path / "f.zarr", f, y, g, CLASSES)
    fs = views.load(p)
    fs = replace(fs, clip_index=np.tile(np.array([0, 1, 0], np.int16), (len(y), 1)),
                 view_index=np.tile(np.array([0, 0, 1], np.int16), (len(y), 1)))  # 2 clean clips + 1 view
    task = head_task.FeatureTask(fs)
    torch.manual_seed(0)
    model = task.build(_cfg("gru"), np.arange(len(y))).eval()
    videos = np.array([0, 7, 13])
    got = task.probabilities(model, videos, torch.device("cpu"))
    with torch.no_grad():
        per_clip = [torch.softmax(model(torch.from_numpy(fs.features[videos, s].astype(np.float32))), 1).numpy()
                    for s in (0, 1)]
    np.testing.assert_allclose(got, (per_clip[0] + per_clip[1]) / 2, rtol=1e-5, atol=1e-6)


def test_reversed_pairs_come_from_the_store_and_from_its_dataset_for_older_stores():
    """Stores record the classes with a time-reversed twin (`reversed_pairs`); a synthetic store made
    before they did (same fingerprint, never rebuilt) still gets them from its dataset."""
    def view(attrs):
        empty = np.zeros(0, np.int64)
        return views.StoreView(Path("s.zarr"), empty, empty, empty.astype(bool), empty, empty, empty, {},
                              {"classes": ["Grow", "Shrink", "Pulse"], **attrs})

    assert view({"dataset": "synthetic"}).reversed_pairs == ["Grow", "Shrink"]
    assert view({"dataset": "synthetic", "reversed_pairs": ["Shrink"]}).reversed_pairs == ["Shrink"]
    assert view({"dataset": "ucf50"}).reversed_pairs == []


def test_warmup_raises_the_rate_linearly_per_step_then_leaves_the_schedule_alone(pair_store):
    """--warmup-epochs 2 with 4 steps per epoch: the steps of epoch 1 at 1/8 .. 4/8 of the rate,
    of epoch 2 at 5/8 .. 8/8, of epoch 3 at the schedule's own rate; between epochs the optimizer
    holds the schedule's rate (what the scheduler steps from)."""
    fs = views.load(pair_store)
    task = head_task.FeatureTask(fs)
    videos = np.arange(32)
    cfg = _cfg("mean", batch_size=8, warmup_epochs=2.0, lr=0.1, precision="fp32")
    model = task.build(cfg, videos)
    opt = optim.make_optimizer(cfg, model.parameters())
    seen = []
    step = opt.step

    def spy(*a, **k):
        seen.append(opt.param_groups[0]["lr"])
        return step(*a, **k)
    opt.step = spy
    for epoch in (1, 2, 3):
        loop.train_one_epoch(model, task, videos, cfg, epoch, opt, losses.CrossEntropy(), torch.device("cpu"))
        assert opt.param_groups[0]["lr"] == 0.1
    assert seen == pytest.approx([0.1 * k / 8 for k in range(1, 9)] + [0.1] * 4)
    assert loop.warmup_factor(_cfg(), 1, 1, 4) == 1.0


def test_label_smoothing_changes_the_loss_it_trains_on(pair_store, tmp_path):
    plain = _train(pair_store, tmp_path / "plain", head="mean", epochs=2)
    smooth = _train(pair_store, tmp_path / "smooth", head="mean", epochs=2, label_smoothing=0.2)
    a, b = (json.loads((r.run_dir / "history.json").read_text()) for r in (plain, smooth))
    # the same start: a smoothed target makes the first epoch's training loss higher (an uncertain target)
    assert b[0]["train_loss"] > a[0]["train_loss"]
    assert json.loads((smooth.run_dir / "config.json").read_text())["label_smoothing"] == 0.2


def test_every_task_class_is_a_task_and_the_defaults_are_the_single_store_ones(pair_store):
    """Every kind's task class inherits tasks.Task with nothing left abstract; a head task's
    optional methods are the base's defaults: all parameters in one group, torch's cross-entropy
    (the same loss and gradients, weighted and smoothed), each video once an epoch, the store's
    split, and the argmax as a right answer."""
    from trainers.training import joint, joint_e2e, tasks

    for cls in (head_task.FeatureTask, clip_task.ClipTask, joint.JointTask, joint_e2e.JointClipTask):
        assert issubclass(cls, tasks.Task) and not cls.__abstractmethods__, cls
    assert isinstance(joint.SlicedLoss(torch.zeros(3, dtype=torch.long)), losses.Loss)

    fs = views.load(pair_store)
    task, cfg = head_task.FeatureTask(fs), _cfg("mean")
    model = task.build(cfg, np.arange(8))
    assert list(task.param_groups(cfg, model)) == list(model.parameters())
    assert task.epoch_videos(cfg, np.arange(7)) == 7
    split = task.make_split("random")
    assert split.name == "random" and np.array_equal(split.test, views.make_split(fs, "random").test)
    torch.manual_seed(0)
    logits, y = torch.randn(12, 4, requires_grad=True), torch.randint(0, 4, (12,))
    for weight, smoothing in ((None, 0.0), (torch.rand(4), 0.2)):
        mine = task.loss(replace(cfg, label_smoothing=smoothing), weight)
        assert isinstance(mine, losses.CrossEntropy)
        theirs = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)
        a, b = mine(logits, y), theirs(logits, y)
        assert torch.equal(a, b)
        assert torch.equal(*(torch.autograd.grad(v, logits)[0] for v in (a, b)))
    assert int(mine.correct(logits, y)) == int((logits.argmax(1) == y).sum())


@pytest.fixture(scope="module")
def noisy_store(tmp_path_factory):
    """Labels unrelated to the features: validation accuracy wanders from epoch to epoch."""
    f, y, g = reversed_pair_features(seed=3)
    y = np.random.default_rng(0).permutation(y)
    return write_feature_store(tmp_path_factory.mktemp("noisy") / "f.zarr", f, y, g, CLASSES)


def _best(hist: list[dict], window: int) -> int:
    """The 0-based epoch of the highest trailing `window` mean val accuracy (ties: lower mean loss,
    earlier), among the epochs that end a full window."""
    acc, loss = np.array([h["val_acc"] for h in hist]), np.array([h["val_loss"] for h in hist])
    mean = lambda x, e: x[e - window + 1:e + 1].mean()  # noqa: E731
    return max(range(window - 1, len(hist)), key=lambda e: (mean(acc, e), -mean(loss, e), -e))


@pytest.mark.parametrize("window", [1, 4])
def test_best_checkpoint_is_chosen_on_the_val_accuracy_of_the_last_epochs(noisy_store, tmp_path, window):
    """--val-window N: best.pt is the epoch whose trailing N-epoch mean val accuracy is highest
    (ties: the lower trailing mean val loss, the earlier epoch; the first N-1 epochs never),
    recomputed here from history.json (where the two windows choose different epochs)."""
    res = _train(noisy_store, tmp_path / f"w{window}", epochs=16, patience=16, val_window=window)
    hist = json.loads((res.run_dir / "history.json").read_text())
    best = _best(hist, window)
    assert best != _best(hist, 5 - window)  # the test can tell the windows apart
    m = json.loads((res.run_dir / "metrics.json").read_text())
    assert m["best_epoch"] == best + 1 and m["best_val_acc"] == pytest.approx(hist[best]["val_acc"])
    assert torch.load(res.run_dir / "best.pt", weights_only=True)["epoch"] == best + 1
    assert json.loads((res.run_dir / "config.json").read_text())["val_window"] == window
