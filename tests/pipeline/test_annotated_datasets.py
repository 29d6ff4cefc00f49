"""Kinetics and Something-Something v2: the official annotation files (in their exact formats) name
the videos; missing downloads are counted, named and left out, never fatal; bad annotation files
are one line naming the file and the line; SSv2's augmented views are not mirrored by default."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import colour_frames, har

from pipeline.datasets import datasets
from pipeline.stores import store
from pipeline.stores.store import StoreReader
from pipeline.decoding.video import write_video

K400_HEADER = ["label", "youtube_id", "time_start", "time_end", "split", "is_cc"]
# (label, youtube_id, start, end) per split; labels as the official CSVs spell them (spaces, quotes)
K_TRAIN = [("air drumming", "--nQbRBEz2s", 104, 114), ("air drumming", "a1B2c3D4e5F", 0, 10),
           ("passing American football (in game)", "_dbcJuKJQNs", 40, 50),
           ("passing American football (in game)", "Zz9-_aaaaaa", 7, 17), ("abseiling", "-3B32lodo2M", 59, 69),
           ("abseiling", "q" * 11, 1, 11)]
K_VAL = [("abseiling", "v" * 11, 3, 13), ("air drumming", "w" * 11, 0, 10),
         ("passing American football (in game)", "x" * 11, 12, 22)]
K_TEST = [("air drumming", "t" * 11, 5, 15), ("abseiling", "u" * 11, 6, 16)]


def _csv(path: Path, rows, split: str, labelled: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)   # quotes what needs it, as the official files do ("air drumming" is quoted there)
        w.writerow(K400_HEADER if labelled else ["youtube_id", "time_start", "time_end", "split"])
        for label, yid, s, e in rows:
            w.writerow([label, yid, s, e, split, 0] if labelled else [yid, s, e, split])


def _clip(path: Path, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, colour_frames(("Red", "Green", "Blue")[seed % 3], 12, seed, h=32, w=40), fps=25, codec="mpeg4")


def kinetics_root(root: Path, class_folders: bool = False, missing=(), val_name: str = "val",
                  test_labels: bool = False, real: bool = False) -> Path:
    _csv(root / "annotations" / "train.csv", K_TRAIN, "train")
    _csv(root / "annotations" / f"{val_name}.csv", K_VAL, "validate" if val_name == "validate" else "val")
    _csv(root / "annotations" / "test.csv", K_TEST, "test", labelled=test_labels)
    for part, folder, rows in (("train", "train", K_TRAIN), ("val", val_name, K_VAL), ("test", "test", K_TEST)):
        for i, (label, yid, s, e) in enumerate(rows):
            if yid in missing:
                continue
            sub = f"{label.replace(' ', '_')}/" if class_folders else ""
            p = root / folder / f"{sub}{yid}_{s:06d}_{e:06d}.mp4"
            if real:
                _clip(p.with_suffix(".avi"), i)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"not decoded by the index")
    return root


def test_kinetics_index_reads_the_official_csvs_and_both_download_layouts(tmp_path):
    for class_folders in (False, True):
        root = kinetics_root(tmp_path / f"k{class_folders}", class_folders=class_folders)
        ix = datasets.load("kinetics400", root)
        assert ix.classes == ("abseiling", "air drumming", "passing American football (in game)")
        assert len(ix.videos) == len(K_TRAIN) + len(K_VAL)      # the test set has no labels: left out
        by_stem = {Path(v.path).stem: v for v in ix.videos}
        for label, yid, s, e in K_TRAIN + K_VAL:
            v = by_stem[f"{yid}_{s:06d}_{e:06d}"]
            assert ix.classes[v.label] == label and v.group == -1
        official = ix.splits["official"]
        train = {Path(v.path).stem.rsplit("_", 2)[0] for v, s in zip(ix.videos, official) if s == datasets.TRAIN}
        assert train == {yid for _, yid, _, _ in K_TRAIN}
        assert (official == datasets.TEST).sum() == len(K_VAL) and "official-test" not in ix.splits
        assert ix.default_split == "official"
        assert any("2 test clips" in n and "no labels" in n for n in ix.notes)
        assert not ix.missing_videos


def test_kinetics_missing_downloads_are_counted_named_and_never_fatal(tmp_path):
    gone = ("a1B2c3D4e5F", "_dbcJuKJQNs", "w" * 11)
    root = kinetics_root(tmp_path / "k", missing=gone, val_name="validate", test_labels=True)
    ix = datasets.load("kinetics700", root)
    assert len(ix.videos) == len(K_TRAIN) + len(K_VAL) + len(K_TEST) - 3
    note = next(n for n in ix.notes if "train videos listed" in n)
    assert "2 of 6 train videos" in note and "a1B2c3D4e5F_000000_000010" in note
    assert any("1 of 3 val videos" in n for n in ix.notes)
    assert ix.missing_videos == tuple(sorted(["train/a1B2c3D4e5F_000000_000010", "train/_dbcJuKJQNs_000040_000050",
                                              f"val/{'w' * 11}_000000_000010"]))
    t = ix.splits["official-test"]   # test.csv with labels: train, val and test as released
    assert [(t == c).sum() for c in (datasets.TRAIN, datasets.VAL, datasets.TEST)] == [4, 2, 2]


@pytest.mark.parametrize("text, message", [
    ("label,youtube_id,time_start\nabseiling,abc,1\n", "lacks time_end"),
    ("label,youtube_id,time_start,time_end,split\nabseiling,abc,1.5,11,train\n", "time_start '1.5' is not a whole"),
    ("label,youtube_id,time_start,time_end,split\nabseiling,../../etc,1,11,train\n", "youtube_id '../../etc'"),
    ("label,youtube_id,time_start,time_end,split\nabseiling,abc,1,11\n", "another count on this line"),
    ("label,youtube_id,time_start,time_end,split\n,abc,1,11,train\n", "empty label"),
    ("label,youtube_id,time_start,time_end,split\nabseiling,abc,inf,11,train\n", "time_start 'inf' is not a whole"),
    ("label,youtube_id,time_start,time_end,split\n\nabseiling,abc,1e400,11,train\n", "train.csv:3: time_start '1e400'"),
    ("label,youtube_id,time_start,time_end,split\nabseiling,abc,1,11,\"" + "x" * 140000 + "\"\n", "not a CSV line"),
])
def test_kinetics_bad_annotation_lines_are_one_line_naming_file_and_line(tmp_path, text, message):
    root = tmp_path / "k"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "train.csv").write_text(text)
    with pytest.raises(datasets.DatasetError, match=message) as e:
        datasets.load("kinetics400", root)
    assert "train.csv:" in str(e.value) and "\n" not in str(e.value)
    code, out, err = har("extract", "kinetics400", "--root", root, "--out", tmp_path / "s.zarr")
    assert code == 2 and message.split("'")[0] in err and "Traceback" not in err
    assert not (tmp_path / "s.zarr").exists()


def test_kinetics_without_annotations_says_where_to_get_them(tmp_path):
    code, _, err = har("extract", "kinetics400", "--root", tmp_path, "--out", tmp_path / "s.zarr")
    assert code == 2 and "annotations/" in err and "cvdfoundation/kinetics-dataset" in err


def test_a_kinetics_video_linking_outside_the_root_is_not_read(tmp_path):
    root = kinetics_root(tmp_path / "k")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    label, yid, s, e = K_TRAIN[-1]
    (root / "train" / f"{yid}_{s:06d}_{e:06d}.mp4").unlink()
    os.symlink(outside, root / "train" / f"{yid}_{s:06d}_{e:06d}.mp4")
    ix = datasets.load("kinetics400", root)
    assert all("secret" not in v.path and Path(v.path).stem != f"{yid}_{s:06d}_{e:06d}" for v in ix.videos)
    assert any("outside the dataset root" in n for n in ix.notes)
    assert f"train/{yid}_{s:06d}_{e:06d}" in ix.missing_videos


def test_kinetics_extracts_end_to_end_with_missing_downloads_listed(tmp_path):
    root = kinetics_root(tmp_path / "k", class_folders=True, missing=("q" * 11,), real=True)
    code, out, err = har("extract", "kinetics400", "--root", root, "--out", tmp_path / "k.zarr", "--frames", 4,
                         "--size", 32, "--workers", 1)
    assert code == 0, err
    assert "1 of 6 train videos" in err and "missing downloads" in err
    with StoreReader(tmp_path / "k.zarr") as r:
        assert r.attrs["dataset"] == "kinetics400" and len(r.attrs["classes"]) == 3
        assert "missing_videos" not in r.attrs   # an array: the attrs stay small at Kinetics size
        assert r.read("missing_videos").tolist() == [f"train/{'q' * 11}_000001_000011"]
        assert r["status"].shape[0] == 8 and (r["status"][...] == store.OK).all()   # 5 train + 3 val
        official = np.asarray(r["split/official"][...])
    assert (official == datasets.TRAIN).sum() == 5 and (official == datasets.TEST).sum() == 3


# ---- Something-Something v2 -------------------------------------------------------------------

SS_CLASSES = {"Pushing something from left to right": "1", "Pushing something from right to left": "0",
              "Holding something next to something": "2"}


def _entry(vid, template, *things):
    return {"id": str(vid), "label": template.replace("[something]", "x"), "template": template,
            "placeholders": list(things)}


def ssv2_root(root: Path, answers: bool = False, real: bool = False, missing=()) -> Path:
    lab = root / "labels"
    lab.mkdir(parents=True)
    (lab / "labels.json").write_text(json.dumps(SS_CLASSES, indent=4))
    train = [_entry(10 + i, t, "pen") for i, t in enumerate(["Pushing [something] from left to right",
                                                              "Pushing [something] from right to left",
                                                              "Holding [something] next to [something]"] * 2)]
    val = [_entry(50, "Pushing [something] from left to right", "cup"),
           _entry(51, "Holding [something] next to [something]", "cup", "pen")]
    test = [{"id": "90"}, {"id": "91"}]
    (lab / "train.json").write_text(json.dumps(train))
    (lab / "validation.json").write_text(json.dumps(val))
    (lab / "test.json").write_text(json.dumps(test))
    if answers:
        (lab / "test-answers.csv").write_text("90;Pushing something from right to left\n"
                                              "91;Holding something next to something\n")
    vids = root / "20bn-something-something-v2"
    vids.mkdir()
    for i, e in enumerate(train + val + test):
        if e["id"] in missing:
            continue
        p = vids / f"{e['id']}.webm"
        if real:
            write_video(p, colour_frames(("Red", "Green", "Blue")[i % 3], 12, i, h=32, w=40), fps=12, codec="libvpx-vp9",
                        options={"cpu-used": "8", "deadline": "realtime"})
        else:
            p.write_bytes(b"x")
    return root


def test_ssv2_index_classes_are_templates_numbered_as_labels_json(tmp_path):
    ix = datasets.load("ssv2", ssv2_root(tmp_path / "ss", missing=("51",)))
    assert ix.classes == ("Pushing something from right to left", "Pushing something from left to right",
                          "Holding something next to something")
    assert len(ix.videos) == 7   # 6 train + 1 validation; 51 not downloaded; test unlabelled
    by_id = {Path(v.path).stem: v for v in ix.videos}
    assert ix.classes[by_id["10"].label] == "Pushing something from left to right"
    assert ix.classes[by_id["11"].label] == "Pushing something from right to left"
    s = ix.splits["official"]
    assert s[list(by_id).index("50")] == datasets.TEST and (s == datasets.TRAIN).sum() == 6
    assert any("1 of 2 val videos" in n for n in ix.notes) and ix.missing_videos == ("val/51",)
    assert any("2 test videos" in n and "no labels" in n for n in ix.notes)
    assert all(v.path.startswith("20bn-something-something-v2/") for v in ix.videos)


def test_ssv2_of_the_20bn_release_names_its_files_something_something_v2(tmp_path):
    root = ssv2_root(tmp_path / "ss")
    (root / "labels").rename(root / "annotations")
    for f in (root / "annotations").iterdir():
        f.rename(f.with_name("something-something-v2-" + f.name))
    ix = datasets.load("ssv2", root)
    assert len(ix.videos) == 8 and ix.classes[0] == "Pushing something from right to left"


def test_a_split_folder_linking_outside_the_root_is_one_note_not_missing_downloads(tmp_path):
    root = kinetics_root(tmp_path / "k")
    (root / "val").rename(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", root / "val")
    ix = datasets.load("kinetics400", root)
    linked = [n for n in ix.notes if "outside the dataset root" in n]
    assert len(linked) == 1 and "--root" in linked[0]
    assert not any("val videos listed" in n for n in ix.notes) and not ix.missing_videos
    assert len(ix.videos) == len(K_TRAIN)


def test_ssv2_test_answers_label_the_test_set(tmp_path):
    ix = datasets.load("ssv2", ssv2_root(tmp_path / "ss", answers=True))
    t = ix.splits["official-test"]
    assert [(t == c).sum() for c in (datasets.TRAIN, datasets.VAL, datasets.TEST)] == [6, 2, 2]
    by_id = {Path(v.path).stem: v for v in ix.videos}
    assert ix.classes[by_id["90"].label] == "Pushing something from right to left"


@pytest.mark.parametrize("fname, text, message", [
    ("labels.json", '{"A": "0", "B": "2"}', "not 0..1"),
    ("labels.json", '["A"]', "not an object"),
    ("labels.json", '{"A": "zero"}', "has number 'zero'"),
    ("train.json", '[{"id": "1", "template": "Unknown [something]"}]', "is no class of labels.json"),
    ("train.json", '[{"id": "../x", "template": "A"}]', "id '../x'"),
    ("train.json", '{"id": "1"', "not JSON"),
    ("labels.json", '{"A": "\u00b2"}', "has number"),
    ("train.json", '[{"id": null, "template": "A"}]', "id ''"),
    ("train.json", "[" * 100000 + "]" * 100000, "nested too deeply"),
])
def test_ssv2_bad_annotation_files_are_one_line(tmp_path, fname, text, message):
    root = tmp_path / "ss"
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "labels.json").write_text('{"A": "0"}')
    (root / "labels" / "train.json").write_text('[{"id": "1", "template": "A"}]')
    (root / "labels" / fname).write_text(text)
    code, _, err = har("extract", "ssv2", "--root", root, "--out", tmp_path / "s.zarr")
    assert code == 2 and message in err and fname in err and "Traceback" not in err


def test_ssv2_views_are_not_mirrored_unless_asked(tmp_path):
    root = ssv2_root(tmp_path / "ss", real=True)
    common = ["extract", "ssv2", "--root", root, "--frames", 4, "--size", 32, "--views", 2, "--workers", 1]
    code, _, err = har(*common, "--out", tmp_path / "a.zarr")
    assert code == 0, err
    assert "not mirrored" in err
    with StoreReader(tmp_path / "a.zarr") as r:
        assert r.attrs["recipe"]["hflip"] is False and r["view_params"][...][..., 4].max() == 0
        assert r.attrs["dataset"] == "ssv2" and np.asarray(r["status"][...]).tolist() == [store.OK] * 8
    code, _, err = har(*common, "--hflip", "--out", tmp_path / "b.zarr")
    assert code == 0 and "not mirrored" not in err
    with StoreReader(tmp_path / "b.zarr") as r:
        assert r.attrs["recipe"].get("hflip", True) is True and r["view_params"][...][..., 4].max() == 1
