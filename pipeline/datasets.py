"""Dataset adapters: a root folder -> classes, video records and split arrays.

Every adapter returns a `DatasetIndex`. Split arrays hold 0 train, 1 val, 2 test, -1 unused,
one int8 per video, as the store keeps them (`split/<name>`).
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.lineage import seed_for
from pipeline.registry import Registry
from pipeline.video import VIDEO_SUFFIXES

logger = logging.getLogger(__name__)

# package data: in the source tree a link to the top-level data_manifest.yaml, in a wheel a copy of it
MANIFEST_PATH = Path(__file__).resolve().parent / "data_manifest.yaml"
GROUP_RE = re.compile(r"_g(\d+)_", re.IGNORECASE)
TRAIN, VAL, TEST, UNUSED = 0, 1, 2, -1
FRACTIONS = (0.75, 0.10, 0.15)  # train, val, test


class DatasetError(ValueError):
    """A dataset root that is missing or not laid out as expected; the message says how to fix it."""


class OutsideRoot(DatasetError):
    """A well-formed name whose file or folder is a link resolving outside the dataset root."""


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
    attrs: dict = field(default_factory=dict)  # facts of this dataset the stores keep in their attrs
                                               # (synthetic: "reversed_pairs", the classes whose
                                               # time-reversed twin is a class too)


@lru_cache(maxsize=1)
def manifest() -> dict:
    import yaml

    with open(MANIFEST_PATH) as f:
        return yaml.safe_load(f)


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


ALLOWED_NAME = "allowed: a relative path inside the dataset root, without '..'"
_SEPARATORS = re.compile(r"[/\\]")  # backslash too: a\..\b climbs on Windows
_DRIVE = re.compile(r"[A-Za-z]:")    # C:x, C:\x


def safe_rel(root: Path, name: str, where: str, folder: str = "", links: bool = True) -> str:
    """`name` (from a list file or a folder scan; relative to `folder`, an already checked path under
    `root`) as a normalised '/'-separated path relative to `root`. `where` ('file:line') starts the message.

    Bad text raises DatasetError. A well-formed name that resolves outside the root (a link) raises
    OutsideRoot, which adapters turn into a note, so one stray link never stops a dataset. A dangling link
    (or a loop) is kept when the link itself is under the root: extraction records it as failed.
    links=False checks the text only, for names merely looked up among names already checked."""
    def bad(why: str) -> DatasetError:
        return DatasetError(f"{where}: {name!r} {why}; {ALLOWED_NAME}")

    if not name:
        raise bad("is empty")
    if "\x00" in name:
        raise bad("contains a NUL byte")
    # Windows forms too (\x, \\server\share, C:x, C:\x): list files are often written there
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise bad("is an absolute path")
    if ".." in _SEPARATORS.split(name):
        raise bad("has a '..' component")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        raise bad("names no file or folder")
    rel = "/".join(([folder] if folder else []) + parts)
    if not links:
        return rel
    # The text alone stays under the root; only a link on the way can lead out. So lstat each component
    # (cheap: scans call this once per video) and resolve only when there is a link.
    cur = str(root)
    for part in rel.split("/"):
        cur = os.path.join(cur, part)
        if os.path.islink(cur):
            break
    else:
        return rel
    base, path = os.path.realpath(root), os.path.join(root, rel)
    target = os.path.realpath(path)  # not strict: a dangling link or a loop resolves as far as it goes
    if _under(target, base):
        return rel
    if os.path.islink(path) and not os.path.exists(path) and _under(os.path.realpath(os.path.dirname(path)), base):
        return rel  # dangling: nothing outside is read now; extraction reports the video as failed
    raise OutsideRoot(f"{where}: {name!r} resolves to {target}, outside the dataset root {base}")


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def _scan_class_folders(name: str, root: Path) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """Classes are the folders holding at least one video, sorted byte-wise (JumpRope < JumpingJack).
    Folders and videos that are links resolving outside the root are skipped, each with a note."""
    if not root.is_dir():
        raise _missing_root(name, root, "no dataset folder")
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
        for dirpath, _, files in os.walk(d):
            for f in files:
                if f.lower().endswith(VIDEO_SUFFIXES) and not f.startswith("."):
                    rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                    try:
                        rel = safe_rel(root, rel, where)
                    except DatasetError as e:
                        notes.append(f"{e}; not indexed")
                        continue
                    per_class.setdefault(d.name, []).append(rel)
    if not per_class:
        raise _missing_root(name, root, "no videos found in class folders")
    classes = sorted(per_class)
    items = sorted((rel, ci) for ci, c in enumerate(classes) for rel in per_class[c])
    return classes, items, notes


def _check_counts(name: str, n_videos: int, n_classes: int) -> tuple[str, ...]:
    entry = manifest()["datasets"].get(name, {})
    notes = []
    if entry.get("videos") and entry["videos"] != n_videos:
        notes.append(f"{name}: found {n_videos} videos, the official release has {entry['videos']}")
    if entry.get("classes") and entry["classes"] != n_classes:
        notes.append(f"{name}: found {n_classes} classes, the official release has {entry['classes']}")
    return tuple(notes)


def _grouped(name: str, root: Path, key: str, default_split: str = "groups") -> DatasetIndex:
    classes, items, skipped = _scan_class_folders(name, root)
    videos = tuple(Video(rel, ci, group_of(rel.rsplit("/", 1)[-1])) for rel, ci in items)
    labels = np.array([v.label for v in videos])
    groups = np.array([v.group for v in videos])
    splits = {"random": stratified_split(labels, key)}
    notes = list(_check_counts(name, len(videos), len(classes))) + skipped
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


def store_facts(dataset: str, classes: list[str]) -> dict:
    """Facts of a dataset that its stores keep in their attrs for training to read: for the
    synthetic set `reversed_pairs`, the classes whose time-reversed twin is a class too (the ones
    a bag-of-frames model cannot tell apart); nothing for the others."""
    if dataset != "synthetic":
        return {}
    from pipeline.synth import reversed_classes

    return {"reversed_pairs": reversed_classes(list(classes))}


def load_synthetic(root: Path) -> DatasetIndex:
    from dataclasses import replace

    if not (root / "synth.json").exists():
        raise DatasetError(f"synthetic: no synth.json at {root}; make the dataset first with `har synth {root}`")
    index = _grouped("synthetic", root, "synthetic")
    return replace(index, attrs=store_facts("synthetic", index.classes))


def load_folder(root: Path) -> DatasetIndex:
    return _grouped("folder", root, "folder")


def _list_lines(path: Path) -> list[tuple[str, str]]:
    """(where, line) for each non-blank line of a list file; `where` is 'path:lineno' for messages.
    Lines end at \\n, \\r\\n or \\r (universal newlines: CRLF is fine); a UTF-8 byte order mark is dropped."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read this list file ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")  # -sig: Notepad writes a BOM; it would stick to the first name
    except UnicodeDecodeError as e:
        line = data[:e.start].replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text; allowed: a UTF-8 (or ASCII) list file") from None
    # universal newlines by hand: str.splitlines would also split at \f, \x1c, \u2028 ...
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [(f"{path}:{i}", ln.strip()) for i, ln in enumerate(lines, 1) if ln.strip()]


