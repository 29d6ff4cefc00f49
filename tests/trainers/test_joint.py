"""Joint training on two datasets with different class sets: one head with a shared trunk and an
output layer per dataset, each dataset's own split, a documented seeded batch mix, per-dataset
metrics and reports next to the same head trained on each alone; evaluate and predict read it."""
import json

import numpy as np
import pytest
import torch
from helpers import har, reversed_pair_features, write_feature_store

from trainers.training import config, head_task, joint
from trainers.inference import predictor
from trainers.runs import runner

A_CLASSES = ["Grow", "Shrink", "Brighten", "Darken"]
B_CLASSES = ["Left", "Right", "Up"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    w = tmp_path_factory.mktemp("joint")
    f, y, g = reversed_pair_features(videos_per_class=18, seed=0)
    a = write_feature_store(w / "a.zarr", f, y, g, A_CLASSES, dataset="synthetic")
    f, y, g = reversed_pair_features(videos_per_class=12, seed=1)
    keep = y < 3
    b = write_feature_store(w / "b.zarr", f[keep], y[keep], g[keep], B_CLASSES, dataset="folder")
    return a, b


def _cfg(**kw):
    base = dict(head="lstm", head_options=config.HeadConfig(hidden=32, dropout=0.1), epochs=12, batch_size=16,
                lr=3e-3, scheduler="cosine", patience=12)
    return head_task.HeadTrainConfig(**{**base, **kw})


def test_joint_run_reports_each_dataset_and_compares_with_each_alone(stores, tmp_path):
    a, b = stores
    res = joint.train_joint(head_task.HeadRunConfig(_cfg(), out=tmp_path / "j"), [a, b])
    m = json.loads((tmp_path / "j" / "metrics.json").read_text())
    assert m["joint"] and [s["path"] for s in m["stores"]] == [str(a), str(b)]
    assert [s["dataset"] for s in m["stores"]] == ["synthetic", "folder"]
    for name, classes in (("synthetic", A_CLASSES), ("folder", B_CLASSES)):
        for part in ("val", "test"):
            d = m[part]["datasets"][name]
            assert len(d["confusion"]) == len(classes) and 0 <= d["top1"] <= 1
        assert m["datasets"][name]["classes"] == classes
        alone = m["alone"][name]
        assert (tmp_path / f"j-alone-{name}" / "metrics.json").exists() and alone["run"].endswith(f"j-alone-{name}")
        sub = tmp_path / "j" / "datasets" / name
        assert (sub / "report.md").exists() and (sub / "confusion.png").exists()
    assert m["test"]["top1"] == pytest.approx(np.mean([m["test"]["datasets"][n]["top1"] for n in ("synthetic", "folder")]))
    # both datasets are learnt: the order classes of A and B's classes, far above chance
    assert m["test"]["datasets"]["synthetic"]["top1"] > 0.6 and m["test"]["datasets"]["folder"]["top1"] > 0.6
    text = (tmp_path / "j" / "report.md").read_text()
    assert "| synthetic | 4 |" in text and "| folder | 3 |" in text and "alone test top-1" in text
    # the model: one output row per class of either dataset
    best = torch.load(tmp_path / "j" / "best.pt", weights_only=True)["model"]
    assert best["1.fc.weight"].shape[0] == len(A_CLASSES) + len(B_CLASSES)
    # the same command again: up to date, and so are the alone runs
    again = joint.train_joint(head_task.HeadRunConfig(_cfg(), out=tmp_path / "j"), [a, b])
    assert again.up_to_date
    # har evaluate recomputes the per-dataset metrics from best.pt
    ev = runner.evaluate_run(tmp_path / "j")
    for name in ("synthetic", "folder"):
        assert ev["datasets"][name]["top1"] == pytest.approx(m["test"]["datasets"][name]["top1"])
    assert res.summary["best_val_acc"] == pytest.approx(
        np.mean([m["val"]["datasets"][n]["top1"] for n in ("synthetic", "folder")]), abs=1e-6)


def test_batch_mixing_rules_are_seeded_and_do_what_they_say():
    a, b = np.arange(0, 30), np.arange(30, 40)
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    p = joint.MIXES.get("proportional")([a, b], rng())
    assert sorted(p) == list(range(40)) and np.array_equal(p, joint.MIXES.get("proportional")([a, b], rng()))
    bal = joint.MIXES.get("balanced")([a, b], rng())
    assert len(bal) == 60 and np.array_equal(bal, joint.MIXES.get("balanced")([a, b], rng()))
    # alternating: every batch of an even size holds both datasets equally; every video of b repeated 3 times
    assert (bal[0::2] < 30).all() and (bal[1::2] >= 30).all()
    assert np.bincount(bal[1::2] - 30).tolist() == [3] * 10 and sorted(bal[0::2]) == list(range(30))


def test_sliced_loss_is_cross_entropy_over_each_samples_own_dataset():
    owner = torch.tensor([0, 0, 0, 1, 1])
    logits = torch.randn(4, 5)
    y = torch.tensor([0, 2, 3, 4])
    loss = joint.SlicedLoss(owner)(logits, y)
    own = [torch.nn.functional.cross_entropy(logits[:2, :3], y[:2], reduction="sum"),
           torch.nn.functional.cross_entropy(logits[2:, 3:], y[2:] - 3, reduction="sum")]
    assert loss == pytest.approx(float(sum(own) / 4), rel=1e-6)
    smooth = joint.SlicedLoss(owner, smoothing=0.1)(logits, y)
    ref = [torch.nn.functional.cross_entropy(logits[:2, :3], y[:2], reduction="sum", label_smoothing=0.1),
           torch.nn.functional.cross_entropy(logits[2:, 3:], y[2:] - 3, reduction="sum", label_smoothing=0.1)]
    assert smooth == pytest.approx(float(sum(ref) / 4), rel=1e-6)
    # with class weights too: on one dataset's samples it is torch's own weighted, smoothed loss
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5])
    one = joint.SlicedLoss(owner, w, smoothing=0.2)(logits[:2], y[:2])
    want = torch.nn.functional.cross_entropy(logits[:2, :3], y[:2], weight=w[:3], label_smoothing=0.2)
    assert one == pytest.approx(float(want), rel=1e-6)


