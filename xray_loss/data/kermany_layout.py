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

import torch

from xray_loss.data.images import display_path
from xray_loss.data.splits import DataError, Split

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


def labeled_images(folder: Path) -> list[tuple[Path, int]]:
    """(path, label) of every image under ``folder``'s class sub-folders, in a stable order
    (hidden files, ``__MACOSX/`` and other extensions ignored). A folder or image beside the
    class folders (``train/COVID/``) is refused: leaving it out silently changes the data."""
    stray = [
        child
        for child in (sorted(folder.iterdir()) if folder.is_dir() else [])
        if not child.name.startswith(".")
        and child.name != "__MACOSX"
        and (child.is_dir() or child.suffix.lower() in EXTENSIONS)
        and child.name.lower() not in CLASSES
    ]
    if stray:
        raise DataError(
            f"{display_path(stray[0])} is not a class folder: xray_loss reads only "
            f"{folder}/NORMAL/ and {folder}/PNEUMONIA/ (two classes); move "
            f"{'it' if len(stray) == 1 else f'it and {len(stray) - 1} more'} out of {folder}."
            f"\n{LAYOUT}"
        )
    found = []
    for class_name, label in CLASSES.items():
        class_dir = _child(folder, class_name)
        for path in sorted(class_dir.rglob("*")) if class_dir is not None else []:
            rel = path.relative_to(class_dir)
            if (
                path.is_file()
                and path.suffix.lower() in EXTENSIONS
                and not any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)
            ):
                found.append((path, label))
    return found


def scan(root: Path) -> list[ImageFile]:
    """Every image under the split/class folders, in a stable order."""
    files: list[ImageFile] = []
    for folder in ("train", "val", "test"):
        split_dir = _child(root, folder)
        for path, label in labeled_images(split_dir) if split_dir is not None else []:
            stem = display_path(path.relative_to(split_dir).with_suffix(""))
            pid = patient_id(path.name) or f"file:{stem.split('/', 1)[-1]}"
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


def label_conflicts(files: list[ImageFile], hashes: list[str | None]) -> str | None:
    """Why the data cannot be trained on when one image's exact contents carry both labels
    (the same file in NORMAL/ and PNEUMONIA/): which label is right is the user's call."""
    first: dict[str, ImageFile] = {}
    pairs = []
    for image, digest in zip(files, hashes, strict=True):
        if digest is None:
            continue
        seen = first.setdefault(digest, image)
        if seen.label != image.label:
            pairs.append((seen.path, image.path))
    if not pairs:
        return None
    shown = "; ".join(f"{display_path(a)} = {display_path(b)}" for a, b in pairs[:3])
    more = f"; and {len(pairs) - 3} more" if len(pairs) > 3 else ""
    return (
        f"{len(pairs)} image(s) sit in both NORMAL/ and PNEUMONIA/ with identical contents, a "
        f"label conflict ({shown}{more}): delete the copy whose label is wrong, or both."
    )


def read_labeled_folder(folder: Path, image_size: int, resize: str) -> Split:
    """A labeled sample outside the training layout (``FOLDER/{NORMAL,PNEUMONIA}/*``), decoded
    like the training images: e.g. a site's own images to choose a threshold on."""
    from xray_loss.data.images import ImageDecodeError, decode

    files = labeled_images(folder)
    labels = {label for _, label in files}
    if len(labels) < 2:
        raise DataError(
            f"{folder} must hold NORMAL/ and PNEUMONIA/ sub-folders with images of both classes "
            f"(found {len(files)} image(s) of {len(labels)} class(es)): a threshold is chosen "
            f"between the two."
        )
    images, bad = [], []
    for path, _ in files:
        try:
            images.append(decode(path, image_size, resize))
        except (ImageDecodeError, OSError) as err:
            bad.append(f"  {display_path(path)}: {getattr(err, 'reason', err)}")
    if bad:
        listing = "\n".join(bad)
        raise DataError(f"{len(bad)} image file(s) of {folder} could not be read:\n{listing}")
    names = [display_path(path.relative_to(folder)) for path, _ in files]
    return Split(
        torch.stack(images),
        torch.tensor([label for _, label in files], dtype=torch.int64),
        files=names,
        # a name without a known pattern is a patient of its own: the bootstrap draws patients
        patients=[
            patient_id(path.name) or name for (path, _), name in zip(files, names, strict=True)
        ],
    )