def _find(root: Path, *names: str) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


UCF_CLASS_LINE = "allowed: '<number> <class folder>' numbered 1, 2, 3, ... in order"
HMDB_LINE = "allowed: '<video file name> <flag>' with flag 0 (unused), 1 (train) or 2 (test)"


def load_ucf101(root: Path) -> DatasetIndex:
    lists = _find(root, "ucfTrainTestlist", "splits")
    if lists is None:
        raise _missing_root("ucf101", root, "no ucfTrainTestlist/ folder with the official split files")
    classes: list[str] = []
    skipped: list[str] = []  # notes: class folders and videos that are links leading outside the root
    outside = set()
    for where, ln in _list_lines(lists / "classInd.txt"):
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
                for f in sorted(os.listdir(d)):
                    if f.lower().endswith(VIDEO_SUFFIXES):
                        try:
                            found[safe_rel(root, f"{c}/{f}", "ucf101 scan")] = lower[c.lower()]
                        except DatasetError as e:
                            skipped.append(f"{e}; not indexed")
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
            for where, ln in _list_lines(f):
                # text only: the name is looked up among the scanned videos, whose links are checked
                i = pos.get(safe_rel(root, ln.split()[0], where, links=False).lower())
                if i is None:
                    missing += 1
                else:
                    s[i] = value
        splits[f"official{k}"] = s
    groups = np.array([v.group for v in videos])
    splits["groups"] = group_split(groups, "ucf101")
    notes = list(_check_counts("ucf101", len(videos), len(classes))) + skipped
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
        for where, ln in _list_lines(f):
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
    notes = _check_counts("hmdb51", len(videos), len(classes_t)) + tuple(skipped)
    return DatasetIndex("hmdb51", root, classes_t, videos, splits, "official1", notes)


DATASETS: Registry[Callable[[Path], DatasetIndex]] = Registry("dataset")
DATASETS.add("ucf50", load_ucf50, "UCF50: 50 classes in class folders, 25 groups (_gNN_), leave-one-group-out")
DATASETS.add("ucf101", load_ucf101, "UCF101: 101 classes, the official splits 1-3 (ucfTrainTestlist)")
DATASETS.add("hmdb51", load_hmdb51, "HMDB51: 51 classes, the official splits 1-3 (testTrainMulti_7030_splits)")
DATASETS.add("folder", load_folder, "your own videos: one folder per class (groups from _gNN_ names if any)")
DATASETS.add("synthetic", load_synthetic, "har's own synthetic set (`har synth`): reversed-order class pairs")


def load(name: str, root: Path | None = None) -> DatasetIndex:
    """The index of dataset `name` under `root` (default: $HAR_HOME/datasets/<name>)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS.names())}")
    root = Path(root) if root is not None else default_root(name)
    index = DATASETS.get(name)(root.resolve() if root.exists() else root)
    for note in index.notes:  # the CLI prints index.notes itself; library users see them at INFO
        logger.info(note)
    return index
