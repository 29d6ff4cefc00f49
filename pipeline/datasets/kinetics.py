"""Kinetics-400/600/700: the official annotation CSVs name the clips; downloads miss some, which
are counted, named and left out (the store's array `missing_videos`), never fatal.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from pipeline.datasets.index import DatasetError, DatasetIndex, Video, check_counts, missing_note, missing_root
from pipeline.datasets.scan import CLIP_ID, find_folder, read_text, scan_split_folder
from pipeline.datasets.splits import official_splits

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

    reader = csv.DictReader(io.StringIO(read_text(path, "annotation CSV"), newline=""))
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
    ann = find_folder(root, "annotations")
    if ann is None:
        raise missing_root(name, root, "no annotations/ folder with the official CSVs")
    per_part: dict[str, tuple[list, bool]] = {}
    ann_file: dict[str, str] = {}
    for part, stems in KINETICS_PARTS.items():
        for stem in stems:
            if (ann / f"{stem}.csv").is_file():
                per_part[part] = _kinetics_rows(ann / f"{stem}.csv")
                ann_file[part] = f"annotations/{stem}.csv"
                break
    if "train" not in per_part:
        raise missing_root(name, root, "no annotations/train.csv")
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
        folder = find_folder(root, *KINETICS_PARTS[part])
        found = scan_split_folder(name, root, folder, notes) if folder is not None else {}
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
        raise missing_root(name, root, "none of the videos the annotations name (looked for "
                           "<split>/<youtube_id>_<start:06d>_<end:06d>.mp4)")
    items.sort()
    videos = tuple(Video(rel, label, -1) for rel, label, _ in items)
    test_labelled = per_part.get("test", ([], False))[1] and any(p == "test" for *_, p in items)
    splits = official_splits(len(videos), [p for *_, p in items], test_labelled)
    notes = list(check_counts(name, len(videos), len(classes))) + missing_note(name, missing, listed, str(root)) + notes
    lost = sorted(n for names in missing.values() for n in names)
    return DatasetIndex(name, root, tuple(classes), videos, splits, "official", tuple(notes),
                        missing_videos=tuple(lost))