def test_joint_usage_errors_are_one_line(stores, tmp_path):
    a, b = stores
    r = har("train-head", "lstm", "--features", a, "--features", a, "--out", tmp_path / "x")
    assert r.returncode == 2 and "names the same store twice" in r.stderr and "Traceback" not in r.stderr
    r = har("train-head", "lstm", "--features", a, "--mix", "balanced", "--out", tmp_path / "y")
    assert r.returncode == 2 and "--mix balanced is for joint training" in r.stderr
    r = har("cv", "lstm", "--features", a, "--features", b)
    assert r.returncode == 2 and "har cv takes one --features" in r.stderr
    r = har("train-head", "lstm", "--features", a, "--features", b, "--mix", "zipped", "--out", tmp_path / "z")
    assert r.returncode == 2 and "--mix 'zipped' is not supported; allowed: proportional, balanced" in r.stderr
    # a joint run's folder (and its alone runs' beside it) is checked before anything trains
    r = har("train-head", "lstm", "--features", a, "--features", b, "--epochs", 1, "--out", a)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not list(a.parent.glob("*-alone-*")), "an alone run trained before the joint folder was refused"


@pytest.fixture(scope="module")
def video_joint(tmp_path_factory, synthetic_root):
    """A joint mean head on two real video datasets with different classes: the colour clips
    (Red, Green, Blue) and har's synthetic set (4 classes), same recipe and backbone."""
    from helpers import write_colour_dataset

    w = tmp_path_factory.mktemp("vjoint")
    env = {"HAR_HOME": str(w / "home")}
    colours = write_colour_dataset(w / "colours")
    feats = []
    for name, root, ds in (("c", colours, "folder"), ("s", synthetic_root, "synthetic")):
        r = har("extract", ds, "--root", root, "--frames", 8, "--size", 32, "--out", w / f"{name}.zarr", "--workers", 1,
                env=env)
        assert r.returncode == 0, r.stderr
        r = har("features", "--store", w / f"{name}.zarr", "--backbone", "resnet18", "--weights", "none", "--resize",
                "stored", "--out", w / f"{name}-f.zarr", env=env)
        assert r.returncode == 0, r.stderr
        feats.append(w / f"{name}-f.zarr")
    r = har("train-head", "mean", "--features", feats[0], "--features", feats[1], "--epochs", 15, "--mix", "balanced",
            "--out", w / "run", env=env)
    assert r.returncode == 0, r.stderr
    assert "folder: joint test top-1" in r.stdout and "synthetic: joint test top-1" in r.stdout
    return w / "run", colours, synthetic_root


