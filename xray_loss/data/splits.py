"""A split (images, labels and what names them), and patient-grouped, class-stratified splits
and folds.

Several images can belong to one child, and a few files are exact duplicates of each other.
Images are first merged into groups (same patient, or same file contents, transitively), and
whole groups are assigned to splits, so neither a patient nor a duplicated image ever sits on
both sides of a split. Within each class the groups are shuffled with a fixed seed and dealt to
splits until each reaches its share of that class's images, so every split keeps the class ratio.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from xray_loss.errors import UserError


class DataError(UserError, ValueError):
    """Bad data or data options; the message says what was found and what is expected."""


@dataclass
class Split:
    """One split: uint8 images (N, 1, S, S) and int64 labels (N,), 1 = pneumonia.

    ``images`` is a tensor, or an object indexed like one (``ArrayImages`` over the cache,
    ``FileImages`` decoding per access) that also has ``shape`` and ``to(device)``.
    ``files`` and ``patients`` name each image where the source knows them (test predictions
    carry them, and the report's bootstrap resamples patients rather than images); ``hashes``
    are the files' content digests where the source read them (else :meth:`identity` digests
    the decoded images).
    """

    images: Any
    labels: torch.Tensor
    files: list[str] | None = None
    patients: list[str] | None = None
    hashes: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=2).tolist()

    def identity(self) -> dict[str, list]:
        """What the split holds, image by image: name (the file, else its position), label and
        content digest. A checkpoint stores it, so eval can test on exactly these images."""
        hashes = self.hashes
        if hashes is None:
            hashes = [
                hashlib.sha1(self.images[i].cpu().contiguous().numpy().tobytes()).hexdigest()
                for i in range(len(self))
            ]
        names = self.files if self.files is not None else [str(i) for i in range(len(self))]
        return {"files": list(names), "labels": self.labels.tolist(), "hashes": list(hashes)}


KEYS = ("files", "hashes", "labels")


def split_difference(recorded: dict[str, list], found: dict[str, list]) -> str:
    """How two ``Split.identity`` records differ, in words ('' when they hold the same images,
    in the same order, with the same labels)."""
    if recorded == found:
        return ""
    old = {f: (h, y) for f, h, y in zip(*(recorded[k] for k in KEYS), strict=True)}
    new = {f: (h, y) for f, h, y in zip(*(found[k] for k in KEYS), strict=True)}

    def listing(names: list[str]) -> str:
        shown = ", ".join(names[:5])
        return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    parts = []
    for what, names in (
        ("missing", [f for f in old if f not in new]),
        ("new", [f for f in new if f not in old]),
        ("with other contents", [f for f in old if f in new and new[f][0] != old[f][0]]),
        ("with another label", [f for f in old if f in new and new[f][1] != old[f][1]]),
    ):
        if names:
            parts.append(f"{len(names)} image(s) {what} ({listing(names)})")
    if not parts:
        parts.append("the same images in another order")
    return "; ".join(parts)


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
