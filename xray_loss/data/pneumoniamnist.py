"""MedMNIST v2 PneumoniaMNIST from its npz file, with the official train/val/test splits.

The npz is read with numpy directly: ``medmnist``'s dataset class asserts the official sample
counts (so it rejects subsets) and creates ``~/.medmnist`` on import. The package is used only
to download, when ``data.download=true`` and the machine is online.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from xray_loss.data.base import DataError, Split, XrayDataModule

log = logging.getLogger(__name__)

SIZES = (28, 64, 128, 224)
KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")
ZENODO = "https://zenodo.org/records/10519652/files/{file}?download=1"


def npz_name(size: int) -> str:
    """``pneumoniamnist.npz`` for 28 px, ``pneumoniamnist_{size}.npz`` otherwise."""
    return "pneumoniamnist.npz" if size == 28 else f"pneumoniamnist_{size}.npz"


def read_npz(path: Path, size: int) -> dict[str, Split]:
    """The three official splits from a PneumoniaMNIST npz, checked for keys and shapes."""
    try:
        return _read_npz(path, size)
    except (OSError, ValueError, EOFError) as err:
        if isinstance(err, DataError):
            raise
        # numpy's own message may advise allow_pickle=True: pickled objects are never loaded
        reason = "it holds pickled objects" if "pickle" in str(err) else type(err).__name__
        raise DataError(
            f"{path} is not a valid PneumoniaMNIST npz file ({reason}): expected a MedMNIST v2 "
            f"npz of uint8 arrays ({', '.join(KEYS)}); download it again."
        ) from None


def _read_npz(path: Path, size: int) -> dict[str, Split]:
    data = np.load(path, allow_pickle=False)
    with data:
        missing = [k for k in KEYS if k not in data.files]
        if missing:
            raise DataError(
                f"{path} lacks the keys {missing}: found {sorted(data.files)}, expected "
                f"{list(KEYS)} (MedMNIST v2 format)."
            )
        splits = {}
        for name in ("train", "val", "test"):
            images, labels = data[f"{name}_images"], data[f"{name}_labels"]
            if images.ndim != 3 or images.shape[1:] != (size, size) or images.dtype != np.uint8:
                raise DataError(
                    f"{path}: {name}_images has shape {images.shape} and dtype {images.dtype}; "
                    f"expected uint8 (N, {size}, {size}) for data.size={size}."
                )
            labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
            if (
                labels.ndim != 1
                or len(labels) != len(images)
                or not set(np.unique(labels).tolist()) <= {0, 1}
            ):
                raise DataError(
                    f"{path}: {name}_labels has shape {data[f'{name}_labels'].shape} with values "
                    f"{np.unique(labels)[:5].tolist()}; expected (N, 1) of 0/1 with "
                    f"N = {len(images)} (the number of {name}_images)."
                )
            splits[name] = Split(
                torch.from_numpy(images.copy()).unsqueeze(1),
                torch.from_numpy(labels.astype(np.int64)),
            )
    return splits


def drop_cross_split_duplicates(splits: dict[str, Split]) -> dict[str, int]:
    """Drop images of a lower split (train < val < test) identical to an image of a higher one;
    returns the count dropped per split and logs it."""
    seen: set[bytes] = set()
    dropped = {}
    for name in ("test", "val", "train"):
        split = splits[name]
        digests = [hashlib.sha1(image.numpy().tobytes()).digest() for image in split.images]
        keep = torch.tensor([d not in seen for d in digests], dtype=torch.bool)
        dropped[name] = int((~keep).sum())
        if dropped[name]:
            splits[name] = Split(split.images[keep], split.labels[keep])
        seen.update(digests)
    if any(dropped.values()):
        log.warning(
            "dropped images identical to an image of a higher split (test > val > train): %s",
            ", ".join(f"{n} {c}" for n, c in dropped.items() if c),
        )
    return dropped


def download(path: Path, size: int, url: str) -> None:
    """Fetch the npz (with ``medmnist`` if installed, else straight from Zenodo)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            from medmnist import PneumoniaMNIST

            PneumoniaMNIST(split="train", download=True, root=str(path.parent), size=size)
        except ImportError:
            tmp = path.with_suffix(".part")
            urllib.request.urlretrieve(url, tmp)
            tmp.replace(path)
    except Exception as err:  # offline, DNS, HTTP errors: all mean "get it by hand"
        message = _missing_message(path, size, url, f"The download failed ({err}). ")
        raise DataError(message) from None
    if not path.exists():
        raise DataError(_missing_message(path, size, url, "The download left no file. "))


def _missing_message(path: Path, size: int, url: str, prefix: str = "") -> str:
    return (
        f"{prefix}PneumoniaMNIST file {path.name} not found in {path.parent}. Download "
        f"{url} (Zenodo record 10519652, MedMNIST v2) on a machine with internet access and "
        f"place it at {path}, or run with data.download=true when online."
    )


class PneumoniaMNISTDataModule(XrayDataModule):
    """PneumoniaMNIST at ``size`` (28/64/128/224 px) from ``root``; official splits.

    ``image_size`` (default: ``size``) resizes the images once at setup if different.
    """

    name = "pneumoniamnist"
    layout_hint = (
        "Expected: MedMNIST v2's PneumoniaMNIST npz (Zenodo record 10519652), whose official "
        "train, val and test splits each hold both labels (0 = normal, 1 = pneumonia)."
    )

    def __init__(
        self,
        root: str | None = None,
        size: int = 28,
        image_size: int | None = None,
        download: bool = False,
        url: str = ZENODO,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if int(size) not in SIZES:
            raise DataError(f"data.size={size} is not a PneumoniaMNIST size; valid: {SIZES}.")
        self.root = root
        self.size = int(size)
        self.image_size = int(image_size or size)
        self.download = bool(download)
        self.url = url
        self._path: Path | None = None

    def describe_split(self, name: str) -> str:
        """The split with the npz file and keys it was read from."""
        if self._path is None:
            return super().describe_split(name)
        return f"The {name} split of {self._path} ({name}_images/{name}_labels)"

    def load_splits(self) -> dict[str, Split]:
        if self.root in (None, ""):
            raise DataError(
                f"data.root is not set: point it at the folder holding {npz_name(self.size)}."
            )
        path = Path(self.root).expanduser() / npz_name(self.size)
        url = self.url.format(file=path.name)
        if not path.exists():
            if not self.download:
                raise DataError(_missing_message(path, self.size, url))
            download(path, self.size, url)
        self._path = path
        splits = read_npz(path, self.size)
        drop_cross_split_duplicates(splits)
        log.warning(
            "PneumoniaMNIST's official val split is an image-level split of Kermany's train/: "
            "a child's images can sit in train and val, so val AUROC, checkpoint selection and a "
            "val-chosen threshold are optimistic. The npz carries no patient ids to group by."
        )
        if self.image_size != self.size:
            for split in splits.values():
                split.images = TF.resize(split.images, [self.image_size] * 2, antialias=True)
        return splits
