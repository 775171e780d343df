"""Grouped, stratified splits and folds on synthetic patient lists."""

from __future__ import annotations

import random
from collections import Counter

from xray_loss.data.splits import connected_groups, grouped_folds, grouped_split


def _dataset(seed=0):
    rng = random.Random(seed)
    patients, labels = [], []
    for p in range(300):
        label = int(p % 4 != 0)  # 75% pneumonia patients
        for _ in range(rng.randint(1, 6)):
            patients.append(f"p{p}")
            labels.append(label)
    return patients, labels


def test_connected_groups_merge_patients_and_duplicates():
    patients = ["a", "a", "b", "c", "d"]
    hashes = ["h1", "h2", "h2", "h3", "h4"]  # b's image duplicates one of a's
    groups = connected_groups(patients, hashes)
    assert groups[0] == groups[1] == groups[2]
    assert len(set(groups)) == 3


def test_grouped_split_keeps_patients_whole_and_stratifies():
    patients, labels = _dataset()
    groups = connected_groups(patients)
    names = grouped_split(labels, groups, {"val": 0.1, "test": 0.15}, seed=0)
    where = {}
    for p, s in zip(patients, names, strict=True):
        where.setdefault(p, set()).add(s)
    assert all(len(s) == 1 for s in where.values())
    counts = Counter(names)
    n = len(names)
    assert abs(counts["val"] / n - 0.1) < 0.02 and abs(counts["test"] / n - 0.15) < 0.02
    for split in ("train", "val", "test"):
        frac = sum(lab for lab, s in zip(labels, names, strict=True) if s == split) / counts[split]
        assert abs(frac - sum(labels) / n) < 0.05
    assert names == grouped_split(labels, groups, {"val": 0.1, "test": 0.15}, seed=0)
    assert names != grouped_split(labels, groups, {"val": 0.1, "test": 0.15}, seed=1)


def test_grouped_folds_cover_everything_once_and_balance():
    patients, labels = _dataset(1)
    groups = connected_groups(patients)
    folds = grouped_folds(labels, groups, k=5, seed=0)
    sizes = Counter(folds)
    assert set(sizes) == set(range(5))
    assert max(sizes.values()) - min(sizes.values()) <= 8
    fold_of = {}
    for p, f in zip(patients, folds, strict=True):
        fold_of.setdefault(p, set()).add(f)
    assert all(len(f) == 1 for f in fold_of.values())
