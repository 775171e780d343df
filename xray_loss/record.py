"""``metrics.json``: the machine-readable record of one run, written atomically.

It is created with ``status: running`` when a run starts and rewritten when it ends
(``completed``, ``diverged``, ``failed`` or ``pruned``), so sweep bookkeeping, resumption and
reports can trust whatever they read, even while runs are going.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STATUSES = ("running", "completed", "diverged", "failed", "pruned")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path`` (a metrics.json or its run directory), or None if absent/corrupt."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """The metrics.json of one run directory."""

    def __init__(self, run_dir: Path, write: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.json"
        self.data: dict[str, Any] = read_record(self.path) or {}
        self.write = write  # False on DDP ranks other than 0: they keep the data, write nothing

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        if self.write:
            write_json_atomic(self.path, self.data)

    def start(self, **fields: Any) -> None:
        self.data = {"status": "running", "started": now_iso(), **fields}
        if self.write:
            write_json_atomic(self.path, self.data)

    def finish(self, status: str, **fields: Any) -> None:
        assert status in STATUSES, status
        self.update(status=status, finished=now_iso(), **fields)
