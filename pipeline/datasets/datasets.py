"""Dataset adapters: a root folder -> classes, video records and split arrays.

Every adapter returns a `DatasetIndex`. Split arrays hold 0 train, 1 val, 2 test, -1 unused,
one int8 per video, as the store keeps them (`split/<name>`).
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from pipeline.core import location
from pipeline.core.lineage import seed_for
from pipeline.core.location import Url
from pipeline.core.registry import Registry
from pipeline.decoding.video import VIDEO_SUFFIXES

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
    missing_videos: tuple[str, ...] = ()  # clips the annotations list that are not under the root
                                          # (missing downloads); the store's array `missing_videos`


@lru_cache(maxsize=1)
def manifest() -> dict:
    import yaml

    with open(MANIFEST_PATH) as f:
        return yaml.safe_load(f)


def default_root(name: str) -> Path:
    from pipeline.core.lineage import har_home

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
    if not links or isinstance(root, Url):   # objects have no links: the text is the whole story
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
        for rel in _files_below(root, d):
            f = rel.rsplit("/", 1)[-1]
            if f.lower().endswith(VIDEO_SUFFIXES) and not f.startswith("."):
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


def _files_below(root, folder) -> list[str]:
    """Every file below `folder` (links to folders not followed), as paths relative to `root`: a
    local walk, or one listing of a URL prefix."""
    if isinstance(folder, Url):
        base = folder.key[len(root.key):].strip("/")
        return sorted(f"{base}/{k}" if base else k for k in folder.files())
    out = []
    for dirpath, _, files in os.walk(folder):
        out += [os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/") for f in files]
    return out


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
    from pipeline.datasets.synth import reversed_classes

    return {"reversed_pairs": reversed_classes(list(classes))}


def load_synthetic(root: Path) -> DatasetIndex:
    from dataclasses import replace

    if not (root / "synth.json").exists():
        raise DatasetError(f"synthetic: no synth.json at {root}; make the dataset first with `har synth {root}`")
    if _synth_unfinished(root / "synth.json"):
        raise DatasetError(f"synthetic: {root} is half written (har synth did not finish); run the same "
                           f"`har synth {root}` again")
    index = _grouped("synthetic", root, "synthetic")
    return replace(index, attrs=store_facts("synthetic", index.classes))


def _synth_unfinished(manifest: Path) -> bool:
    """Whether har synth is writing this folder, or was killed while it did (synth.json "complete": false)."""
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("complete") is False


def load_folder(root: Path) -> DatasetIndex:
    return _grouped("folder", root, "folder")


def _read_text(path: Path, kind: str = "list file") -> str:
    """A UTF-8 annotation file's text (a byte order mark dropped); one line naming the file otherwise."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read this {kind} ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")  # -sig: Notepad writes a BOM; it would stick to the first name
    except UnicodeDecodeError as e:
        line = data[:e.start].replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text; allowed: a UTF-8 (or ASCII) {kind}") from None


def _list_lines(path: Path) -> list[tuple[str, str]]:
    """(where, line) for each non-blank line of a list file; `where` is 'path:lineno' for messages.
    Lines end at \\n, \\r\\n or \\r (universal newlines: CRLF is fine); a UTF-8 byte order mark is dropped."""
    text = _read_text(path)
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
                for f in sorted(location.listdir(d)):
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


# ---- Kinetics and Something-Something v2: annotation files name the videos, downloads miss some ----

CLIP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")   # YouTube ids (11 of these characters), SSv2's numbers
MISSING_SHOWN = 5                                  # missing downloads named in the note; all are in the store


