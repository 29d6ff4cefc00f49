"""The real adapters on the official split files and file names (../shared/data)."""
import numpy as np
import pytest

from conftest import shared_data
from pipeline.datasets import datasets as D


def _touch_tree(root, rels):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_ucf50_names_classes_and_quirks(tmp_path):
    listing = (shared_data() / "ucf50" / "partial_video_listing_with_dirs.txt").read_text().split()
    _touch_tree(tmp_path, listing)
    index = D.load("ucf50", tmp_path)
    official = (shared_data() / "ucf50" / "classes.txt").read_text().split()
    assert list(index.classes) == official  # byte-wise order: JumpRope before JumpingJack
    assert index.classes.index("JumpRope") < index.classes.index("JumpingJack")
    billiards = [v for v in index.videos if v.path.startswith("Billiards/")]
    assert billiards and all("v_Billards_" in v.path for v in billiards)
    assert all(index.classes[v.label] == v.path.split("/")[0] for v in index.videos)
    assert {v.group for v in index.videos} == {1}
    assert any("found 150 videos, the official release has 6676" in n for n in index.notes)


def test_ucf50_group_split_is_group_disjoint_and_deterministic(tmp_path):
    rels = [f"C{c}/v_C{c}_g{g:02d}_c{k:02d}.avi" for c in range(5) for g in range(1, 26) for k in range(1, 5)]
    _touch_tree(tmp_path, rels)
    a, b = D.load("ucf50", tmp_path), D.load("ucf50", tmp_path)
    s = a.splits["groups"]
    np.testing.assert_array_equal(s, b.splits["groups"])
    groups = np.array([v.group for v in a.videos])
    for part in (0, 1, 2):
        others = set(groups[(s != part) & (s >= 0)])
        assert not set(groups[s == part]) & others, "a group is on both sides"
    frac = np.bincount(s, minlength=3) / len(s)
    assert abs(frac[0] - 0.75) < 0.05 and abs(frac[1] - 0.10) < 0.04 and abs(frac[2] - 0.15) < 0.04
    # leave-one-group-out: 25 folds, each testing exactly one group
    folds = [k for k in a.splits if k.startswith("logo")]
    assert len(folds) == 25
    assert set(groups[a.splits["logo07"] == 2]) == {7}
    # the random split is stratified and leaks groups (that is the point of showing it)
    r = a.splits["random"]
    labels = np.array([v.label for v in a.videos])
    assert D.leakage(r, labels, groups) > 0.9 and D.leakage(s, labels, groups) == 0.0
    assert any("split 'random' leaks groups" in n for n in a.notes)
    for c in range(5):
        assert abs((r[[v.label == c for v in a.videos]] == 2).mean() - 0.15) < 0.02


def test_ucf101_official_splits(tmp_path):
    lists = shared_data() / "ucf101_splits"
    rels = set()
    for k in (1, 2, 3):
        for f in (f"trainlist0{k}.txt", f"testlist0{k}.txt"):
            rels |= {ln.split()[0] for ln in (lists / f).read_text().splitlines() if ln.strip()}
    _touch_tree(tmp_path, sorted(rels))
    (tmp_path / "ucfTrainTestlist").symlink_to(lists)
    index = D.load("ucf101", tmp_path)
    assert len(index.videos) == 13320 and len(index.classes) == 101 and not index.notes
    assert index.classes[36] == "HandstandPushups"  # classInd 37, 1-based
    hsp = [v for v in index.videos if "HandStandPushups" in v.path]
    assert hsp and all(index.classes[v.label] == "HandstandPushups" for v in hsp)
    for k, (train, test) in {1: (9537, 3783), 2: (9586, 3734), 3: (9624, 3696)}.items():
        s = index.splits[f"official{k}"]
        assert (s == 0).sum() == train and (s == 2).sum() == test and (s == -1).sum() == 0
        # official splits are group-disjoint too
        g = np.array([(v.label, v.group) for v in index.videos])
        assert not {tuple(x) for x in g[s == 0]} & {tuple(x) for x in g[s == 2]}
    # train list labels (1-based) agree with the folder classes
    first = (lists / "trainlist01.txt").read_text().splitlines()[0].split()
    v = next(v for v in index.videos if v.path == first[0])
    assert v.label == int(first[1]) - 1


def test_hmdb51_official_splits(tmp_path):
    lists = shared_data() / "hmdb51_splits"
    rels = set()
    for f in lists.glob("*_test_split1.txt"):
        cname = f.name[: -len("_test_split1.txt")]
        rels |= {f"{cname}/{ln.rsplit(maxsplit=1)[0]}" for ln in f.read_text().splitlines() if ln.strip()}
    _touch_tree(tmp_path, sorted(rels))
    (tmp_path / "testTrainMulti_7030_splits").symlink_to(lists)
    index = D.load("hmdb51", tmp_path)
    assert len(index.classes) == 51 and len(index.videos) == 6766
    assert any("(" in v.path or "!" in v.path for v in index.videos)  # odd characters survive
    for k in (1, 2, 3):
        s = index.splits[f"official{k}"]
        assert ((s == 0).sum(), (s == 2).sum(), (s == -1).sum()) == (3570, 1530, 1666)


def test_folder_dataset_any_container_and_groups(tmp_path):
    _touch_tree(tmp_path, ["run/a.mp4", "run/b.webm", "jump/c.mkv", "jump/d.gif", "jump/notes.txt", "empty/"])
    index = D.load("folder", tmp_path)
    assert index.classes == ("jump", "run") and len(index.videos) == 4
    assert index.default_split == "random" and "groups" not in index.splits
    _touch_tree(tmp_path / "g", ["x/v_x_g01_c01.avi", "x/v_x_g02_c01.avi", "y/v_y_g01_c01.avi", "y/v_y_g03_c01.avi"])
    assert D.load("folder", tmp_path / "g").default_split == "groups"


@pytest.mark.parametrize("name, root, message", [
    ("ucf50", "missing", "ucf50: no dataset folder at .* Download: https://www.crcv.ucf.edu/data/UCF50.rar"),
    ("ucf101", ".", "no ucfTrainTestlist/ folder"),
    ("hmdb51", ".", "no testTrainMulti_7030_splits/ folder"),
    ("synthetic", ".", "har synth"),
    ("kinetics", ".", "unknown dataset 'kinetics'; allowed: ucf50, ucf101, hmdb51, folder, kinetics400, kinetics600, kinetics700, ssv2, synthetic"),
])
def test_missing_or_wrong_roots_say_how_to_fix(tmp_path, name, root, message):
    with pytest.raises(D.DatasetError, match=message):
        D.load(name, tmp_path / root)
