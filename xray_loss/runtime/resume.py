"""Which checkpoint a run continues from, and how a run that will go on later stops.

Used by ``xray_loss.runtime.record.recorded_run`` (``resume=true``, a requeued SLURM job) and
``xray_loss.runtime.checkpointing.ResumeCheckpoint`` (mid-epoch checkpoints, preemption). What
makes the continuation exact is in the checkpoints themselves: the data order
(``xray_loss.data.order``), the RNG states and running metrics (``runtime.checkpointing``).
"""

from __future__ import annotations

import json
import os
import signal
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class Preempted(SystemExit):
    """The run stopped to go on later: a checkpoint of this very step is saved (and under SLURM
    the job is requeued, see ``xray_loss.runtime.checkpointing.ResumeCheckpoint``). Its record stays
    ``running``, so the next attempt or ``resume=true`` continues it; the process exits with the
    message and no traceback."""


class Terminated(SystemExit):
    """SIGTERM where Lightning's own handler is not installed (between a sweep's jobs, while a
    run sets up its data or builds the decode cache), or Ctrl-C between a sweep's jobs: raised
    where the signal lands, so that temp files are removed on the way out and the run is
    recorded ``interrupted`` (exit 128 + the signal's number: 143, 130)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


_recording: list[Path] = []  # the run recorded now (``recording``): a SIGTERM there is its own


@contextmanager
def recording(run_dir: Path) -> Iterator[None]:
    """While a run is recorded, SIGTERM ends it (recorded, then reported by the entry point)."""
    _recording.append(Path(run_dir))
    try:
        yield
    finally:
        _recording.pop()


def stop_on_signals(report: Callable[[str], None]) -> Callable[[], None]:
    """Make SIGTERM stop this command as Ctrl-C does, not kill it where it stands, and Ctrl-C
    between a sweep's jobs end as cleanly as inside one. In a run, SIGTERM raises
    ``Terminated`` and Ctrl-C ``KeyboardInterrupt`` (``record.recorded_run`` records either);
    outside one, ``report(signal name)`` says how to continue, then ``Terminated``. Inside
    ``fit``, ``validate`` and ``test`` Lightning's SIGTERM handler, which calls this one, stops
    at the next step: this one leaves it to it. Returns what puts the previous handlers back."""
    pid = os.getpid()

    def on_signal(signum: int, frame: Any) -> None:
        if os.getpid() != pid:  # a forked worker (DataLoader, decoding): ends as by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if signal.getsignal(signum) is not on_signal:
            return  # Lightning's handler called this one: it raises at the next step
        if signum == signal.SIGINT and _recording:
            raise KeyboardInterrupt  # as by default: Lightning and the run's record handle it
        if not _recording:
            report(signal.Signals(signum).name)
        raise Terminated(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


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


def damaged_checkpoints(run_dir: Path) -> list[Path]:
    """The files ``resume_checkpoint`` passes over: cut short by a kill, or not checkpoints."""
    found = [p for pattern in RESUMABLE for p in Path(run_dir).glob(pattern) if p.is_file()]
    return sorted(p for p in found if not _intact(p))


# what a resume must find as it was: the settings and the data of the run it continues
CONTINUED = ("configuration", "splits")


class MixedResume(Exception):
    """``resume=true`` with other settings or data than the run it continues."""


def check_continued(run_dir: Path, previous: dict[str, Any], fields: dict[str, Any]) -> None:
    """Refuse (``MixedResume``) a resume whose ``configuration`` or ``splits`` differ from those
    of the run it continues: its weights would have been trained on two setups, and the record
    would name only the second."""
    for key in CONTINUED:
        if key not in fields or not isinstance(previous.get(key), dict):
            continue
        now = json.loads(json.dumps(fields[key], default=str))  # as metrics.json holds it
        was = previous[key]
        for name in sorted(set(was) | set(now)):
            if was.get(name) != now.get(name):
                shown = name if key == "configuration" else f"splits.{name}"
                raise MixedResume(
                    f"resume=true refused: {shown} is {now.get(name)!r} now but was "
                    f"{was.get(name)!r} when {run_dir} started, and a run trained on two setups "
                    f"would be recorded as the second alone; resume with the run's own settings "
                    f"and data, or start a new run without resume=true."
                )


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
