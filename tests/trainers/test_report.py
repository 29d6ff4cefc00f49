"""Reports that scale: 101 classes (UCF101-sized) stay legible, confusions sit together, the most
confused pairs are listed, per-class tables sort, ROC and PR curves are drawn."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers import har, write_feature_store
from PIL import Image

from trainers.runs import metrics

UCF101_LIKE = [f"{w}{i:03d}" for i, w in enumerate(["ApplyEyeMakeup", "BalanceBeam", "CliffDiving",
                                                      "HandstandPushups", "YoYo"] * 21)][:101]


@pytest.fixture(scope="module")
def run101(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 101 * 6
    labels = np.repeat(np.arange(101), 6)
    feats = rng.normal(0, 1, (n, 1, 4, 16)).astype(np.float16)
    feats[:, :, :, :8] += np.eye(101, 8)[labels % 8][:, None, None] * 0.8   # a little signal: structured confusions
    groups = np.tile(np.arange(6), 101)
    w = tmp_path_factory.mktemp("r101")
    store = write_feature_store(w / "f.zarr", feats, labels, groups, UCF101_LIKE)
    r = har("train-head", "mean", "--features", store, "--epochs", 2, "--out", w / "run", "--tracker", "none")
    assert r.returncode == 0, r.stderr
    return w / "run"


def test_a_101_class_report_has_every_table_and_legible_figures(run101):
    m = json.loads((run101 / "metrics.json").read_text())["test"]
    with Image.open(run101 / "confusion.png") as im:
        w, h = im.size
    assert w >= 101 * 12 and h >= 101 * 12     # >= 12 px per class row and column at 110 dpi
    with Image.open(run101 / "per_class.png") as im:
        assert im.size[1] >= 101 * 12
    with Image.open(run101 / "roc_pr.png") as im:
        assert im.size[0] > 600
    rows = list(csv.DictReader(open(run101 / "per_class.csv")))
    assert len(rows) == 101 and list(rows[0]) == ["class", "precision", "recall", "f1", "top5", "auc", "ap", "support"]
    assert sorted(rows, key=lambda r: float(r["f1"]))[0]["f1"] == f"{min(r['f1'] for r in m['per_class'])}"
    pairs = list(csv.DictReader(open(run101 / "most_confused.csv")))
    assert pairs and int(pairs[0]["videos"]) >= int(pairs[-1]["videos"])
    report = (run101 / "report.md").read_text()
    assert "### Most confused pairs (test)" in report and "![ROC and PR](roc_pr.png)" in report
    assert "| top-5 |" in report and report.count("\n| ") > 101


def test_no_figure_title_is_clipped(tmp_path):
    """A long title and long class names stay inside the PNG: the figure grows to hold them."""
    from trainers.runs import report

    classes = ["a" * 40, "b", "c"]
    report.plot_confusion([[3, 1, 0], [0, 4, 0], [1, 0, 2]], classes, tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as im:
        img = np.asarray(im.convert("L"))
    # dark pixels (text) never touch the image's border: nothing is cut at an edge
    assert (img[[0, -1], :] > 200).all() and (img[:, [0, -1]] > 200).all()


def test_confusion_order_puts_confused_classes_together():
    cm = np.diag([10] * 6)
    for a, b in ((0, 3), (1, 5)):
        cm[a, b] = cm[b, a] = 4
    order = metrics.confusion_order(cm.tolist())
    assert sorted(order) == list(range(6))
    pos = {c: i for i, c in enumerate(order)}
    assert abs(pos[0] - pos[3]) == 1 and abs(pos[1] - pos[5]) == 1
    assert metrics.confusion_order(np.diag([3, 3, 3]).tolist()) == [0, 1, 2]


def test_most_confused_and_per_class_ranking():
    pairs = metrics.most_confused([[5, 3, 0], [1, 6, 0], [0, 2, 4]], ["a", "b", "c"], n=2)
    assert pairs == [{"true": "a", "predicted": "b", "videos": 3, "share": 3 / 8},
                     {"true": "c", "predicted": "b", "videos": 2, "share": 2 / 6}]
    y = np.array([0, 0, 1, 2])
    p = np.array([[.6, .3, .1], [.2, .3, .5], [.1, .8, .1], [.4, .4, .2]])
    auc, ap, top5 = metrics.per_class_ranking(y, p)
    assert top5 == [1.0, 1.0, 1.0] and auc[1] == 1.0 and ap[1] == 1.0
    c = metrics.curves(y, p)
    assert len(c["roc"]["fpr"]) == 101 and c["roc"]["tpr"][-1] == 1.0 and max(c["pr"]["precision"]) <= 1.0


def test_compare_puts_runs_side_by_side_and_diffs_per_class(run101, tmp_path):
    store = json.loads((run101 / "config.json").read_text())["store"]
    r = har("train-head", "lstm", "--features", store, "--epochs", 2, "--hidden", 16, "--seed", 3,
            "--out", tmp_path / "lstm", "--tracker", "none")
    assert r.returncode == 0, r.stderr
    r = har("compare", run101, tmp_path / "lstm", "--out", tmp_path / "cmp", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [x["model"] for x in doc["runs"]] == ["mean", "lstm"] and [x["seed"] for x in doc["runs"]] == [0, 3]
    m = json.loads((tmp_path / "lstm" / "metrics.json").read_text())["test"]
    assert doc["runs"][1]["top1"] == m["top1"]
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "compare_per_class.csv")))
    assert len(rows) == 101
    first = {p["class"]: p["f1"] for p in json.loads((run101 / "metrics.json").read_text())["test"]["per_class"]}
    second = {p["class"]: p["f1"] for p in m["per_class"]}
    row = rows[7]
    assert float(row["diff lstm"]) == pytest.approx(second[row["class"]] - first[row["class"]], abs=1e-3)
    assert "| run | model |" in (tmp_path / "cmp" / "compare.md").read_text()
    assert Image.open(tmp_path / "cmp" / "compare_curves.png").size[0] > 600


def test_compare_refuses_what_is_not_two_finished_runs(run101, tmp_path):
    r = har("compare", run101)
    assert r.returncode == 2 and "needs 2 or more runs" in r.stderr
    r = har("compare", run101, tmp_path)
    assert r.returncode == 2 and "not a finished har run" in r.stderr
    r = har("compare", run101, run101, "--out", run101)
    assert r.returncode == 2 and "--out" in r.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    r = har("compare", run101, run101, "--out", tmp_path / "mine")
    assert r.returncode == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "x"


@pytest.mark.parametrize("tamper, message", [
    (lambda m: m.update(split="groups"), "key split is 'groups'; allowed: an object with the split's name"),
    (lambda m: m["test"]["per_class"][3].pop("class"), "key test.per_class[3].class is missing; allowed: a class name"),
    (lambda m: m.update(test=[1]), "key test is [1]; allowed: an object of metrics"),
    (lambda m: m["test"]["per_class"][0].update(f1="high"),
     "key test.per_class[0].f1 is 'high'; allowed: a number from 0 to 1, or NaN"),
    (lambda m: m.update(epochs_run="many"), "key epochs_run is 'many'; allowed: a whole number >= 0"),
])
def test_compare_over_a_damaged_metrics_json_is_one_line_naming_the_file_and_key(run101, tmp_path, tamper, message):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run101, bad)
    m = json.loads((bad / "metrics.json").read_text())
    tamper(m)
    (bad / "metrics.json").write_text(json.dumps(m))
    r = har("compare", run101, bad, "--out", tmp_path / "cmp")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "internal error" not in r.stderr, r.stderr
    assert f"{bad / 'metrics.json'}: {message}" in " ".join(r.stderr.split()), r.stderr
    assert not (tmp_path / "cmp").exists()  # refused before anything is written
