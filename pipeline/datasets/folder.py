"""Class-per-folder datasets (`folder`: your own videos): the classes are the folders holding
videos, the groups come from `_gNN_` in the file names where there are any (group-disjoint and
leave-one-group-out splits then, a stratified random split always). UCF50 and har's synthetic
set are laid out so too.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.datasets.index import DatasetError, DatasetIndex, Video, check_counts, missing_root
from pipeline.datasets.scan import files_below, safe_rel
from pipeline.datasets.splits import group_split, leakage, logo_splits, stratified_split
from pipeline.decoding.video import VIDEO_SUFFIXES

GROUP_RE = re.compile(r"_g(\d+)_", re.IGNORECASE)


def group_of(filename: str) -> int:
    m = GROUP_RE.search(filename)
    return int(m.group(1)) if m else -1


def scan_class_folders(name: str, root: Path) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """Classes are the folders holding at least one video, sorted byte-wise (JumpRope < JumpingJack).
    Folders and videos that are links resolving outside the root are skipped, each with a note."""
    if not root.is_dir():
        raise missing_root(name, root, "no dataset folder")
    where = f"{name} scan"
    per_class: dict[str, list[str]] = {}
    notes: list[str] = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:  # os.walk(d) follows d itself when it is a link, so check the folder before walking it
            safe_rel(root, d.name, where)
        except DatasetError as e:
            notes.append(f"{e}; not indexed")
            continue
        for rel in files_below(root, d):
            f = rel.rsplit("/", 1)[-1]
            if f.lower().endswith(VIDEO_SUFFIXES) and not f.startswith("."):
                try:
                    rel = safe_rel(root, rel, where)
                except DatasetError as e:
                    notes.append(f"{e}; not indexed")
                    continue
                per_class.setdefault(d.name, []).append(rel)
    if not per_class:
        raise missing_root(name, root, "no videos found in class folders")
    classes = sorted(per_class)
    items = sorted((rel, ci) for ci, c in enumerate(classes) for rel in per_class[c])
    return classes, items, notes


def class_folders(name: str, root: Path, key: str, default_split: str = "groups") -> DatasetIndex:
    """The index of a class-per-folder tree: classes and videos from its folders, groups from `_gNN_`
    in the file names; splits `random` always, `groups` (the default then) and `logoNN` where there
    are groups, each seeded by `key`."""
    classes, items, skipped = scan_class_folders(name, root)
    videos = tuple(Video(rel, ci, group_of(rel.rsplit("/", 1)[-1])) for rel, ci in items)
    labels = np.array([v.label for v in videos])
    groups = np.array([v.group for v in videos])
    splits = {"random": stratified_split(labels, key)}
    notes = list(check_counts(name, len(videos), len(classes))) + skipped
    if (groups >= 0).any():
        splits["groups"] = group_split(groups, key)
        splits.update(logo_splits(groups))
        leak = leakage(splits["random"], labels, groups)
        if leak > 0:
            notes.append(f"split 'random' leaks groups: {leak:.0%} of its test videos have a clip of the same "
                         f"group in train (near-duplicates); the default split 'groups' has none")
    else:
        default_split = "random"
    return DatasetIndex(name, root, tuple(classes), videos, splits, default_split, tuple(notes))


def load_folder(root: Path) -> DatasetIndex:
    return class_folders("folder", root, "folder")
