"""Dataset adapters: a root folder -> classes, video records and split arrays.

Every adapter returns a `DatasetIndex`. Split arrays hold 0 train, 1 val, 2 test, -1 unused,
one int8 per video, as the store keeps them (`split/<name>`).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.sampling import seed_for
from pipeline.video import VIDEO_SUFFIXES

logger = logging.getLogger(__name__)

MANIFEST_PATH = Path(__file__).resolve().parent.parent / "data_manifest.yaml"
GROUP_RE = re.compile(r"_g(\d+)_", re.IGNORECASE)
TRAIN, VAL, TEST, UNUSED = 0, 1, 2, -1
FRACTIONS = (0.75, 0.10, 0.15)  # train, val, test


class DatasetError(ValueError):
    """A dataset root that is missing or not laid out as expected; the message says how to fix it."""


@dataclass(frozen=True)
class Video:
    path: str   # relative to the dataset root, '/' separated
    label: int
    group: int  # the _gNN_ number, -1 when the dataset has none


@dataclass(frozen=True)
class DatasetIndex:
    name: str
    root: Path
    classes: tuple[str, ...]
    videos: tuple[Video, ...]
    splits: dict[str, np.ndarray] = field(default_factory=dict)  # name -> int8 [N]
    default_split: str = "groups"
    notes: tuple[str, ...] = ()  # count mismatches and other things worth telling the user


@lru_cache(maxsize=1)
def manifest() -> dict:
    import yaml

    with open(MANIFEST_PATH) as f:
        return yaml.safe_load(f)


def dataset_names() -> tuple[str, ...]:
    return tuple(manifest()["datasets"])


def default_root(name: str) -> Path:
    from pipeline.lineage import har_home

    return har_home() / "datasets" / name


def group_of(filename: str) -> int:
    m = GROUP_RE.search(filename)
    return int(m.group(1)) if m else -1


# ---- splits: pure functions of labels and groups -------------------------------------------

def group_split(groups: np.ndarray, key: str) -> np.ndarray:
    """Group-disjoint train/val/test, about 75/10/15 of the groups, the same for the same groups."""
    uniq = np.unique(groups[groups >= 0])
    order = np.random.default_rng(seed_for("group-split", key)).permutation(uniq)
    n = len(order)
    n_test = max(1, round(FRACTIONS[2] * n)) if n >= 2 else 0
    n_val = max(1, round(FRACTIONS[1] * n)) if n >= 3 else 0
    out = np.full(len(groups), TRAIN, dtype=np.int8)
    out[np.isin(groups, order[:n_test])] = TEST
    out[np.isin(groups, order[n_test:n_test + n_val])] = VAL
    out[groups < 0] = UNUSED
    return out


def stratified_split(labels: np.ndarray, key: str) -> np.ndarray:
    """Per class, a seeded 75/10/15 shuffle split (the seed study's random split)."""
    rng = np.random.default_rng(seed_for("random-split", key))
    out = np.full(len(labels), TRAIN, dtype=np.int8)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(FRACTIONS[2] * len(idx)))
        n_val = int(round(FRACTIONS[1] * len(idx)))
        out[idx[:n_test]] = TEST
        out[idx[n_test:n_test + n_val]] = VAL
    return out


def leakage(split: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Fraction of test videos whose (class, group) also has a video in train: near-copies."""
    test = np.flatnonzero(split == TEST)
    if not len(test) or (groups < 0).all():
        return 0.0
    train = {(int(l), int(g)) for l, g in zip(labels[split == TRAIN], groups[split == TRAIN])}
    return float(np.mean([(int(labels[i]), int(groups[i])) in train for i in test]))


def logo_splits(groups: np.ndarray) -> dict[str, np.ndarray]:
    """Leave-one-group-out: fold `logoNN` tests on group NN and trains on the rest."""
    folds = {}
    for g in np.unique(groups[groups >= 0]):
        s = np.where(groups == g, TEST, TRAIN).astype(np.int8)
        s[groups < 0] = UNUSED
        folds[f"logo{int(g):02d}"] = s
    return folds


# ---- adapters -------------------------------------------------------------------------------

def _missing_root(name: str, root: Path, why: str) -> DatasetError:
    entry = manifest()["datasets"].get(name, {})
    src = f" Download: {entry['source']}." if entry.get("source") else ""
    return DatasetError(f"{name}: {why} at {root}.{src} Expected layout: {entry.get('layout', '?')}")


def _scan_class_folders(name: str, root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes are the folders holding at least one video, sorted byte-wise (JumpRope < JumpingJack)."""
    if not root.is_dir():
        raise _missing_root(name, root, "no dataset folder")
    per_class: dict[str, list[str]] = {}
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith("."):
            continue
        for dirpath, _, files in os.walk(d):
            for f in files:
                if f.lower().endswith(VIDEO_SUFFIXES) and not f.startswith("."):
                    rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                    per_class.setdefault(d.name, []).append(rel)
    if not per_class:
        raise _missing_root(name, root, "no videos found in class folders")
    classes = sorted(per_class)
    items = sorted((rel, ci) for ci, c in enumerate(classes) for rel in per_class[c])
    return classes, items


def _check_counts(name: str, n_videos: int, n_classes: int) -> tuple[str, ...]:
    entry = manifest()["datasets"].get(name, {})
    notes = []
    if entry.get("videos") and entry["videos"] != n_videos:
        notes.append(f"{name}: found {n_videos} videos, the official release has {entry['videos']}")
    if entry.get("classes") and entry["classes"] != n_classes:
        notes.append(f"{name}: found {n_classes} classes, the official release has {entry['classes']}")
    return tuple(notes)


def _grouped(name: str, root: Path, key: str, default_split: str = "groups") -> DatasetIndex:
    classes, items = _scan_class_folders(name, root)
    videos = tuple(Video(rel, ci, group_of(rel.rsplit("/", 1)[-1])) for rel, ci in items)
    labels = np.array([v.label for v in videos])
    groups = np.array([v.group for v in videos])
    splits = {"random": stratified_split(labels, key)}
    notes = list(_check_counts(name, len(videos), len(classes)))
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


def load_ucf50(root: Path) -> DatasetIndex:
    return _grouped("ucf50", root, "ucf50")


def load_synthetic(root: Path) -> DatasetIndex:
    if not (root / "synth.json").exists():
        raise DatasetError(f"synthetic: no synth.json at {root}; make the dataset first with `har synth {root}`")
    return _grouped("synthetic", root, "synthetic")


def load_folder(root: Path) -> DatasetIndex:
    return _grouped("folder", root, "folder")


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline=None) as f:  # universal newlines: CRLF is fine
        return [ln.strip() for ln in f if ln.strip()]


