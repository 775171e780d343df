"""Reading image files into uint8 tensors, lazily per batch or once into a cache.

``decode`` turns any file (JPEG/PNG, grey or RGB, 8 or 16 bit, any size) into a
(1, S, S) uint8 tensor, resizing every image the same way so that file size, aspect ratio and
colour mode cannot leak the class. ``FileImages`` decodes on access (the per-epoch path),
``cached_images`` decodes each file once into a ``.npy`` store that later runs memory-map.

The store's name is a hash of the file list (paths, sizes, mtimes), the image size and the
resize mode: a changed, added or removed file gives a new key. It is written to a temp file and
renamed into place, so a killed build never leaves a half-written store behind under a real name.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

log = logging.getLogger(__name__)

RESIZE_MODES = ("squash", "crop")
_CACHE_VERSION = 1


class ImageDecodeError(ValueError):
    pass


def _read_grey(path: Path, data: bytes | None = None) -> torch.Tensor:
    """Decode any 8/16-bit grey, RGB, palette or CMYK image to one uint8 channel (1, H, W)."""
    try:
        with Image.open(io.BytesIO(path.read_bytes() if data is None else data)) as pil:
            pil.load()
            if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(pil, dtype=np.float64)
                top = 65535.0 if array.max() > 255 else 255.0
                array = np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8)
            else:
                array = np.asarray(pil.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise ImageDecodeError(f"{path}: {err}") from None
    return torch.from_numpy(array.copy()).unsqueeze(0)


def decode(
    path: Path, image_size: int, resize: str = "squash", data: bytes | None = None
) -> torch.Tensor:
    """One file -> uint8 tensor (1, image_size, image_size).

    ``squash`` resizes the whole image to a square (as the common 224 px copies do);
    ``crop`` takes the central square first (as MedMNIST does). Antialiased either way.
    """
    image = _read_grey(Path(path), data)
    if resize == "crop":
        side = min(image.shape[-2:])
        image = TF.center_crop(image, [side, side])
    return TF.resize(image, [image_size, image_size], antialias=True)


class _DecodeDataset(Dataset):
    """Decodes one file per item; reports failures instead of raising (to list them all)."""

    def __init__(self, files: Sequence[Path], image_size: int, resize: str) -> None:
        self.files, self.image_size, self.resize = list(files), image_size, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = Path(self.files[i])
        try:
            data = path.read_bytes()
        except OSError as err:
            return i, None, str(err), None
        digest = hashlib.sha1(data).hexdigest()
        try:
            return i, decode(path, self.image_size, self.resize, data), None, digest
        except (ImageDecodeError, OSError) as err:
            return i, None, str(err), digest


def _collate(items):
    return items


def decode_all(
    files: Sequence[Path],
    image_size: int,
    resize: str,
    num_workers: int,
    out: np.ndarray | None = None,
) -> tuple[list[tuple[Path, str]], list[str | None]]:
    """Decode every file (into ``out`` (N, 1, S, S) if given), in parallel.

    Returns the files that failed with their errors, and the SHA-1 of every file's contents
    (to find exact duplicates without reading the files again).
    """
    loader = DataLoader(
        _DecodeDataset(files, image_size, resize),
        batch_size=32,
        num_workers=num_workers,
        collate_fn=_collate,
        generator=torch.Generator(),  # a private seed for the workers: the global RNG untouched
    )
    bad: list[tuple[Path, str]] = []
    hashes: list[str | None] = [None] * len(files)
    for batch in loader:
        for i, image, error, digest in batch:
            hashes[i] = digest
            if error is not None:
                bad.append((Path(files[i]), error))
            if out is not None:
                out[i] = 0 if image is None else image.numpy()
    return bad, hashes


def cache_key(files: Sequence[Path], image_size: int, resize: str) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION}|{image_size}|{resize}|1ch".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _remove_stale_temps(cache_dir: Path, max_age_s: float = 6 * 3600) -> None:
    """Temp files of killed builds: removed once their writer is surely gone."""
    for tmp in cache_dir.glob(".*.tmp*"):
        try:
            pid = int(tmp.name.rsplit(".tmp", 1)[1])
            os.kill(pid, 0)
            alive = True
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive or time.time() - tmp.stat().st_mtime > max_age_s:
            tmp.unlink(missing_ok=True)


def cached_images(
    files: Sequence[Path],
    image_size: int,
    resize: str,
    cache_dir: Path,
    num_workers: int = 2,
    prefix: str = "images",
) -> tuple[np.ndarray, list[tuple[Path, str]], list[str | None]]:
    """uint8 array (N, 1, S, S) of ``files``, memory-mapped from the cache (built if missing).

    Returns the array, the files that could not be decoded (their rows are zero) and the
    content hash of every file.
    """
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(files, image_size, resize)
    store, meta_path = cache_dir / f"{prefix}-{key}.npy", cache_dir / f"{prefix}-{key}.json"
    if store.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        array = np.load(store, mmap_mode="r")
        if array.shape == (len(files), 1, image_size, image_size):
            log.info("image cache hit: %s (%d images)", store, len(files))
            return array, [(Path(p), e) for p, e in meta["bad"]], meta["hashes"]
    _remove_stale_temps(cache_dir)
    started = time.time()
    log.info("decoding %d images once into the cache %s ...", len(files), store)
    tmp_store = cache_dir / f".{store.name}.tmp{os.getpid()}"
    try:
        out = np.lib.format.open_memmap(
            tmp_store, mode="w+", dtype=np.uint8, shape=(len(files), 1, image_size, image_size)
        )
        bad, hashes = decode_all(files, image_size, resize, num_workers, out)
        out.flush()
        del out
        tmp_meta = cache_dir / f".{meta_path.name}.tmp{os.getpid()}"
        tmp_meta.write_text(
            json.dumps(
                {
                    "files": len(files),
                    "image_size": image_size,
                    "resize": resize,
                    "bad": [[str(p), e] for p, e in bad],
                    "hashes": hashes,
                    "seconds": round(time.time() - started, 2),
                }
            )
        )
        os.replace(tmp_meta, meta_path)  # the meta first: a store never exists without it
        os.replace(tmp_store, store)
    finally:
        tmp_store.unlink(missing_ok=True)
    log.info("cache built in %.1f s", time.time() - started)
    return np.load(store, mmap_mode="r"), bad, hashes


class ArrayImages:
    """A split's rows of a (memory-mapped) uint8 array; indexing returns a uint8 tensor batch.

    Reads only the rows asked for, so every job of a sweep shares one cached store through the
    page cache instead of holding its own copy.
    """

    def __init__(self, array: np.ndarray, positions: Sequence[int]) -> None:
        self.array = array
        self.positions = np.asarray(sorted(positions), dtype=np.int64)
        self.shape = (len(self.positions), *array.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        rows = self.positions[torch.as_tensor(index).reshape(-1).cpu().numpy()]
        return torch.from_numpy(np.ascontiguousarray(self.array[rows]))

    def to(self, device) -> torch.Tensor:
        """All rows as one tensor on ``device`` (for data kept on the GPU)."""
        return torch.from_numpy(np.ascontiguousarray(self.array[self.positions])).to(device)


class FileImages:
    """Images decoded from their files at every access (``data.cache=false``).

    Indexing with a tensor of positions returns a uint8 batch, like indexing a tensor.
    """

    def __init__(self, files: Sequence[Path], image_size: int, resize: str) -> None:
        self.files = list(files)
        self.image_size = image_size
        self.resize = resize
        self.shape = (len(self.files), 1, image_size, image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index) -> torch.Tensor:
        positions = torch.as_tensor(index).reshape(-1).tolist()
        return torch.stack([decode(self.files[i], self.image_size, self.resize) for i in positions])

    def to(self, device) -> torch.Tensor:
        return self[torch.arange(len(self))].to(device)
