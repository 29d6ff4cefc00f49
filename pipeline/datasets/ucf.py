"""UCF50 (class folders, 25 groups: leave-one-group-out) and UCF101 (the official split files of
ucfTrainTestlist/, splits 1-3, and a group-disjoint split).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core import location
from pipeline.datasets.folder import class_folders, group_of
from pipeline.datasets.index import DatasetError, DatasetIndex, Video, check_counts, missing_root
from pipeline.datasets.scan import OutsideRoot, find_folder, list_lines, safe_rel
from pipeline.datasets.splits import TEST, TRAIN, UNUSED, group_split
from pipeline.decoding.video import VIDEO_SUFFIXES

UCF_CLASS_LINE = "allowed: '<number> <class folder>' numbered 1, 2, 3, ... in order"


def load_ucf50(root: Path) -> DatasetIndex:
    return class_folders("ucf50", root, "ucf50")


def load_ucf101(root: Path) -> DatasetIndex:
    lists = find_folder(root, "ucfTrainTestlist", "splits")
    if lists is None:
        raise missing_root("ucf101", root, "no ucfTrainTestlist/ folder with the official split files")
    classes: list[str] = []
    skipped: list[str] = []  # notes: class folders and videos that are links leading outside the root
    outside = set()
    for where, ln in list_lines(lists / "classInd.txt"):
        parts = ln.split()
        if len(parts) != 2:
            raise DatasetError(f"{where}: {ln!r} is not a class number and a class name; {UCF_CLASS_LINE}")
        num, cname = parts
        if not (num.isascii() and num.isdigit()) or int(num) != len(classes) + 1:
            raise DatasetError(f"{where}: class number {num!r} where {len(classes) + 1} belongs; {UCF_CLASS_LINE}")
        try:
            cname = safe_rel(root, cname, where)
        except OutsideRoot as e:  # the class keeps its number (labels are classInd order) but gets no videos
            skipped.append(f"{e}; not indexed")
            outside.add(cname)
        classes.append(cname)
    lower = {c.lower(): i for i, c in enumerate(classes)}  # HandstandPushups vs v_HandStandPushups_
    found: dict[str, int] = {}
    if root.is_dir():
        for c in classes:
            d = root / c
            if c not in outside and d.is_dir():
                for f in sorted(location.listdir(d)):
                    if f.lower().endswith(VIDEO_SUFFIXES):
                        try:
                            found[safe_rel(root, f"{c}/{f}", "ucf101 scan")] = lower[c.lower()]
                        except DatasetError as e:
                            skipped.append(f"{e}; not indexed")
    if not found:
        raise missing_root("ucf101", root, "no videos in the class folders")
    rels = sorted(found)
    pos = {r.lower(): i for i, r in enumerate(rels)}
    videos = tuple(Video(r, found[r], group_of(r.rsplit("/", 1)[-1])) for r in rels)
    splits: dict[str, np.ndarray] = {}
    missing = 0
    for k in (1, 2, 3):
        tr, te = lists / f"trainlist0{k}.txt", lists / f"testlist0{k}.txt"
        if not (tr.exists() and te.exists()):
            continue
        s = np.full(len(rels), UNUSED, dtype=np.int8)
        for value, f in ((TRAIN, tr), (TEST, te)):
            for where, ln in list_lines(f):
                # text only: the name is looked up among the scanned videos, whose links are checked
                i = pos.get(safe_rel(root, ln.split()[0], where, links=False).lower())
                if i is None:
                    missing += 1
                else:
                    s[i] = value
        splits[f"official{k}"] = s
    groups = np.array([v.group for v in videos])
    splits["groups"] = group_split(groups, "ucf101")
    notes = list(check_counts("ucf101", len(videos), len(classes))) + skipped
    if missing:
        notes.append(f"ucf101: {missing} entries of the split files have no video under the root")
    return DatasetIndex("ucf101", root, tuple(classes), videos, splits, "official1", tuple(notes))
