"""The dataset adapters, in one registry (`DATASETS`): a dataset's name -> the function that reads a
root folder in its official layout into a `DatasetIndex` (classes, video records, split arrays);
`load` finds the root and calls it.

    ucf50, ucf101                 pipeline.datasets.ucf       class folders; the official split files
    hmdb51                        pipeline.datasets.hmdb      the official split files
    folder                        pipeline.datasets.folder    your own videos, one folder per class
    kinetics400, 600, 700         pipeline.datasets.kinetics  the official annotation CSVs
    ssv2                          pipeline.datasets.ssv2      labels.json and the JSON lists
    synthetic                     pipeline.datasets.synth     har synth's folder

What they share is beside them: the index, its error and the manifest (`index`), the split
arrays (`splits`), reading a root without leaving it (`scan`). The names callers use are here
too, so `from pipeline.datasets import datasets` gives every one of them.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pipeline.core import location
from pipeline.core.registry import Registry
from pipeline.datasets import folder, hmdb, kinetics, ssv2, synth, ucf
from pipeline.datasets.index import DatasetError, DatasetIndex, Video, default_root, manifest
from pipeline.datasets.scan import OutsideRoot, safe_rel
from pipeline.datasets.splits import TEST, TRAIN, UNUSED, VAL, group_split, leakage, logo_splits, stratified_split
from pipeline.datasets.synth import store_facts

__all__ = ["DATASETS", "load", "DatasetError", "OutsideRoot", "DatasetIndex", "Video", "manifest", "safe_rel",
           "TRAIN", "VAL", "TEST", "UNUSED", "group_split", "stratified_split", "leakage", "logo_splits",
           "store_facts"]

logger = logging.getLogger(__name__)

DATASETS: Registry[Callable[[Path], DatasetIndex]] = Registry("dataset")
DATASETS.add("ucf50", ucf.load_ucf50, "UCF50: 50 classes in class folders, 25 groups (_gNN_), leave-one-group-out")
DATASETS.add("ucf101", ucf.load_ucf101, "UCF101: 101 classes, the official splits 1-3 (ucfTrainTestlist)")
DATASETS.add("hmdb51", hmdb.load_hmdb51, "HMDB51: 51 classes, the official splits 1-3 (testTrainMulti_7030_splits)")
DATASETS.add("folder", folder.load_folder, "your own videos: one folder per class (groups from _gNN_ names if any)")
for _k in ("400", "600", "700"):
    DATASETS.add(f"kinetics{_k}", partial(kinetics.load_kinetics, f"kinetics{_k}"),
                 f"Kinetics-{_k}: the official annotations/*.csv and <split>/<id>_<start>_<end>.mp4 (missing downloads listed)")
DATASETS.add("ssv2", ssv2.load_ssv2, "Something-Something v2: labels.json, train/validation.json, <id>.webm; views not mirrored")
DATASETS.add("synthetic", synth.load_synthetic, "har's own synthetic set (`har synth`): reversed-order class pairs")


def load(name: str, root: Path | None = None) -> DatasetIndex:
    """The index of dataset `name` under `root` (default: $HAR_HOME/datasets/<name>)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS.names())}")
    root = location.of(root) if root is not None else default_root(name)
    index = DATASETS.get(name)(root.resolve() if root.exists() else root)
    for note in index.notes:  # the CLI prints index.notes itself; library users see them at INFO
        logger.info(note)
    return index