def test_predict_a_joint_run_answers_in_the_chosen_datasets_classes(video_joint):
    run, colours, synth = video_joint
    clip = sorted(colours.glob("Green/*.avi"))[0]
    r = har("predict", clip, "--run", run, "--labels", "folder", "--json", "--top", 3)
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout)["predictions"][0]["top"]
    assert {t["class"] for t in top} == {"Red", "Green", "Blue"} and top[0]["class"] == "Green"
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-4)   # a softmax over its own classes
    r = har("predict", sorted(synth.glob("*/*.avi"))[0], "--run", run, "--labels", "synthetic", "--json", "--top", 4)
    assert r.returncode == 0, r.stderr
    assert {t["class"] for t in json.loads(r.stdout)["predictions"][0]["top"]} <= set(
        json.loads((run / "metrics.json").read_text())["datasets"]["synthetic"]["classes"])
    r = har("predict", clip, "--run", run)
    assert r.returncode == 2 and "trained jointly on folder, synthetic: choose whose labels with --labels NAME" in r.stderr
    r = har("predict", clip, "--run", run, "--labels", "ucf101")
    assert r.returncode == 2 and "(not 'ucf101')" in r.stderr
    for cmd in (("explain", run, clip), ("export", run, "--format", "torchscript")):
        r = har(*cmd)
        assert r.returncode == 2 and "trained jointly on several datasets" in r.stderr and "Traceback" not in r.stderr
    e = har("evaluate", run, "--json")
    assert e.returncode == 0 and set(json.loads(e.stdout)["datasets"]) == {"folder", "synthetic"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_serve_offers_a_joint_run_once_per_dataset(video_joint):
    from fastapi.testclient import TestClient

    from trainers.inference import server

    run, colours, _ = video_joint
    cfg = server.ServeConfig((run,), device="cpu")
    asgi, _ = server.create_app(cfg, server.load_runs(cfg))
    with TestClient(asgi, base_url="http://127.0.0.1") as c:
        listed = {r["name"]: r for r in c.get("/api/runs").json()["runs"]}
        assert set(listed) == {f"{run.name}:folder", f"{run.name}:synthetic"}
        assert set(listed[f"{run.name}:folder"]["classes"]) == {"Red", "Green", "Blue"}
        assert listed[f"{run.name}:folder"]["kind"] == "joint-head"
        assert listed[f"{run.name}:folder"]["test"]["top1"] == json.loads((run / "metrics.json").read_text())[
            "test"]["datasets"]["folder"]["top1"]
        v = sorted(colours.glob("Red/*.avi"))[0]
        r = c.post("/api/predict", files={"file": (v.name, v.read_bytes())}, data={"run": f"{run.name}:folder"})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["top"][0]["class"] == "Red"
        r = c.post("/api/explain", files={"file": (v.name, v.read_bytes())}, data={"run": f"{run.name}:folder"})
        assert r.status_code == 422 and "trained jointly" in r.json()["detail"]  # one line, never a 500


def test_hostile_dataset_names_become_safe_folder_names_and_splits_go_per_dataset(tmp_path):
    f, y, g = reversed_pair_features(videos_per_class=12, seed=2)
    a = write_feature_store(tmp_path / "a.zarr", f, y, g, A_CLASSES, dataset="/tmp/victim/../x")
    b = write_feature_store(tmp_path / "b.zarr", f, y, g, A_CLASSES, dataset="/tmp/victim/../x")
    parts = joint.parts_for([a, b], None)
    # a store's dataset name is never a path: the report folders stay inside the run
    assert [p.name for p in parts] == ["_tmp_victim_.._x", "b"]
    with pytest.raises(ValueError, match="names 3 splits for 2 datasets"):
        joint.parts_for([a, b], "groups+random+groups")
    assert [p.split.name for p in joint.parts_for([a, b], "groups+random")] == ["groups", "random"]


def test_balanced_epochs_count_their_repeated_videos_for_the_warmup(stores):
    parts = joint.parts_for(list(stores), None)
    task = joint.JointTask(parts, "balanced")
    train = task.split.train
    counts = [int((task.part_of(train) == i).sum()) for i in range(2)]
    assert task.epoch_videos(_cfg(), train) == 2 * max(counts)
    assert joint.JointTask(parts, "proportional").epoch_videos(_cfg(), train) == len(train)
    batches = list(task.batches(_cfg(batch_size=10), train, 1))
    assert sum(len(yb) for _, yb in batches) == 2 * max(counts)


def test_a_tampered_joint_card_is_refused(stores, tmp_path):
    from trainers.runs import rundir

    parts = joint.parts_for(list(stores), None)
    card = joint.with_datasets(head_task.model_card(parts[0].fs), parts)
    predictor.check_datasets(card, tmp_path / "lineage.json")
    for tamper in (lambda c: c["datasets"][0].update(rows=[0, 99]), lambda c: c["datasets"].append(1),
                   lambda c: c["datasets"][1].update(name="../x"), lambda c: c.update(datasets="a")):
        bad = json.loads(json.dumps(card))
        tamper(bad)
        with pytest.raises(rundir.RunError, match="predict.datasets is not a list"):
            predictor.rows_of(bad, "synthetic", tmp_path)


def test_a_video_model_trains_jointly_on_two_frame_stores(video_joint, tmp_path):
    """`har train-e2e MODEL --frames A --frames B`: one network, an output layer per dataset, the
    same model alone beside it; the loader's worker count changes nothing; evaluate, predict and
    serve read the run per dataset; explain refuses it in one line."""
    from trainers.training import joint_e2e, tasks

    run, colours, _ = video_joint
    w = run.parent
    c, s = w / "c.zarr", w / "s.zarr"
    env = {"HAR_HOME": str(w / "home")}
    args = ("--epochs", 2, "--lr", 1e-3, "--mix", "balanced", "--batch-size", 8)
    r = har("train-e2e", "small-cnn-rnn", "--frames", c, "--frames", s, *args, "--workers", 0, "--out",
            tmp_path / "e", env=env)
    assert r.returncode == 0, r.stderr
    assert "folder: joint test top-1" in r.stdout and "synthetic: joint test top-1" in r.stdout
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["joint"] and [x["path"] for x in m["stores"]] == [str(c), str(s)] and m["mix"] == "balanced"
    n_syn = len(m["datasets"]["synthetic"]["classes"])
    for name in ("folder", "synthetic"):
        assert (tmp_path / f"e-alone-{name}" / "metrics.json").exists()
        assert (tmp_path / "e" / "datasets" / name / "report.md").exists()
        assert len(m["test"]["datasets"][name]["confusion"]) == len(m["datasets"][name]["classes"])
    best = torch.load(tmp_path / "e" / "best.pt", weights_only=True)["model"]
    last = [v for k, v in best.items() if k.endswith("weight")][-1]
    assert last.shape[0] == 3 + n_syn                       # Red, Green, Blue + the synthetic classes
    _, _, kind = runner.load_run(tmp_path / "e")
    assert kind is tasks.get("joint-video-model") and kind.joint
    ev = runner.evaluate_run(tmp_path / "e")
    for name in ("folder", "synthetic"):
        assert ev["datasets"][name]["top1"] == pytest.approx(m["test"]["datasets"][name]["top1"])
    # the mixed batches: each clip read from its own store, its label in its dataset's rows; two
    # loader workers read exactly what none reads
    from trainers.data import clips
    from trainers.training import distributed

    parts = joint.parts_for([c, s], None, store="frames")
    got = {}
    for workers in (0, 2):
        cfg = config.E2EConfig(model="small-cnn-rnn", mix="balanced", batch_size=8, workers=workers)
        task = joint_e2e.JointClipTask(parts, cfg)
        try:
            got[workers] = [(x.clone(), y.clone()) for x, y in task.batches(cfg, task.split.train, 1)]
            order, samples = task.epoch_order(cfg, task.split.train, 1, distributed.World())
        finally:
            task.close()
    assert len(got[0]) == len(got[2]) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                              for a, b in zip(got[0], got[2]))
    x = torch.cat([b[0] for b in got[0]])
    y = torch.cat([b[1] for b in got[0]])
    assert torch.equal(y, torch.from_numpy(task.labels[order]))
    for k in (0, len(order) - 1):
        i = int(task.part_of(order[k:k + 1])[0])
        p = parts[i]
        clip, local_y = clips.ClipDataset(p.path, p.fs.labels)[(int(order[k]) - p.offset, int(samples[k]))]
        assert torch.equal(x[k], clip) and int(y[k]) == local_y + p.rows.start
    # predict answers in the chosen dataset's classes; explain refuses
    clip = sorted(colours.glob("Blue/*.avi"))[0]
    p = har("predict", clip, "--run", tmp_path / "e", "--labels", "folder", "--json", "--top", 3)
    assert p.returncode == 0, p.stderr
    top = json.loads(p.stdout)["predictions"][0]["top"]
    assert {t["class"] for t in top} == {"Red", "Green", "Blue"}
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-4)
    assert predictor.label_sets(tmp_path / "e") == ["folder", "synthetic"]
    r = har("explain", tmp_path / "e", clip)
    assert r.returncode == 2 and "trained jointly on several datasets" in r.stderr and "Traceback" not in r.stderr