def _scan_split_folder(name: str, root: Path, folder: Path, notes: list[str]) -> dict[str, str] | None:
    """File stem -> path relative to root for every video in `folder`, flat or in class folders
    below it (the official download scripts write either). Links leading outside the root are
    left out with one note each (a linked folder once, not per video); None when `folder` itself
    leads outside. Of two files with one stem the first in sorted order is kept."""
    found: dict[str, str] = {}
    if isinstance(folder, Url):
        for rel in _files_below(root, folder):
            f = rel.rsplit("/", 1)[-1]
            if not f.startswith(".") and f.lower().endswith(VIDEO_SUFFIXES):
                found.setdefault(f.rsplit(".", 1)[0], safe_rel(root, rel, f"{name} scan"))
        return found
    base = os.path.relpath(folder, root).replace(os.sep, "/")
    if base != ".":
        try:
            safe_rel(root, base, f"{name} scan")
        except DatasetError as e:
            notes.append(f"{e}; its videos are not indexed (har reads only below the dataset root: pass the "
                         "folder the link points into as --root, or copy it under the root)")
            return None
    seen = {os.path.realpath(folder)}
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            rel = os.path.relpath(os.path.join(dirpath, d), root).replace(os.sep, "/")
            real = os.path.realpath(os.path.join(dirpath, d))
            try:
                safe_rel(root, rel, f"{name} scan of {base}")
            except DatasetError as e:
                notes.append(f"{e}; its videos are not indexed")
                continue
            if real not in seen:   # a link back up would walk forever
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        for f in sorted(files):
            if f.startswith(".") or not f.lower().endswith(VIDEO_SUFFIXES):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
            try:
                rel = safe_rel(root, rel, f"{name} scan of {base}")
            except DatasetError as e:
                notes.append(f"{e}; not indexed")
                continue
            found.setdefault(f.rsplit(".", 1)[0], rel)
    return found


def _missing_note(name: str, missing: dict[str, list[str]], listed: dict[str, int], where: str) -> list[str]:
    """One note per split with missing downloads: how many of how many, and the first few."""
    notes = []
    for split, names in missing.items():
        if names:
            shown = ", ".join(names[:MISSING_SHOWN]) + (", ..." if len(names) > MISSING_SHOWN else "")
            notes.append(f"{name}: {len(names)} of {listed[split]} {split} videos listed in the annotations are not "
                         f"under {where} ({len(names) / max(1, listed[split]):.1%}, missing downloads; not indexed, "
                         f"all listed in the store's array missing_videos): {shown}")
    return notes


def _official_splits(n: int, part: list[str], test_labelled: bool) -> dict[str, np.ndarray]:
    """`official`: train to train and the official validation set as the test set (the protocol
    papers report; har carves a validation tenth from train); `official-test` where the test set
    has labels: train, validation and test as released."""
    part_a = np.array(part)
    s = np.full(n, UNUSED, np.int8)
    s[part_a == "train"], s[part_a == "val"] = TRAIN, TEST
    splits = {"official": s}
    if test_labelled:
        t = np.full(n, UNUSED, np.int8)
        t[part_a == "train"], t[part_a == "val"], t[part_a == "test"] = TRAIN, VAL, TEST
        splits["official-test"] = t
    return splits


KINETICS_PARTS = {"train": ("train",), "val": ("val", "validate", "valid", "validation"), "test": ("test",)}
KINETICS_LINE = ("allowed: a CSV with the header label,youtube_id,time_start,time_end,split (label left out in a "
                 "held-out test set; more columns such as is_cc are fine)")