def _find(root: Path, *names: str) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def load_ucf101(root: Path) -> DatasetIndex:
    lists = _find(root, "ucfTrainTestlist", "splits")
    if lists is None:
        raise _missing_root("ucf101", root, "no ucfTrainTestlist/ folder with the official split files")
    classes = []
    for ln in _read_lines(lists / "classInd.txt"):
        num, cname = ln.split()
        if int(num) != len(classes) + 1:
            raise DatasetError(f"ucf101: classInd.txt is not numbered 1..101 in order at line {ln!r}")
        classes.append(cname)
    lower = {c.lower(): i for i, c in enumerate(classes)}  # HandstandPushups vs v_HandStandPushups_
    found: dict[str, int] = {}
    if root.is_dir():
        for c in classes:
            d = root / c
            if d.is_dir():
                for f in sorted(os.listdir(d)):
                    if f.lower().endswith(VIDEO_SUFFIXES):
                        found[f"{c}/{f}"] = lower[c.lower()]
    if not found:
        raise _missing_root("ucf101", root, "no videos in the class folders")
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
            for ln in _read_lines(f):
                i = pos.get(ln.split()[0].lower())
                if i is None:
                    missing += 1
                else:
                    s[i] = value
        splits[f"official{k}"] = s
    groups = np.array([v.group for v in videos])
    splits["groups"] = group_split(groups, "ucf101")
    notes = list(_check_counts("ucf101", len(videos), len(classes)))
    if missing:
        notes.append(f"ucf101: {missing} entries of the split files have no video under the root")
    return DatasetIndex("ucf101", root, tuple(classes), videos, splits, "official1", tuple(notes))


def load_hmdb51(root: Path) -> DatasetIndex:
    lists = _find(root, "testTrainMulti_7030_splits", "splits")
    if lists is None:
        raise _missing_root("hmdb51", root, "no testTrainMulti_7030_splits/ folder with the official split files")
    pat = re.compile(r"^(.+)_test_split([123])\.txt$")
    per_split: dict[int, dict[str, tuple[str, int]]] = {1: {}, 2: {}, 3: {}}
    classes = set()
    for f in sorted(lists.iterdir()):
        m = pat.match(f.name)
        if not m:
            continue
        cname, k = m.group(1), int(m.group(2))
        classes.add(cname)
        for ln in _read_lines(f):
            video, flag = ln.rsplit(maxsplit=1)
            per_split[k][f"{cname}/{video}"] = (cname, int(flag))
    classes_t = tuple(sorted(classes))
    if not classes_t:
        raise _missing_root("hmdb51", root, "no <class>_test_splitN.txt files")
    cidx = {c: i for i, c in enumerate(classes_t)}
    rels = sorted(r for r in per_split[1] if (root / r).is_file())
    if not rels:
        raise _missing_root("hmdb51", root, "none of the videos named by the split files")
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
    notes = _check_counts("hmdb51", len(videos), len(classes_t))
    return DatasetIndex("hmdb51", root, classes_t, videos, splits, "official1", notes)


ADAPTERS = {
    "ucf50": load_ucf50,
    "ucf101": load_ucf101,
    "hmdb51": load_hmdb51,
    "folder": load_folder,
    "synthetic": load_synthetic,
}


def load(name: str, root: Path | None = None) -> DatasetIndex:
    """The index of dataset `name` under `root` (default: $HAR_HOME/datasets/<name>)."""
    if name not in ADAPTERS:
        raise DatasetError(f"unknown dataset {name!r}; allowed: {', '.join(ADAPTERS)}")
    root = Path(root) if root is not None else default_root(name)
    index = ADAPTERS[name](root.resolve() if root.exists() else root)
    for note in index.notes:  # the CLI prints index.notes itself; library users see them at INFO
        logger.info(note)
    return index