def test_joint_video_model_usage_errors_are_one_line(video_joint, tmp_path):
    run, colours, _ = video_joint
    w = run.parent
    c, s = w / "c.zarr", w / "s.zarr"
    r = har("train-e2e", "small-cnn-rnn", "--frames", c, "--frames", c, "--out", tmp_path / "x")
    assert r.returncode == 2 and "--frames names the same store twice" in r.stderr
    r = har("train-e2e", "small-cnn-rnn", "--frames", c, "--mix", "balanced", "--out", tmp_path / "y")
    assert r.returncode == 2 and "--mix balanced is for joint training; give --frames twice or more" in r.stderr
    r = har("train-e2e", "small-cnn-rnn", "--frames", c, "--frames", w / "s-f.zarr", "--out", tmp_path / "z")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "frame store" in r.stderr   # a feature store
    other = w / "c4.zarr"
    if not other.exists():
        r = har("extract", "folder", "--root", colours, "--frames", 4, "--size", 32, "--out", other, "--workers", 1,
                env={"HAR_HOME": str(w / "home")})
        assert r.returncode == 0, r.stderr
    r = har("train-e2e", "small-cnn-rnn", "--frames", c, "--frames", s, "--frames", other, "--out", tmp_path / "v")
    assert r.returncode == 2 and "differ in recipe" in r.stderr and "same recipe (sampling and frame size)" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "v").exists()
