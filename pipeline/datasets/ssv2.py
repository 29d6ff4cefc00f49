"""Something-Something v2: labels.json and the train/validation/test JSON lists name the videos
(`<id>.webm`); a class is its template without the brackets. Views are not mirrored: its labels
say left and right.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.index import (MISSING_SHOWN, DatasetError, DatasetIndex, Video, check_counts, missing_note,
                                     missing_root)
from pipeline.datasets.scan import CLIP_ID, list_lines, read_text, scan_split_folder
from pipeline.datasets.splits import official_splits

SSV2_VIDEOS = ("20bn-something-something-v2", "videos", "")   # folders holding <id>.webm, tried in order


def _json(path: Path):
    import json

    try:
        return json.loads(read_text(path, "annotation JSON"))
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
        raise missing_root("ssv2", root, "no labels/labels.json (or something-something-v2-labels.json)")
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
        raise missing_root("ssv2", root, "no train.json beside labels.json")
    notes: list[str] = []
    answers = ann / "test-answers.csv"
    if "test" in parts and answers.is_file():
        labels_of = {}
        for where, ln in list_lines(answers):
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
    found = scan_split_folder("ssv2", root, folder, notes)
    if found is None:
        raise missing_root("ssv2", root, f"the videos' folder {folder.name}/ leads outside the root")
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
        raise missing_root("ssv2", root, "none of the <id>.webm videos the annotations name")
    items.sort()
    videos = tuple(Video(rel, label, -1) for rel, label, _ in items)
    splits = official_splits(len(videos), [p for *_, p in items], any(p == "test" for *_, p in items))
    notes = list(check_counts("ssv2", len(videos), len(classes))) + missing_note(
        "ssv2", missing, listed, str(folder)) + notes
    lost = sorted(f"{p}/{v}" for p, names in missing.items() for v in names)
    return DatasetIndex("ssv2", root, classes, videos, splits, "official", tuple(notes),
                        missing_videos=tuple(lost))
