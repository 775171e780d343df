"""Reading image files into uint8 tensors, lazily per batch or in parallel for the cache.

``decode`` turns any file (JPEG/PNG, grey or RGB, 8 or 16 bit, any size) into a (1, S, S) uint8
tensor, resizing every image the same way, so file size and colour mode stay out of the model
(what a resize mode leaves in is discussed in ``decode`` and the README). ``FileImages``
decodes on access (the per-epoch path), ``decode_all`` every file in parallel for the decode-once
cache (``xray_loss.data.cache``).

A file that cannot be decoded is reported with one clean reason (``ImageDecodeError.reason``),
never a crash: that includes images over PIL's decompression-bomb limit (see ``_read_grey``) and
file names that are not valid UTF-8 (``display_path`` makes them printable).
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

log = logging.getLogger(__name__)

RESIZE_MODES = ("squash", "crop", "pad")


class ImageDecodeError(ValueError):
    """A file that is not a decodable image.

    ``str(err)`` is ``"<path>: <reason>"``, so the error names its file wherever it surfaces;
    callers that print the path themselves use ``reason`` alone, so each path appears once.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{display_path(path)}: {reason}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return type(self), (self.path, self.reason)


def display_path(path: str | os.PathLike) -> str:
    """``path`` as text that any UTF-8 writer accepts (CSV, log file, terminal).

    Python keeps the bytes of a file name that are not valid UTF-8 as lone surrogates
    (``\\udce9``), which ``str.encode`` rejects: a CSV writer or a log handler would stop on
    them. Here they become ``\\xNN`` escapes, so the name stays readable and writing it cannot
    fail; valid names are returned unchanged.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# PIL's "cannot identify image file <_io.BytesIO object at 0x...>": the repr says nothing
_STREAM_REPR = re.compile(r"\s*<_io\.\w+ object at 0x[0-9a-fA-F]+>")
_BOMB_SIZE = re.compile(r"Image size \((\d+) pixels\)")


def clean_reason(reason: str) -> str:
    """A decoder's message without the in-memory stream's repr."""
    return _STREAM_REPR.sub("", reason).strip()


def _bomb_reason(err: Exception) -> str:
    found = _BOMB_SIZE.search(str(err))
    size = f"{int(found.group(1)):,} pixels" if found else "the image"
    return (
        f"{size} is over PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
        f"(PIL.Image.MAX_IMAGE_PIXELS), so it was not decoded; downscale a genuine image first"
    )


def _read_grey(path: Path, data: bytes | None = None) -> torch.Tensor:
    """Decode any 8/16-bit grey, RGB, palette or CMYK image to one uint8 channel (1, H, W).

    Decompression bombs: PIL raises ``DecompressionBombError`` above twice
    ``Image.MAX_IMAGE_PIXELS`` (about 179 Mpx by default) and only warns between the limit and
    twice it. Here the warning range is a bad file too: one limit, named with the file, instead
    of a silent decode of a 90-180 Mpx picture (hundreds of MB per decoding worker) that no chest
    radiograph needs (Kermany's originals are under 10 Mpx). A genuine larger image can be
    downscaled first, or ``PIL.Image.MAX_IMAGE_PIXELS`` raised by code that imports this module.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(path.read_bytes() if data is None else data)) as pil:
                pil.load()
                if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
                    array = np.asarray(pil, dtype=np.float64)
                    top = 65535.0 if array.max() > 255 else 255.0
                    array = np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8)
                else:
                    array = np.asarray(pil.convert("L"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(path, _bomb_reason(err)) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ImageDecodeError(path, clean_reason(reason) or type(err).__name__) from None
    return torch.from_numpy(array.copy()).unsqueeze(0)


def decode(
    path: Path, image_size: int, resize: str = "squash", data: bytes | None = None
) -> torch.Tensor:
    """One file -> uint8 tensor (1, image_size, image_size).

    ``squash`` resizes the whole image to a square (as the common 224 px copies do): a class
    whose originals are wider than the other's is distorted differently. ``crop`` takes the
    central square first (as MedMNIST does; the anatomy keeps its proportions, the sides are
    lost). ``pad`` letterboxes to a square with black bars (proportions and content kept; the
    bars' size still tells the aspect ratio). Antialiased in every mode.
    """
    image = _read_grey(Path(path), data)
    height, width = image.shape[-2:]
    if resize == "crop":
        side = min(height, width)
        image = TF.center_crop(image, [side, side])
    elif resize == "pad":
        side = max(height, width)
        left, top = (side - width) // 2, (side - height) // 2
        image = TF.pad(image, [left, top, side - width - left, side - height - top], fill=0)
    return TF.resize(image, [image_size, image_size], antialias=True)


class _DecodeDataset(Dataset):
    """Decodes one file per item; reports failures instead of raising (to list them all).

    A failure is reported as its reason alone (no path): the caller names the file.
    """

    def __init__(self, files: Sequence[Path], image_size: int, resize: str) -> None:
        self.files, self.image_size, self.resize = list(files), image_size, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = Path(self.files[i])
        try:
            data = path.read_bytes()
        except OSError as err:
            return i, None, err.strerror or str(err), None
        digest = hashlib.sha1(data).hexdigest()
        try:
            return i, decode(path, self.image_size, self.resize, data), None, digest
        except ImageDecodeError as err:
            return i, None, err.reason, digest
        except OSError as err:
            return i, None, err.strerror or str(err), digest


def _collate(items):
    return items


def worker_start_method(num_workers: int) -> str | None:
    """How DataLoader workers start: the platform's default, except in a job of joblib's
    launcher (hydra/launcher=joblib), whose loky processes make ``loky`` the default, which
    torch's workers cannot start with; there Linux's own ``fork`` (workers touch no CUDA)."""
    if num_workers > 0 and multiprocessing.get_start_method(allow_none=True) == "loky":
        return "fork"
    return None


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
        multiprocessing_context=worker_start_method(num_workers),
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
