"""The Kermany chest_xray folder (Kaggle / Mendeley layout) as a datamodule.

    ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg

Validation is carved out of ``train/`` by default (the official ``val/`` holds 16 images),
grouped by patient and stratified by class; ``test/`` is the official test split unless
``test_fraction`` carves one the same way. Exact duplicate files are kept on one side of every
carved split, and a file of train/ whose contents equal a file of test/ (or of the official val/
in use) is dropped. The split is written to ``split.csv`` in the run directory (with a note on
every dropped file) so it can be audited; names that are not valid UTF-8 are written with
``\\xNN`` escapes (``display_path``), as they are in every message and in test_predictions.csv.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import torch

from xray_loss.data.base import DataError, Split, XrayDataModule
from xray_loss.data.cache import cached_images
from xray_loss.data.images import RESIZE_MODES, ArrayImages, FileImages, decode_all, display_path
from xray_loss.data.kermany_layout import (
    LAYOUT,
    ImageFile,
    check_classes,
    cross_split_duplicates,
    find_root,
    label_conflicts,
    scan,
)
from xray_loss.data.splits import connected_groups, grouped_folds, grouped_split

log = logging.getLogger(__name__)


class KermanyDataModule(XrayDataModule):
    """Kermany's chest_xray folder; see the module docstring for the splits.

    Args:
        root: the chest_xray folder (or a folder above it).
        image_size: side of the square images fed to the model (every image is resized alike).
        resize: ``squash`` (whole image to a square), ``crop`` (central square first) or
            ``pad`` (letterbox to a square); see ``xray_loss.data.images.decode``.
        val_fraction: share of train/ carved out as validation (patients kept together).
        val_source: ``carve`` (default) or ``folder`` (the official val/).
        test_fraction: > 0 carves a test split out of train/ too (needed without test/).
        folds, fold: K-fold cross-validation over the non-test images: fold ``fold`` is the
            validation split (grouped and stratified like the carve-out).
        split_seed: seed of the split; fixed by default so that seeds vary training only.
        cache, cache_dir: decode each image once into a uint8 store and memory-map it.
        skip_bad_files: skip unreadable images with a warning instead of failing at setup.
        split_csv: where to write the audit CSV of the split (file, label, patient, split, note,
            sha1 of the file): the split manifest a results page keeps.
    """

    name = "kermany"
    layout_hint = LAYOUT

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
        self._root: Path | None = None
        self._skipped: dict[str, int] = {}  # unreadable files skipped, per split folder

    def describe_split(self, name: str) -> str:
        """Where split ``name`` came from: its folder, or the folder it was carved out of."""
        root = self._root or self.root
        folder = {
            "train": "train",
            "val": "val" if self.val_source == "folder" and self.folds is None else "train",
            "test": "test" if self.test_fraction == 0 else "train",
        }[name]
        origin = f"{root}/{folder}/" if folder == name else f"carved out of {root}/{folder}/"
        count = self._skipped.get(folder, 0)
        skipped = (
            f", after skipping {count} unreadable file(s) there with data.skip_bad_files=true: "
            f"repairing them may restore the class"
            if count
            else ""
        )
        return f"The {name} split ({origin}{skipped})"

    def load_splits(self) -> dict[str, Split]:
        root = self._root = find_root(self.root)
        files = scan(root)
        if not files:
            raise DataError(f"data.root={root} holds no .jpeg/.jpg/.png images.\n{LAYOUT}")
        check_classes(files, "train", root, required=True)
        if self.test_fraction == 0:
            if not any(f.folder == "test" for f in files):
                raise DataError(
                    f"{root} has no test/ folder. Carve a test split out of train/ with "
                    f"data.test_fraction=0.15 (patient-grouped), or add test/.\n{LAYOUT}"
                )
            check_classes(files, "test", root, required=True)
        has_val = any(f.folder == "val" for f in files)
        # val/ chooses the threshold (threshold.source folder, or auto when it is there)
        self._val_calibrates = self.calibration in ("folder", "auto") and has_val
        if self.val_source == "folder" or self._val_calibrates:
            check_classes(files, "val", root, required=True)
        # only the folders this configuration uses
        used = {"train"} | ({"test"} if self.test_fraction == 0 else set())
        used |= {"val"} if self.val_source == "folder" or self._val_calibrates else set()
        files = [f for f in files if f.folder in used]

        images, files, hashes = self._images(files)
        if conflict := label_conflicts(files, hashes):
            raise DataError(conflict)
        dropped = cross_split_duplicates(files, hashes)
        assignment = self._assign(files, hashes, dropped)
        notes = {
            i: f"dropped: same contents as {display_path(files[j].path.relative_to(root))}"
            for i, j in dropped.items()
        }
        self._write_split_csv(root, files, hashes, assignment, notes)
        splits = {}
        for name in ("train", "val", "test", "calibration"):
            positions = [i for i, s in enumerate(assignment) if s == name]
            if not positions and name == "calibration":
                continue
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
                files=[display_path(files[i].path.relative_to(root)) for i in positions],
                patients=[files[i].patient for i in positions],
                hashes=[hashes[i] for i in positions],
            )
        return splits

    def folder_calibration(self) -> Split | None:
        """The official ``val/`` folder (set aside in load_splits); None without one."""
        if self.val_source == "folder":
            return self.splits["val"]
        return None

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
            listing = "\n".join(f"  {display_path(p)}: {e}" for p, e in bad)
            if not self.skip_bad_files:
                raise DataError(
                    f"{len(bad)} image file(s) could not be read:\n{listing}\n"
                    f"Fix or remove them, or set data.skip_bad_files=true to skip them."
                )
            for p, e in bad:
                log.warning("skipping unreadable image %s (%s)", display_path(p), e)
        bad_paths = {Path(p) for p, _ in bad}
        keep = [i for i, f in enumerate(files) if f.path not in bad_paths]
        self._skipped = dict(Counter(f.folder for f in files if f.path in bad_paths))
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
        # the official val/ is the val split (val_source=folder) or the threshold's sample
        val_folder = "val" if self.val_source == "folder" else "calibration"
        assignment = [
            "dropped" if i in dropped else (val_folder if f.folder == "val" else f.folder)
            for i, f in enumerate(files)
        ]
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
        self,
        root: Path,
        files: list[ImageFile],
        hashes: list[str | None],
        assignment: list[str],
        notes: dict[int, str],
    ) -> None:
        if not self.split_csv:
            return
        path = Path(self.split_csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "label", "patient", "split", "note", "sha1"])
            for i, (image, split) in enumerate(zip(files, assignment, strict=True)):
                writer.writerow(
                    [
                        display_path(image.path.relative_to(root)),
                        "PNEUMONIA" if image.label else "NORMAL",
                        image.patient,
                        split,
                        notes.get(i, ""),
                        hashes[i] or "",
                    ]
                )
        log.info("split written to %s", path)
