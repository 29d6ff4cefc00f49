"""The training commands end to end on a real chain (synthetic videos -> frames -> features):
train-head, evaluate, cv, predict, and their one-line usage errors."""
import json
from pathlib import Path

import pytest
from helpers import har

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chain(synthetic_root, tmp_path_factory):
    """A feature store made by the real stages from the session's synthetic videos."""
    from pipeline.stages.extract import ExtractConfig, Recipe, extract
    from pipeline.stages.features import FeatureConfig, features

    d = tmp_path_factory.mktemp("chain")
    frames = extract(ExtractConfig("synthetic", Recipe(frames=8, height=64, width=64, views=1), root=synthetic_root,
                                   out=d / "frames.zarr", scheduler="synchronous")).store
    feats = features(FeatureConfig(backbone="resnet18", weights="none", store=frames, out=d / "feats.zarr",
                                   resize="stored")).store
    return d, feats


def test_train_head_evaluate_and_predict_from_the_command_line(chain, synthetic_root, tmp_path):
    _, feats = chain
    run = tmp_path / "run"
    res = har("train-head", "lstm", "--features", feats, "--epochs", "3", "--hidden", "16", "--out", run)
    assert res.returncode == 0, res.stderr
    assert "RANDOMLY initialised resnet18" in res.stderr and f"report: {run / 'report.md'}" in res.stdout.replace("\n", "")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["videos"] > 0 and metrics["pretrained"] is False

    ev = har("evaluate", run, "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["top1"] == metrics["test"]["top1"]

    clip = synthetic_root / "Grow" / "v_Grow_g01_c01.avi"
    pr = har("predict", clip, synthetic_root / "Shrink" / "v_Shrink_g02_c02.avi", "--run", run, "--json")
    assert pr.returncode == 0, pr.stderr
    preds = json.loads(pr.stdout)["predictions"]
    assert len(preds) == 2 and len(preds[0]["top"]) == 4  # 4 classes: top-5 lists them all
    assert abs(sum(p["probability"] for p in preds[0]["top"]) - 1) < 1e-4
    assert {p["class"] for p in preds[0]["top"]} == {"Grow", "Shrink", "Brighten", "Darken"}


def test_predict_gives_the_probabilities_the_store_path_gives(chain, synthetic_root, tmp_path):
    """A video through `har predict` (decode, sample, backbone, head) scores as its stored features do."""
    import numpy as np

    from trainers.data import views
    from trainers.training import head_task, loop
    from trainers.inference import predictor

    _, feats = chain
    res = head_task.train_head(head_task.HeadRunConfig(head_task.HeadTrainConfig(epochs=2), features=feats, out=tmp_path / "r"))
    fs = views.load(feats)
    i = list(fs.videos).index("Brighten/v_Brighten_g03_c02.avi")
    task = head_task.FeatureTask(fs)
    model = loop.load_best(task.build(head_task.HeadTrainConfig(), None), res.run_dir,
                           loop.resolve_device("cpu"))
    stored = task.probabilities(model, np.array([i]), loop.resolve_device("cpu"))[0]
    got = predictor.load(res.run_dir)(synthetic_root / fs.videos[i], top=4)
    by_class = {p["class"]: p["probability"] for p in got["top"]}
    np.testing.assert_allclose([by_class[c] for c in fs.classes], stored, atol=2e-3)


def test_cv_from_the_command_line(chain, tmp_path):
    _, feats = chain
    res = har("cv", "mean", "--features", feats, "--folds", "logo", "--epochs", "2", "--out", tmp_path / "cv")
    assert res.returncode == 0, res.stderr
    assert "3 logo folds: top-1" in res.stdout and "roc_auc_ovr_macro" in res.stdout and "+-" in res.stdout
    assert len(json.loads((tmp_path / "cv" / "cv.json").read_text())["folds"]) == 3


@pytest.mark.parametrize("args, message", [
    (["train-head", "svm", "--features", "{feats}"], "unknown head 'svm'; allowed: lstm, gru, rnn, late-fusion, mean, attention"),
    (["train-head", "lstm"], "give --features PATH or --dataset NAME"),
    (["train-head", "lstm", "--features", "nowhere.zarr"], "nowhere.zarr does not exist; run `har features` first"),
    (["train-head", "lstm", "--features", "{feats}", "--split", "official2"], "unknown split 'official2' for feats.zarr; allowed: groups"),
    (["train-head", "lstm", "--features", "{feats}", "--optimizer", "sgd"], "--optimizer 'sgd' is not supported; allowed: adam, adamw"),
    (["train-head", "lstm", "--features", "{frames}"], "is a frames store; heads train on a feature store"),
    (["train-head", "lstm", "--dataset", "ucf50"], "no features store for 'ucf50'"),
    (["cv", "lstm", "--features", "{feats}", "--folds", "kfold"], "--folds 'kfold' is not supported; allowed: logo, official"),
    (["evaluate", "nowhere"], "nowhere is not a finished har run"),
    (["predict", "missing.avi", "--run", "nowhere"], "no such video file or folder: missing.avi"),
    (["predict", "{clip}", "--run", "nowhere"], "nowhere is not a finished har run"),
])
def test_usage_errors_are_one_line_exit_2(chain, synthetic_root, tmp_path, args, message):
    d, feats = chain
    subst = {"{feats}": str(feats), "{frames}": str(d / "frames.zarr"),
             "{clip}": str(synthetic_root / "Grow" / "v_Grow_g01_c01.avi")}
    res = har(*[subst.get(a, a) for a in args], env={"HAR_HOME": str(tmp_path / "home")})
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in " ".join(res.stderr.split()), res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 3


def test_every_training_command_has_help_with_examples():
    for cmd in ("train-head", "evaluate", "cv", "predict", "demo", "models"):
        res = har(cmd, "--help")
        assert res.returncode == 0 and "Examples" in res.stdout, cmd


def test_models_lists_every_registry_with_parameters_and_flops():
    from pipeline.stages import backbones
    from trainers.models import heads, video_models

    res = har("models", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows["backbones"]] == list(backbones.BACKBONES.names())
    assert [r["name"] for r in rows["heads"]] == list(heads.HEADS.names())
    assert [r["name"] for r in rows["video_models"]] == list(video_models.VIDEO_MODELS.names())
    resnet152 = next(r for r in rows["backbones"] if r["name"] == "resnet152")
    assert abs(resnet152["gflops"] - 23.0) < 0.5 and abs(resnet152["params"] / 1e6 - 58.1) < 0.2  # 11.5 GMACs
    assert all(r["params"] > 0 and r["gflops"] > 0 for r in rows["video_models"])
