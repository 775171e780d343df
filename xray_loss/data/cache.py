"""The decode-once image cache: every file decoded once into a uint8 ``.npy`` store that later
runs, and every job of a sweep, memory-map.

The store's name is a hash of the file list (paths, sizes, mtimes), the image size and the
resize mode: a changed, added or removed file gives a new key. It is written to a temp file and
renamed into place (``xray_loss.atomic.atomic_path``), so a killed build never leaves a
half-written store behind under a real name; its blocks are reserved before a pixel is written,
so a full disk is one sentence naming the directory and the bytes needed, never a ``Bus error``.
A content digest of the images, taken when the store is built, is checked whenever it is
opened: a store damaged afterwards (truncated, overwritten in place, unreadable metadata) is
named in a warning and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xray_loss.atomic import atomic_path
from xray_loss.data.images import clean_reason, decode_all
from xray_loss.data.splits import DataError

log = logging.getLogger(__name__)

_CACHE_VERSION = 2  # 2: the meta holds the images' digest
_CHUNK = 1 << 24


def digest(store: Path) -> str:
    """SHA-1 of the store's bytes (about a second per GB): what it held when it was built."""
    h = hashlib.sha1()
    with open(store, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def cache_key(files: Sequence[Path], image_size: int, resize: str) -> str:
    """Hash of the file list (paths, sizes, mtimes), the image size and the resize mode.

    Paths are hashed as the file system's bytes (``os.fsencode``): a name that is not valid
    UTF-8 hashes fine, and every other name gives the same key as its UTF-8 text always did.
    """
    h = hashlib.sha256(f"v{_CACHE_VERSION}|{image_size}|{resize}|1ch".encode())
    for f in files:
        st = os.stat(f)
        h.update(os.fsencode(os.path.abspath(f)) + f"|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _remove_stale_temps(cache_dir: Path, max_age_s: float = 6 * 3600) -> None:
    """Temp files of killed builds (``.<name>.<pid>.<random>.tmp``, see atomic_path): removed
    once their writer is surely gone."""
    for tmp in cache_dir.glob(".*.tmp"):
        try:
            pid = int(tmp.name.split(".")[-3])
            os.kill(pid, 0)
            alive = True
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive or time.time() - tmp.stat().st_mtime > max_age_s:
            tmp.unlink(missing_ok=True)


def _load_store(
    store: Path, meta_path: Path, n: int, image_size: int
) -> tuple[np.ndarray, list[tuple[Path, str]], list[str | None]] | None:
    """The cached array, bad files and hashes, or None if there is no usable store.

    A store damaged after it was written (a truncated copy, a full disk, an edited .json) is
    named in a warning and None is returned, so the caller rebuilds it: the .json must hold one
    hash per file, and the .npy exactly ``n`` images of ``image_size`` (checked against the file
    size before it is memory-mapped).
    """
    if not (store.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        bad = [(Path(p), _cached_reason(p, e)) for p, e in meta["bad"]]
        hashes = list(meta["hashes"])
        if meta["files"] != n or len(hashes) != n or meta["image_size"] != image_size:
            raise ValueError(
                f"it describes {meta['files']} images of {meta['image_size']} px with "
                f"{len(hashes)} hashes, expected {n} of {image_size} px"
            )
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("image cache file %s is damaged (%s); rebuilding the store", meta_path, err)
        return None
    shape = (n, 1, image_size, image_size)
    try:
        problem = _npy_problem(store, shape)
        if problem:
            raise ValueError(problem)
        if meta.get("digest") != digest(store):
            raise ValueError("its contents changed since it was built (digest mismatch)")
        array = np.load(store, mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:
        log.warning("image cache file %s is damaged (%s); rebuilding it", store, err)
        return None
    return array, bad, hashes


def _npy_problem(store: Path, shape: tuple[int, ...]) -> str | None:
    """What is wrong with the .npy at ``store`` for uint8 images of ``shape``, read from its
    header and size alone (memory-mapping a short file fails with a message naming nothing)."""
    with open(store, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            found, _, dtype = read_header(f)
        except ValueError:
            return "not a .npy file, or its header is cut off"
        offset, size = f.tell(), os.fstat(f.fileno()).st_size
    expected = offset + math.prod(shape)
    if found != shape or dtype != np.uint8:
        return f"it holds {dtype} {found}, expected uint8 {shape}"
    if size != expected:
        return f"{size:,} bytes long, expected {expected:,}: truncated or overwritten"
    return None


def _cached_reason(path: str, reason: str) -> str:
    """A failure reason as stored by an older build (which prefixed the path): without it."""
    return clean_reason(reason.removeprefix(f"{path}: "))


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
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(cache_dir, os.W_OK) or os.statvfs(cache_dir).f_flag & os.ST_RDONLY:
            raise PermissionError(f"{cache_dir} is read-only")
    except OSError as err:
        raise DataError(
            f"The image cache directory {cache_dir} cannot be written ({err.strerror or err}): "
            f"point XRAY_LOSS_CACHE at a writable folder, or set data.cache=false (every image "
            f"decoded at each access: slower)."
        ) from None
    key = cache_key(files, image_size, resize)
    store, meta_path = cache_dir / f"{prefix}-{key}.npy", cache_dir / f"{prefix}-{key}.json"
    found = _load_store(store, meta_path, len(files), image_size)
    if found is not None:
        log.info("image cache hit: %s (%d images)", store, len(files))
        return found
    _remove_stale_temps(cache_dir)
    started = time.time()
    shape = (len(files), 1, image_size, image_size)
    need = math.prod(shape) + 4096  # the images and the .npy header
    free = shutil.disk_usage(cache_dir).free
    if free < need:
        raise DataError(_no_room(cache_dir, need, free))
    log.info("decoding %d images once into the cache %s ...", len(files), store)
    # the inner block ends first: the meta is in place before the store, never the reverse
    with atomic_path(store) as tmp_store, atomic_path(meta_path) as tmp_meta:
        out = np.lib.format.open_memmap(tmp_store, mode="w+", dtype=np.uint8, shape=shape)
        try:  # reserve the blocks: a full disk fails here, not as SIGBUS in the middle
            with open(tmp_store, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as err:
            del out
            raise DataError(_no_room(cache_dir, need, shutil.disk_usage(cache_dir).free)) from err
        bad, hashes = decode_all(files, image_size, resize, num_workers, out)
        out.flush()
        del out
        meta = {
            "files": len(files),
            "image_size": image_size,
            "resize": resize,
            "bad": [[str(p), e] for p, e in bad],
            "hashes": hashes,
            "digest": digest(tmp_store),
            "seconds": round(time.time() - started, 2),
        }
        tmp_meta.write_text(json.dumps(meta))
    log.info("cache built in %.1f s", time.time() - started)
    return np.load(store, mmap_mode="r"), bad, hashes


def _no_room(cache_dir: Path, need: int, free: int) -> str:
    return (
        f"Not enough free space for the image cache in {cache_dir}: it needs {need / 1e6:,.1f} MB, "
        f"{free / 1e6:,.1f} MB are free. Free some space there, point XRAY_LOSS_CACHE at a disk "
        f"with room, or set data.cache=false (every image decoded at each access: slower)."
    )
