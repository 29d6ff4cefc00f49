"""HMDB51: the official split files (testTrainMulti_7030_splits/, splits 1-3) name every video and
its part; the class is each file's prefix.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.datasets.index import DatasetError, DatasetIndex, Video, check_counts, missing_root
from pipeline.datasets.scan import OutsideRoot, find_folder, list_lines, safe_rel
from pipeline.datasets.splits import TEST, TRAIN, UNUSED

HMDB_LINE = "allowed: '<video file name> <flag>' with flag 0 (unused), 1 (train) or 2 (test)"


def load_hmdb51(root: Path) -> DatasetIndex:
    lists = find_folder(root, "testTrainMulti_7030_splits", "splits")
    if lists is None:
        raise missing_root("hmdb51", root, "no testTrainMulti_7030_splits/ folder with the official split files")
    pat = re.compile(r"^(.+)_test_split([123])\.txt$")
    per_split: dict[int, dict[str, tuple[str, int]]] = {1: {}, 2: {}, 3: {}}
    classes = set()
    checked: dict[str, str | None] = {}  # class or video -> its safe path, None when a link leads outside
    skipped: list[str] = []
    for f in sorted(lists.iterdir()):
        m = pat.match(f.name)
        if not m:
            continue
        cname, k = m.group(1), int(m.group(2))
        if cname not in checked:  # the class is the file name's prefix: a folder under the root
            try:
                checked[cname] = safe_rel(root, cname, f"{f} (class name)")
            except OutsideRoot as e:
                skipped.append(f"{e}; not indexed")
                checked[cname] = None
        classes.add(cname)
        if checked[cname] is None:
            continue
        for where, ln in list_lines(f):
            parts = ln.rsplit(maxsplit=1)  # names may hold spaces; the flag is the last field
            if len(parts) != 2:
                raise DatasetError(f"{where}: {ln!r} has no split flag; {HMDB_LINE}")
            video, flag = parts
            if flag not in ("0", "1", "2"):
                raise DatasetError(f"{where}: split flag {flag!r} after {video!r}; {HMDB_LINE}")
            key = f"{cname}/{video}"
            if key not in checked:  # each video is on all three split files: resolve it once
                try:
                    checked[key] = safe_rel(root, video, where, folder=cname)
                except OutsideRoot as e:
                    skipped.append(f"{e}; not indexed")
                    checked[key] = None
            if checked[key] is not None:
                per_split[k][checked[key]] = (cname, int(flag))
    classes_t = tuple(sorted(classes))
    if not classes_t:
        raise missing_root("hmdb51", root, "no <class>_test_splitN.txt files")
    cidx = {c: i for i, c in enumerate(classes_t)}
    rels = sorted(r for r in per_split[1] if (root / r).is_file())
    if not rels:
        raise missing_root("hmdb51", root, "none of the videos named by the split files")
    pos = {r: i for i, r in enumerate(rels)}
    videos = tuple(Video(r, cidx[r.split("/", 1)[0]], -1) for r in rels)
    flag_to = {0: UNUSED, 1: TRAIN, 2: TEST}
    splits = {}
    for k, entries in per_split.items():
        if not entries:
            continue
        s = np.full(len(rels), UNUSED, dtype=np.int8)
        for r, (_, flag) in entries.items():
            if r in pos:
                s[pos[r]] = flag_to[flag]
        splits[f"official{k}"] = s
    notes = check_counts("hmdb51", len(videos), len(classes_t)) + tuple(skipped)
    return DatasetIndex("hmdb51", root, classes_t, videos, splits, "official1", notes)
