"""The Kermany chest_xray folder (Kaggle / Mendeley layout) as a datamodule.

    ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg

Validation is carved out of ``train/`` by default (the official ``val/`` holds 16 images),
grouped by patient and stratified by class; ``test/`` is the official test split unless
``test_fraction`` carves one the same way. Exact duplicate files are kept on one side of every
carved split, and a file of train/ whose contents equal a file of test/ (or of the official val/
in use) is dropped. The split is written to ``split.csv`` in the run directory (with a note on
every dropped file) so it can be audited.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from xray_loss.data.base import DataError, Split, XrayDataModule
from xray_loss.data.images import RESIZE_MODES, ArrayImages, FileImages, cached_images, decode_all
from xray_loss.data.splits import connected_groups, grouped_folds, grouped_split

log = logging.getLogger(__name__)

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
                    pid = patient_id(path.name) or f"file:{rel.with_suffix('')}"
                    # ids are per split folder (the official test split is numbered on its own)
                    files.append(ImageFile(path, label, folder, f"{folder}/{pid}"))
    return files


def _check_classes(files: list[ImageFile], folder: str, root: Path, required: bool) -> None:
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


class KermanyDataModule(XrayDataModule):
    """Kermany's chest_xray folder; see the module docstring for the splits.

    Args:
        root: the chest_xray folder (or a folder above it).
        image_size: side of the square images fed to the model (every image is resized alike).
        resize: ``squash`` (whole image to a square) or ``crop`` (central square first).
        val_fraction: share of train/ carved out as validation (patients kept together).
        val_source: ``carve`` (default) or ``folder`` (the official val/).
        test_fraction: > 0 carves a test split out of train/ too (needed without test/).
        folds, fold: K-fold cross-validation over the non-test images: fold ``fold`` is the
            validation split (grouped and stratified like the carve-out).
        split_seed: seed of the split; fixed by default so that seeds vary training only.
        cache, cache_dir: decode each image once into a uint8 store and memory-map it.
        skip_bad_files: skip unreadable images with a warning instead of failing at setup.
        split_csv: where to write the audit CSV of the split (file, label, patient, split).
    """

    name = "kermany"

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 224,
        resize: str = "squash",
        val_fraction: float = 0.1,
        val_source: str = "carve",
        test_fraction: float = 0.0,
        folds: int | None = None,
        fold: int | None = None,
        split_seed: int = 0,
        cache: bool = True,
        cache_dir: str = "~/.cache/xray_loss",
        skip_bad_files: bool = False,
        split_csv: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if resize not in RESIZE_MODES:
            raise DataError(f"data.resize={resize!r} is not valid; valid: {list(RESIZE_MODES)}.")
        if val_source not in ("carve", "folder"):
            raise DataError(f"data.val_source={val_source!r} is not valid; valid: carve, folder.")
        if folds is not None and (fold is None or not 0 <= int(fold) < int(folds)):
            raise DataError(
                f"data.fold must be in 0..{int(folds) - 1} with data.folds={folds}, got {fold}."
            )
        self.root = root
        self.image_size = int(image_size)
        self.resize = resize
        self.val_fraction = float(val_fraction)
        self.val_source = val_source
        self.test_fraction = float(test_fraction or 0.0)
        self.folds = None if folds is None else int(folds)
        self.fold = None if fold is None else int(fold)
        self.split_seed = int(split_seed)
        self.cache = bool(cache)
        self.cache_dir = cache_dir
        self.skip_bad_files = bool(skip_bad_files)
        self.split_csv = split_csv
        self.report: dict = {}

    def load_splits(self) -> dict[str, Split]:
        root = find_root(self.root)
        files = scan(root)
        if not files:
            raise DataError(f"data.root={root} holds no .jpeg/.jpg/.png images.\n{LAYOUT}")
        _check_classes(files, "train", root, required=True)
        if self.test_fraction == 0:
            if not any(f.folder == "test" for f in files):
                raise DataError(
                    f"{root} has no test/ folder. Carve a test split out of train/ with "
                    f"data.test_fraction=0.15 (patient-grouped), or add test/.\n{LAYOUT}"
                )
            _check_classes(files, "test", root, required=True)
        if self.val_source == "folder":
            _check_classes(files, "val", root, required=True)
        # only the folders this configuration uses
        used = {"train"} | ({"test"} if self.test_fraction == 0 else set())
        used |= {"val"} if self.val_source == "folder" else set()
        files = [f for f in files if f.folder in used]

        images, files, hashes = self._images(files)
        dropped = cross_split_duplicates(files, hashes)
        assignment = self._assign(files, hashes, dropped)
        notes = {
            i: f"dropped: same contents as {files[j].path.relative_to(root).as_posix()}"
            for i, j in dropped.items()
        }
        self._write_split_csv(root, files, assignment, notes)
        splits = {}
        for name in ("train", "val", "test"):
            positions = [i for i, s in enumerate(assignment) if s == name]
            if not positions:
                raise DataError(f"the {name} split is empty: use more data or a larger fraction.")
            labels = torch.tensor([files[i].label for i in positions], dtype=torch.int64)
            if isinstance(images, FileImages):
                split_images = FileImages(
                    [files[i].path for i in positions], self.image_size, self.resize
                )
            else:
                split_images = ArrayImages(images, positions)
            splits[name] = Split(
                split_images,
                labels,
                files=[files[i].path.relative_to(root).as_posix() for i in positions],
                patients=[files[i].patient for i in positions],
            )
        return splits

    def _images(self, files: list[ImageFile]):
        """Decode (or map from the cache) every file; deal with unreadable ones."""
        paths = [f.path for f in files]
        if self.cache:
            array, bad, hashes = cached_images(
                paths,
                self.image_size,
                self.resize,
                self.cache_dir,
                num_workers=max(self.num_workers, 1),
                prefix="kermany",
            )
        else:  # no store: check every file once at setup, then decode at every access
            bad, hashes = decode_all(paths, self.image_size, self.resize, self.num_workers)
            array = None
        if bad:
            listing = "\n".join(f"  {p}: {e}" for p, e in bad)
            if not self.skip_bad_files:
                raise DataError(
                    f"{len(bad)} image file(s) could not be read:\n{listing}\n"
                    f"Fix or remove them, or set data.skip_bad_files=true to skip them."
                )
            for p, e in bad:
                log.warning("skipping unreadable image %s (%s)", p, e)
        bad_paths = {Path(p) for p, _ in bad}
        keep = [i for i, f in enumerate(files) if f.path not in bad_paths]
        kept_files = [files[i] for i in keep]
        kept_hashes = [hashes[i] for i in keep]
        if array is None:
            images = FileImages([f.path for f in kept_files], self.image_size, self.resize)
        else:
            images = array[keep] if len(keep) < len(files) else array
        return images, kept_files, kept_hashes

    def _assign(
        self, files: list[ImageFile], hashes: list[str], dropped: dict[int, int]
    ) -> list[str]:
        """Split name per file (``dropped`` for copies of a fixed split's files): grouped by
        patient and by identical contents, stratified."""
        groups = connected_groups([f.patient for f in files], hashes)
        n_dupes = len(hashes) - len(set(hashes))
        labels = [f.label for f in files]
        assignment = ["dropped" if i in dropped else f.folder for i, f in enumerate(files)]
        pool = [i for i, f in enumerate(files) if assignment[i] == "train"]

        def sub(values, idx):
            return [values[i] for i in idx]

        if self.test_fraction > 0:
            carved = grouped_split(
                sub(labels, pool),
                sub(groups, pool),
                {"test": self.test_fraction},
                seed=self.split_seed,
            )
            for i, name in zip(pool, carved, strict=True):
                assignment[i] = name
            pool = [i for i in pool if assignment[i] == "train"]
        if self.folds is not None:
            folds = grouped_folds(
                sub(labels, pool), sub(groups, pool), self.folds, seed=self.split_seed
            )
            for i, fold in zip(pool, folds, strict=True):
                assignment[i] = "val" if fold == self.fold else "train"
        elif self.val_source == "carve":
            # the carve-out takes val_fraction of all of train/, before any test carve
            share = self.val_fraction / max(1e-9, 1.0 - self.test_fraction)
            carved = grouped_split(
                sub(labels, pool), sub(groups, pool), {"val": share}, seed=self.split_seed + 1
            )
            for i, name in zip(pool, carved, strict=True):
                assignment[i] = name
        self.report = {
            "images": len(files),
            "patients": len({f.patient for f in files}),
            "duplicate_files": n_dupes,
            "dropped_cross_split_duplicates": len(dropped),
            "groups": len(set(groups)),
        }
        log.info(
            "found %d images of %d patients; %d exact duplicate file(s), kept together",
            len(files),
            self.report["patients"],
            n_dupes,
        )
        if dropped:
            log.warning(
                "dropped %d file(s) of a lower split whose contents equal a file of %s "
                "(a copy of an evaluation image must not be trained on); listed in split.csv",
                len(dropped),
                " or ".join(sorted({files[j].folder + "/" for j in dropped.values()})),
            )
        return assignment

    def _write_split_csv(
        self, root: Path, files: list[ImageFile], assignment: list[str], notes: dict[int, str]
    ) -> None:
        if not self.split_csv:
            return
        path = Path(self.split_csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "label", "patient", "split", "note"])
            for i, (image, split) in enumerate(zip(files, assignment, strict=True)):
                writer.writerow(
                    [
                        image.path.relative_to(root).as_posix(),
                        "PNEUMONIA" if image.label else "NORMAL",
                        image.patient,
                        split,
                        notes.get(i, ""),
                    ]
                )
        log.info("split written to %s", path)
