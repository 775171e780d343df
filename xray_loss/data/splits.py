"""Patient-grouped, class-stratified splits and folds.

Several images can belong to one child, and a few files are exact duplicates of each other.
Images are first merged into groups (same patient, or same file contents, transitively), and
whole groups are assigned to splits, so neither a patient nor a duplicated image ever sits on
both sides of a split. Within each class the groups are shuffled with a fixed seed and dealt to
splits until each reaches its share of that class's images, so every split keeps the class ratio.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence


def connected_groups(*keys: Sequence[str]) -> list[int]:
    """Group index per item: items sharing any key value (patient, content hash) are merged."""
    n = len(keys[0])
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column in keys:
        first: dict[str, int] = {}
        for i, value in enumerate(column):
            if value is None:
                continue
            if value in first:
                a, b = find(i), find(first[value])
                if a != b:
                    parent[a] = b
            else:
                first[value] = i
    roots: dict[int, int] = {}
    return [roots.setdefault(find(i), len(roots)) for i in range(n)]


def _groups_by_class(labels: Sequence[int], groups: Sequence[int], seed: int):
    """{class: [(group, n_images)]} in seeded random order; a group takes its majority class."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_class: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for g in sorted(members):
        label = Counter(labels[i] for i in members[g]).most_common(1)[0][0]
        by_class[label].append((g, len(members[g])))
    rng = random.Random(seed)
    for label in sorted(by_class):
        rng.shuffle(by_class[label])
    return by_class


def grouped_split(
    labels: Sequence[int],
    groups: Sequence[int],
    fractions: dict[str, float],
    seed: int = 0,
    rest: str = "train",
) -> list[str]:
    """Split name per item: each of ``fractions`` gets about that share of every class.

    Items not dealt to a named fraction go to ``rest``. Deterministic for a given seed.
    """
    by_class = _groups_by_class(labels, groups, seed)
    assignment: dict[int, str] = {}
    for items in by_class.values():
        total = sum(n for _, n in items)
        targets = {name: frac * total for name, frac in fractions.items() if frac > 0}
        filled = dict.fromkeys(targets, 0)
        for group, n in items:
            open_splits = [s for s in targets if filled[s] + n / 2 <= targets[s]]
            if open_splits:
                name = open_splits[0]
                filled[name] += n
                assignment[group] = name
            else:
                assignment[group] = rest
    return [assignment[g] for g in groups]


def grouped_folds(labels: Sequence[int], groups: Sequence[int], k: int, seed: int = 0) -> list[int]:
    """Fold index (0..k-1) per item, balanced per class; a group never spans two folds."""
    if k < 2:
        raise ValueError(f"data.folds must be >= 2, got {k}.")
    by_class = _groups_by_class(labels, groups, seed)
    assignment: dict[int, int] = {}
    for items in by_class.values():
        counts = [0] * k
        # largest groups first keeps folds even; ties broken by the seeded order
        for group, n in sorted(items, key=lambda item: -item[1]):
            fold = min(range(k), key=lambda f: counts[f])
            counts[fold] += n
            assignment[group] = fold
    return [assignment[g] for g in groups]
