"""Atomic file writes, the one way every part of xray_loss writes a file that others read: a
temp file beside the target, renamed over it when complete. Data and runtime both use it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; renamed over ``path`` when the block succeeds,
    removed when it fails. Readers see the old file or the new one, never half of one.

    The temp file is an ordinary file (mode 0666 minus the umask, like every other output).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON to ``path`` through :func:`atomic_path` (an ordinary 0644 file under umask 022)."""
    with atomic_path(path) as tmp, open(tmp, "x") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
