"""The Kermany chest_xray folder on disk: finding it, listing its images, naming patients.

    ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg     (or a nested ROOT/chest_xray/...)

File names carry the patient (``personNNN_{bacteria,virus}_MMM``, ``IM-PPPP-SSSS[-K]``,
``NORMAL2-IM-PPPP-SSSS``, Mendeley v3 ``{NORMAL,BACTERIA,VIRUS}-ID-N``); ids are per split
folder, since the official test split was numbered on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from xray_loss.data.base import DataError
from xray_loss.data.images import display_path

CLASSES = {"normal": 0, "pneumonia": 1}
EXTENSIONS = {".jpeg", ".jpg", ".png"}
LAYOUT = """Expected layout (class folder names are case-insensitive):
    ROOT/
      train/NORMAL/*.jpeg     train/PNEUMONIA/*.jpeg
      test/NORMAL/*.jpeg      test/PNEUMONIA/*.jpeg    (or carve one: data.test_fraction=0.15)
      val/NORMAL/*.jpeg       val/PNEUMONIA/*.jpeg     (optional; used with data.val_source=folder)
A nested download (ROOT/chest_xray/train/...) is found too."""

_PATIENT_PATTERNS = [
    (re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+", re.I), "{0}"),
    (re.compile(r"^NORMAL2-IM-(\d+)-\d+", re.I), "NORMAL2-IM-{0}"),
    (re.compile(r"^IM-(\d+)-\d+", re.I), "IM-{0}"),
    (re.compile(r"^(?:NORMAL|BACTERIA|VIRUS)-(\d+)-\d+", re.I), "v3-{0}"),  # Mendeley v3
]


def patient_id(filename: str) -> str | None:
    """The patient a Kermany file name belongs to, or None if the name has no known pattern."""
    stem = Path(filename).stem
    for pattern, template in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return template.format(match.group(1))
    return None


@dataclass
class ImageFile:
    path: Path
    label: int
    folder: str  # train / val / test
    patient: str


def _child(parent: Path, name: str) -> Path | None:
    """The sub-folder of ``parent`` called ``name``, ignoring case."""
    for child in sorted(parent.iterdir()) if parent.is_dir() else []:
        if child.is_dir() and child.name.lower() == name:
            return child
    return None


def find_root(root: str | Path | None) -> Path:
    """The folder holding ``train/`` (accepting the nested chest_xray/chest_xray download)."""
    if root in (None, "", "???"):
        raise DataError(f"data.root is not set: point it at the chest_xray folder.\n{LAYOUT}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={root} does not exist or is not a folder.\n{LAYOUT}")
    candidates = [root] + sorted(
        p
        for p in root.rglob("*")
        if p.is_dir() and "__MACOSX" not in p.parts and len(p.relative_to(root).parts) <= 2
    )
    for candidate in candidates:
        if _child(candidate, "train") is not None:
            return candidate
    raise DataError(f"data.root={root} has no train/ folder.\n{LAYOUT}")


def scan(root: Path) -> list[ImageFile]:
    """Every image under the split/class folders, in a stable order."""
    files: list[ImageFile] = []
    for folder in ("train", "val", "test"):
        split_dir = _child(root, folder)
        if split_dir is None:
            continue
        for class_name, label in CLASSES.items():
            class_dir = _child(split_dir, class_name)
            if class_dir is None:
                continue
            for path in sorted(class_dir.rglob("*")):
                rel = path.relative_to(class_dir)
                if (
                    path.is_file()
                    and path.suffix.lower() in EXTENSIONS
                    and not any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)
                ):
                    pid = patient_id(path.name) or f"file:{display_path(rel.with_suffix(''))}"
                    # ids are per split folder (the official test split is numbered on its own)
                    files.append(ImageFile(path, label, folder, f"{folder}/{pid}"))
    return files


def check_classes(files: list[ImageFile], folder: str, root: Path, required: bool) -> None:
    labels = {f.label for f in files if f.folder == folder}
    if not labels and not required:
        return
    if not labels:
        raise DataError(f"{root}/{folder}/ is missing or holds no images.\n{LAYOUT}")
    if len(labels) < 2:
        have = [k for k, v in CLASSES.items() if v in labels]
        missing = [k.upper() for k, v in CLASSES.items() if v not in labels]
        raise DataError(
            f"{root}/{folder}/ holds only {have[0].upper()} images: the class folder(s) "
            f"{missing} are missing or empty, and a split needs both classes.\n{LAYOUT}"
        )


# a fixed split outranks the ones below it: a copy of a test image leaves val and train
_PRECEDENCE = {"test": 0, "val": 1, "train": 2}


def cross_split_duplicates(files: list[ImageFile], hashes: list[str | None]) -> dict[int, int]:
    """{file index: index of the file it copies} for files whose exact contents also sit in a
    higher split folder (test/ over val/ over train/): those copies are dropped, since Kermany's
    folders hold exact duplicates across train and test."""
    owner: dict[str, int] = {}
    for i in sorted(range(len(files)), key=lambda i: _PRECEDENCE[files[i].folder]):
        if hashes[i] is not None:
            owner.setdefault(hashes[i], i)
    return {
        i: owner[h]
        for i, h in enumerate(hashes)
        if h is not None and files[owner[h]].folder != files[i].folder
    }
