"""Split arrays: pure functions of labels, groups and the parts a release names.

A split array holds 0 train, 1 val, 2 test, -1 unused, one int8 per video, as the store keeps it
(`split/<name>`).
"""
from __future__ import annotations

import numpy as np

from pipeline.core.lineage import seed_for

TRAIN, VAL, TEST, UNUSED = 0, 1, 2, -1
FRACTIONS = (0.75, 0.10, 0.15)  # train, val, test


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


def official_splits(n: int, part: list[str], test_labelled: bool) -> dict[str, np.ndarray]:
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
