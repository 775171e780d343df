"""Which checkpoint a run continues from, and how a run that will go on later stops.

Used by ``xray_loss.runtime.record.recorded_run`` (``resume=true``, a requeued SLURM job) and
``xray_loss.runtime.checkpointing.ResumeCheckpoint`` (mid-epoch checkpoints, preemption). What
makes the continuation exact is in the checkpoints themselves: the data order
(``xray_loss.data.order``), the RNG states and running metrics (``runtime.checkpointing``).
"""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class Preempted(SystemExit):
    """The run stopped to go on later: a checkpoint of this very step is saved (and under SLURM
    the job is requeued, see ``xray_loss.runtime.checkpointing.ResumeCheckpoint``). Its record stays
    ``running``, so the next attempt or ``resume=true`` continues it; the process exits with the
    message and no traceback."""


# what a run can be resumed from, in its directory: the end of the last epoch (ModelCheckpoint's
# last.ckpt), a mid-epoch or preemption checkpoint (ResumeCheckpoint), Lightning's own SLURM
# checkpoints (hpc_ckpt_N.ckpt, written if its handler ran)
RESUMABLE = ("checkpoints/last.ckpt", "checkpoints/resume.ckpt", "hpc_ckpt_*.ckpt")


def _intact(path: Path) -> bool:
    """A checkpoint torch can open (its zip directory is there): not cut short by a kill."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of ``run_dir`` to resume from, or None."""
    found = [p for pattern in RESUMABLE for p in Path(run_dir).glob(pattern) if p.is_file()]
    for path in sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        if _intact(path):
            return path
    return None


def drop_lost_checkpoints(start: Path) -> None:
    """Remove the checkpoints written after ``start`` by the attempt that was cut short.

    Resuming from ``start`` replays those steps exactly and writes them again; left in place,
    ModelCheckpoint would name the new ones ``best-epochNNN-v1.ckpt``.
    """
    limit = start.stat().st_mtime_ns
    for path in start.parent.parent.glob("checkpoints/*.ckpt"):
        if path != start and path.stat().st_mtime_ns > limit:
            path.unlink(missing_ok=True)


def attempt_history(previous: dict[str, Any], checkpoint: Path) -> tuple[dict[str, Any], float]:
    """How the attempt a resume continues ended, and the wall time of all attempts so far. A
    killed attempt (SIGKILL, out of memory) noted nothing: its time is counted up to the
    checkpoint it left, the last sign of it."""
    saved = checkpoint.stat().st_mtime
    interrupted = previous.get("interrupted") or {
        "reason": "killed without notice (SIGKILL, out of memory, a lost node): nothing noted",
        "last_checkpoint_at": datetime.fromtimestamp(saved, UTC).isoformat(timespec="seconds"),
    }
    if "wall_time_s" in previous:
        return interrupted, float(previous["wall_time_s"])
    try:
        began = datetime.fromisoformat(previous["attempt_started"]).timestamp()
        return interrupted, float(previous.get("wall_time_before_s", 0.0)) + max(0.0, saved - began)
    except (KeyError, ValueError, TypeError):
        return interrupted, float(previous.get("wall_time_before_s", 0.0))
