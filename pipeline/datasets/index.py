"""A dataset's index (`DatasetIndex`: its classes, videos and split arrays), the error every adapter
raises, the manifest of known datasets (data_manifest.yaml: source, layout, expected counts), and
the notes adapters make from it: counts against the official release, missing downloads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

# package data: in the source tree a link to the top-level data_manifest.yaml, in a wheel a copy of it
MANIFEST_PATH = Path(__file__).resolve().parent / "data_manifest.yaml"
MISSING_SHOWN = 5   # missing downloads named in the note; all are in the store


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


def missing_root(name: str, root: Path, why: str) -> DatasetError:
    entry = manifest()["datasets"].get(name, {})
    src = f" Download: {entry['source']}." if entry.get("source") else ""
    return DatasetError(f"{name}: {why} at {root}.{src} Expected layout: {entry.get('layout', '?')}")


def check_counts(name: str, n_videos: int, n_classes: int) -> tuple[str, ...]:
    entry = manifest()["datasets"].get(name, {})
    notes = []
    if entry.get("videos") and entry["videos"] != n_videos:
        notes.append(f"{name}: found {n_videos} videos, the official release has {entry['videos']}")
    if entry.get("classes") and entry["classes"] != n_classes:
        notes.append(f"{name}: found {n_classes} classes, the official release has {entry['classes']}")
    return tuple(notes)


def missing_note(name: str, missing: dict[str, list[str]], listed: dict[str, int], where: str) -> list[str]:
    """One note per split with missing downloads: how many of how many, and the first few."""
    notes = []
    for split, names in missing.items():
        if names:
            shown = ", ".join(names[:MISSING_SHOWN]) + (", ..." if len(names) > MISSING_SHOWN else "")
            notes.append(f"{name}: {len(names)} of {listed[split]} {split} videos listed in the annotations are not "
                         f"under {where} ({len(names) / max(1, listed[split]):.1%}, missing downloads; not indexed, "
                         f"all listed in the store's array missing_videos): {shown}")
    return notes