def _seconds(where: str, column: str, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise DatasetError(f"{where}: {column} {text!r} is not a whole number of seconds; {KINETICS_LINE}")
    return int(value)


def _kinetics_rows(path: Path) -> tuple[list[tuple[str | None, str, str]], bool]:
    """[(label or None, youtube_id, file stem)] of one annotation CSV, and whether it has labels."""
    import csv

    reader = csv.DictReader(io.StringIO(_read_text(path, "annotation CSV"), newline=""))
    try:
        cols = reader.fieldnames or []
    except csv.Error as e:
        raise DatasetError(f"{path}:1: not a CSV header ({e}); {KINETICS_LINE}") from None
    need = ("youtube_id", "time_start", "time_end")
    if any(c not in cols for c in need):
        raise DatasetError(f"{path}:1: header {','.join(cols)!r} lacks {', '.join(c for c in need if c not in cols)}; "
                           f"{KINETICS_LINE}")
    labelled = "label" in cols
    rows = []
    while True:
        try:
            r = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DatasetError(f"{path}:{reader.line_num}: not a CSV line ({e}); {KINETICS_LINE}") from None
        where = f"{path}:{reader.line_num}"
        if None in r or any(r.get(c) is None for c in cols):
            raise DatasetError(f"{where}: {len(cols)} columns in the header, another count on this line; {KINETICS_LINE}")
        yid = r["youtube_id"].strip()
        if not CLIP_ID.match(yid):
            raise DatasetError(f"{where}: youtube_id {yid!r} is not a video id; allowed: 1-64 letters, digits, '_' or '-'")
        start, end = (_seconds(where, c, r[c].strip()) for c in ("time_start", "time_end"))
        label = r["label"].strip() if labelled else None
        if labelled and not label:
            raise DatasetError(f"{where}: empty label; {KINETICS_LINE}")
        rows.append((label, yid, f"{yid}_{start:06d}_{end:06d}"))
    return rows, labelled


def load_kinetics(name: str, root: Path) -> DatasetIndex:
    """Kinetics-400/600/700: `annotations/{train,val,test}.csv` (the official CSVs) name the clips;
    the videos are `<split>/<youtube_id>_<start:06d>_<end:06d>.<ext>`, flat or in class folders (the
    official download scripts' layouts). Clips not downloaded (5-10 % is usual) are counted, named
    and left out, never fatal; a test set without labels is left out with a note."""
    ann = _find(root, "annotations")
    if ann is None:
        raise _missing_root(name, root, "no annotations/ folder with the official CSVs")
    per_part: dict[str, tuple[list, bool]] = {}
    ann_file: dict[str, str] = {}
    for part, stems in KINETICS_PARTS.items():
        for stem in stems:
            if (ann / f"{stem}.csv").is_file():
                per_part[part] = _kinetics_rows(ann / f"{stem}.csv")
                ann_file[part] = f"annotations/{stem}.csv"
                break
    if "train" not in per_part:
        raise _missing_root(name, root, "no annotations/train.csv")
    classes = sorted({lab for rows, labelled in per_part.values() if labelled for lab, _, _ in rows})
    cidx = {c: i for i, c in enumerate(classes)}
    notes: list[str] = []
    items: list[tuple[str, int, str]] = []
    missing: dict[str, list[str]] = {}
    listed: dict[str, int] = {}
    for part, (rows, labelled) in per_part.items():
        if not labelled:
            notes.append(f"{name}: the {len(rows)} {part} clips of {ann_file[part]} have no labels (held out by the "
                         "release); not indexed")
            continue
        folder = _find(root, *KINETICS_PARTS[part])
        found = _scan_split_folder(name, root, folder, notes) if folder is not None else {}
        if found is None:
            continue    # the split's folder leads outside the root: said in a note, not "missing downloads"
        missing[part], listed[part] = [], len({stem for *_, stem in rows})
        seen = set()
        for label, yid, stem in rows:
            if stem in seen:
                continue
            seen.add(stem)
            rel = found.get(stem) or found.get(yid)   # some downloaders name a clip by its id alone
            if rel is None:
                missing[part].append(f"{part}/{stem}")
            else:
                items.append((rel, cidx[label], part))
    if not items:
        raise _missing_root(name, root, "none of the videos the annotations name (looked for "
                            "<split>/<youtube_id>_<start:06d>_<end:06d>.mp4)")
    items.sort()
    videos = tuple(Video(rel, label, -1) for rel, label, _ in items)
    test_labelled = per_part.get("test", ([], False))[1] and any(p == "test" for *_, p in items)
    splits = _official_splits(len(videos), [p for *_, p in items], test_labelled)
    notes = list(_check_counts(name, len(videos), len(classes))) + _missing_note(name, missing, listed, str(root)) + notes
    lost = sorted(n for names in missing.values() for n in names)
    return DatasetIndex(name, root, tuple(classes), videos, splits, "official", tuple(notes),
                        missing_videos=tuple(lost))


SSV2_VIDEOS = ("20bn-something-something-v2", "videos", "")   # folders holding <id>.webm, tried in order


def _json(path: Path):
    import json

    try:
        return json.loads(_read_text(path, "annotation JSON"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}: not JSON ({e.msg}); allowed: the official annotation file") from None
    except RecursionError:
        raise DatasetError(f"{path}: nested too deeply to be an annotation file; allowed: the official annotation "
                           "file") from None


def load_ssv2(root: Path) -> DatasetIndex:
    """Something-Something v2: `labels.json` (template -> class number) and `train.json`,
    `validation.json`, `test.json` (lists of {id, template, placeholders, label}) in `labels/` or the
    root; videos `<id>.webm` in `20bn-something-something-v2/`, `videos/` or the root. A class is
    its template without the brackets ("Pushing [something] from left to right" is class
    "Pushing something from left to right"). The test set is labelled where `test-answers.csv`
    (`id;class`) is there; otherwise left out with a note."""
    # the Qualcomm download's labels/labels.json, or the 20BN release's something-something-v2-labels.json
    # (in label/, annotations/ or the root, as SlowFast, TSM and MMAction2 lay it out)
    ann, prefix = next(((root / d, pre) for d in ("labels", "label", "annotations", "")
                        for pre in ("", "something-something-v2-") if (root / d / f"{pre}labels.json").is_file()),
                       (None, ""))
    if ann is None:
        raise _missing_root("ssv2", root, "no labels/labels.json (or something-something-v2-labels.json)")
    table = _json(ann / f"{prefix}labels.json")
    allowed = 'allowed: {"<template>": "<class number>", ...} numbered 0, 1, 2, ... (the official labels.json)'
    if not isinstance(table, dict) or not table:
        raise DatasetError(f"{ann / (prefix + 'labels.json')}: not an object of class templates; {allowed}")
    numbers = {}
    for k, v in table.items():
        if isinstance(v, bool) or not (isinstance(v, (str, int)) and str(v).isascii() and str(v).isdigit()):
            raise DatasetError(f"{ann / (prefix + 'labels.json')}: class {k!r} has number {v!r}; {allowed}")
        numbers[k] = int(v)
    if sorted(numbers.values()) != list(range(len(numbers))):
        raise DatasetError(f"{ann / (prefix + 'labels.json')}: the class numbers are not 0..{len(numbers) - 1}, each "
                           f"once; {allowed}")
    classes = tuple(sorted(numbers, key=numbers.get))
    entry = 'allowed: a list of {"id": "<number>", "template": "<class with [something]>", ...}'

    def entries(path: Path, labelled: bool) -> list[tuple[str, int | None]]:
        data = _json(path)
        if not isinstance(data, list):
            raise DatasetError(f"{path}: not a list of videos; {entry}")
        out = []
        for i, e in enumerate(data):
            where = f"{path} entry {i}"
            raw = e.get("id") if isinstance(e, dict) else None
            vid = str(raw) if isinstance(raw, (str, int)) and not isinstance(raw, bool) else ""
            if not CLIP_ID.match(vid):
                raise DatasetError(f"{where}: id {vid!r} is not a video id; {entry}")
            if not labelled:
                out.append((vid, None))
                continue
            template = e.get("template")
            if not isinstance(template, str):
                raise DatasetError(f"{where}: no template; {entry}")
            cls = template.replace("[", "").replace("]", "")
            if cls not in numbers:
                raise DatasetError(f"{where}: template {template!r} is no class of labels.json; {entry}")
            out.append((vid, numbers[cls]))
        return out

    parts: dict[str, list[tuple[str, int | None]]] = {}
    for part, fname in (("train", "train.json"), ("val", "validation.json"), ("test", "test.json")):
        if (ann / f"{prefix}{fname}").is_file():
            parts[part] = entries(ann / f"{prefix}{fname}", part != "test")
    if "train" not in parts:
        raise _missing_root("ssv2", root, "no train.json beside labels.json")
    notes: list[str] = []
    answers = ann / "test-answers.csv"
    if "test" in parts and answers.is_file():
        labels_of = {}
        for where, ln in _list_lines(answers):
            vid, _, cls = ln.partition(";")
            if cls.strip() not in numbers:
                raise DatasetError(f"{where}: {cls.strip()!r} is no class of labels.json; allowed: '<id>;<class>'")
            labels_of[vid.strip()] = numbers[cls.strip()]
        unanswered = [vid for vid, _ in parts["test"] if vid not in labels_of]
        if unanswered:
            notes.append(f"ssv2: {len(unanswered)} test videos have no line in test-answers.csv ("
                         f"{', '.join(unanswered[:MISSING_SHOWN])}); not indexed")
        parts["test"] = [(vid, labels_of.get(vid)) for vid, _ in parts["test"]]
    elif "test" in parts:
        notes.append(f"ssv2: the {len(parts['test'])} test videos of test.json have no labels (no test-answers.csv); "
                     "not indexed")
        del parts["test"]
    folder = next((root / d for d in SSV2_VIDEOS if d and (root / d).is_dir()), root)
    found = _scan_split_folder("ssv2", root, folder, notes)
    if found is None:
        raise _missing_root("ssv2", root, f"the videos' folder {folder.name}/ leads outside the root")
    items, missing, listed = [], {}, {}
    for part, rows in parts.items():
        missing[part], listed[part] = [], len({vid for vid, label in rows if label is not None})
        for vid, label in rows:
            if label is None:
                continue
            rel = found.get(vid)
            if rel is None:
                missing[part].append(vid)
            else:
                items.append((rel, label, part))
    if not items:
        raise _missing_root("ssv2", root, "none of the <id>.webm videos the annotations name")
    items.sort()
    videos = tuple(Video(rel, label, -1) for rel, label, _ in items)
    splits = _official_splits(len(videos), [p for *_, p in items], any(p == "test" for *_, p in items))
    notes = list(_check_counts("ssv2", len(videos), len(classes))) + _missing_note(
        "ssv2", missing, listed, str(folder)) + notes
    lost = sorted(f"{p}/{v}" for p, names in missing.items() for v in names)
    return DatasetIndex("ssv2", root, classes, videos, splits, "official", tuple(notes),
                        missing_videos=tuple(lost))


DATASETS: Registry[Callable[[Path], DatasetIndex]] = Registry("dataset")
DATASETS.add("ucf50", load_ucf50, "UCF50: 50 classes in class folders, 25 groups (_gNN_), leave-one-group-out")
DATASETS.add("ucf101", load_ucf101, "UCF101: 101 classes, the official splits 1-3 (ucfTrainTestlist)")
DATASETS.add("hmdb51", load_hmdb51, "HMDB51: 51 classes, the official splits 1-3 (testTrainMulti_7030_splits)")
DATASETS.add("folder", load_folder, "your own videos: one folder per class (groups from _gNN_ names if any)")
for _k in ("400", "600", "700"):
    DATASETS.add(f"kinetics{_k}", partial(load_kinetics, f"kinetics{_k}"),
                 f"Kinetics-{_k}: the official annotations/*.csv and <split>/<id>_<start>_<end>.mp4 (missing downloads listed)")
DATASETS.add("ssv2", load_ssv2, "Something-Something v2: labels.json, train/validation.json, <id>.webm; views not mirrored")
DATASETS.add("synthetic", load_synthetic, "har's own synthetic set (`har synth`): reversed-order class pairs")


def load(name: str, root: Path | None = None) -> DatasetIndex:
    """The index of dataset `name` under `root` (default: $HAR_HOME/datasets/<name>)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS.names())}")
    root = location.of(root) if root is not None else default_root(name)
    index = DATASETS.get(name)(root.resolve() if root.exists() else root)
    for note in index.notes:  # the CLI prints index.notes itself; library users see them at INFO
        logger.info(note)
    return index
