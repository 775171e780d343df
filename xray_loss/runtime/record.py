"""``metrics.json``: the machine-readable record of one run, and how a run's end maps to it.

It is created with ``status: running`` when a run starts and rewritten when it ends
(``completed``, ``diverged``, ``failed``, ``pruned`` or ``interrupted``), atomically, so sweep
bookkeeping, resumption and reports can trust whatever they read, even while runs are going.
:func:`recorded_run` wraps a run: it starts the record, maps how the run ended to a status and
finishes the record, whatever happened.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException

from xray_loss.atomic import write_json_atomic
from xray_loss.identity import code_commit
from xray_loss.runtime.resume import (
    MixedResume,
    Preempted,
    Terminated,
    attempt_history,
    check_continued,
    drop_lost_checkpoints,
    recording,
    resume_checkpoint,
)
from xray_loss.runtime.slurm import slurm_restarts


class Status(StrEnum):
    """A run's ``status`` in metrics.json (a str: ``record["status"] == Status.COMPLETED``)."""

    RUNNING = "running"  # started, not ended (or killed without notice)
    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"
    PRUNED = "pruned"
    INTERRUPTED = "interrupted"  # by SIGINT or SIGTERM


# what resume=true continues: killed (still running) or stopped by a signal; and a run that
# failed with ``resumable: true`` (a checkpoint that could not be written or read: see
# ``resumable``)
RESUMABLE = frozenset({Status.RUNNING, Status.INTERRUPTED})
# the jobs a sweep reports as failed (and exits non-zero for)
FAILURES = frozenset({Status.FAILED, Status.DIVERGED})
# the exit status of a run stopped by a signal: 128 + the signal's number, as a shell reports it
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}
# metrics.json ``stopped_by``: why training ended (a completed run: one of the first five)
STOP_REASONS = ("max_epochs", "max_time", "max_steps", "early_stopping", "should_stop")
STOP_REASONS += ("diverged", "failed", "pruned", "interrupted")  # a run that did not complete


def resumable(record: dict[str, Any] | None) -> bool:
    """Whether ``resume=true`` continues the run of ``record``: it was killed or interrupted,
    or it failed on a checkpoint it could not write or read (a full disk, a damaged file), the
    checkpoints before it intact (its error says so, ``resumable: true``)."""
    status = (record or {}).get("status")
    return status in RESUMABLE or (status == Status.FAILED and record.get("resumable") is True)


# --- how a run can end early: a hierarchy of its own, mapped to a status ---------------------
class RunStopped(Exception):
    """A run that ended early for a reason its message explains (status ``failed``).
    ``fields``: what the run had established before it stopped, kept in its record (a diverged
    run's epoch budgets already tested; ``resumable=True``: ``resume=true`` continues it)."""

    status = Status.FAILED

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.fields = fields


class TrainingDiverged(RunStopped):
    """The training loss became NaN or infinite, or exploded."""

    status = Status.DIVERGED


class Interrupted(SystemExit):
    """A run stopped by SIGINT or SIGTERM, recorded ``interrupted``; exits as a shell reports a
    signal (130, 143). The entry point prints the ``resume=true`` command that continues it."""

    def __init__(self, signal_name: str, run_dir: Path) -> None:
        super().__init__(SIGNAL_EXIT[signal_name])
        self.signal_name, self.run_dir = signal_name, run_dir


class RunFailed(CompactHydraException):
    """What the command line reports for a run stopped with an explained reason: one line,
    no traceback (Hydra prints a CompactHydraException's message alone)."""


def _is_trial_pruned(err: BaseException) -> bool:
    """An Optuna prune, recognised by its class (optuna is imported only if a trial runs)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(err, optuna.TrialPruned)


# --- writing ---------------------------------------------------------------------------------
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
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunRecord:
    """The metrics.json of one run directory."""

    def __init__(self, run_dir: Path, write: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.json"
        self.data: dict[str, Any] = read_record(self.path) or {}
        self.write = write  # False on DDP ranks other than 0: they keep the data, write nothing
        self.continues: dict[str, Any] | None = None  # the record a resume continues

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    def update(self, **fields: Any) -> None:
        if self.continues is not None:  # a resume: the same settings and data, or refused
            check_continued(self.path.parent, self.continues, fields)
        self.data.update(fields)
        if self.write:
            write_json_atomic(self.path, self.data)

    def start(self, **fields: Any) -> None:
        """A new attempt: ``started`` is the run's first (kept by a resume), ``attempt_started``
        this one's; ``commit`` the code's (a resume overwrites it: its code is the one that
        finishes the run)."""
        now = now_iso()
        self.data = {"status": Status.RUNNING, "started": now, "attempt_started": now, **fields}
        self.data.setdefault("commit", code_commit())
        self.data["machine"] = machine()  # this attempt's (a resume may run elsewhere)
        if self.write:
            write_json_atomic(self.path, self.data)

    def finish(self, status: Status, **fields: Any) -> None:
        self.update(status=Status(status), finished=now_iso(), **fields)


def machine() -> dict[str, Any]:
    """Where this attempt trains: enough to tell a results page's hardware from the machine
    that wrote the page."""
    import platform

    import torch

    cpu = platform.processor()
    try:  # Linux names the model here; platform.processor() is often empty
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), cpu)
    except OSError:
        pass
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


# --- one run, start to end -------------------------------------------------------------------
class Run:
    """What :func:`recorded_run` hands the block: the record, and where to resume from."""

    def __init__(
        self, record: RunRecord, skip: bool, resume_from: str | None, before: float = 0.0
    ) -> None:
        self.record, self.skip, self.resume_from = record, skip, resume_from
        self.started = time.time()
        self.before = before  # wall time of the attempts this one continues

    def finish(self, result: dict[str, Any]) -> None:
        """The run completed: record its results (rank 0 writes them)."""
        self.record.finish(Status.COMPLETED, **result, wall_time_s=self.elapsed())

    def elapsed(self) -> float:
        """Wall time of the whole run: every attempt, this one so far included."""
        return round(self.before + time.time() - self.started, 2)


@contextmanager
def recorded_run(
    run_dir: Path,
    resume: bool,
    rank: int = 0,
    ended: Callable[[Path, dict[str, Any]], None] | None = None,
    **start_fields: Any,
) -> Iterator[Run]:
    """Start the run's record, yield it, and map how the block ended to the record's status.

    ``resume=true``: a run already ``completed`` is skipped (``run.skip``), a ``running`` one
    (interrupted, killed) continues from its newest intact checkpoint (``run.resume_from``:
    ``last.ckpt``, the mid-epoch ``resume.ckpt`` or an ``hpc_ckpt_N.ckpt``). A job that SLURM
    requeued (``SLURM_RESTART_COUNT`` > 0) does the same without ``resume=true`` unless it
    completed: the requeued job re-runs the job it was. How a run ends:

    - the block returns: the caller finished it (``run.finish``);
    - ``TrainingDiverged`` / ``RunStopped``: status ``diverged`` / ``failed``, then one line on
      the command line (``RunFailed``), no traceback;
    - one of the project's own errors (``xray_loss.errors.UserError``: bad config, data, files)
      or Hydra's ``CompactHydraException``: ``failed``, one line; any other error is a bug (below);
    - an Optuna prune: ``pruned``, and the block's end is not an error;
    - SIGTERM or Ctrl-C: ``interrupted`` (resumable), the ``resume=true`` command printed, exit
      143 or 130; preempted (``Preempted``): ``running`` with an ``interrupted`` note;
    - anything else: ``failed`` with the exception's type and message, and its traceback.

    ``ended(run_dir, record)`` is called on a run that ends early (the dashboard's HParams row,
    so that it keeps its row with its status); its own failure never hides the run's error.
    """
    record = RunRecord(run_dir, write=rank == 0)
    requeued = slurm_restarts() > 0
    if (resume or requeued) and record.status == Status.COMPLETED:
        yield Run(record, skip=True, resume_from=None)
        return
    previous = record.data
    resume_from = None
    if (resume and resumable(previous)) or (requeued and record.status is not None):
        found = resume_checkpoint(Path(run_dir))
        resume_from = str(found) if found else None
    resumes = list(previous.get("resumes", [])) if resume_from else []
    before, history = 0.0, {}
    if resume_from:
        interrupted, before = attempt_history(previous, Path(resume_from))
        if rank == 0:
            drop_lost_checkpoints(Path(resume_from))
        resumes.append(
            {
                "checkpoint": resume_from,
                "at": now_iso(),
                "interrupted": interrupted,
                **({"slurm_restart_count": slurm_restarts()} if requeued else {}),
            }
        )
        history = {"started": previous.get("started", now_iso()), "wall_time_before_s": before}
    record.start(
        run_dir=str(run_dir),
        resumed_from=resume_from,
        **({"resumes": resumes} if resumes else {}),
        **start_fields,
        **history,
    )
    record.continues = previous if resume_from else None
    run = Run(record, skip=False, resume_from=resume_from, before=before)
    try:
        with recording(Path(run_dir)):
            yield run
    except MixedResume as err:  # refused before training: the run stays as it was
        record.data = previous
        if record.write:
            write_json_atomic(record.path, previous)
        raise RunFailed(str(err)) from None
    except (RunStopped, CompactHydraException) as err:  # the project's own (xray_loss.errors)
        status = err.status if isinstance(err, RunStopped) else Status.FAILED
        fields = err.fields if isinstance(err, RunStopped) else {}
        record.finish(
            status, error=str(err), stopped_by=status, wall_time_s=run.elapsed(), **fields
        )
        _ended(ended, run_dir, record)
        if isinstance(err, CompactHydraException):
            raise
        raise RunFailed(str(err)) from None
    except (SystemExit, KeyboardInterrupt) as err:
        signal_name = _signal_of(err)
        reason = str(err) if isinstance(err, Preempted) else f"{type(err).__name__}: {err}"
        noted = {"at": now_iso(), "reason": signal_name or reason}
        if signal_name is None:  # preempted (requeued: stays running), or a plain exit
            record.update(interrupted=noted, stopped_by="interrupted", wall_time_s=run.elapsed())
            raise
        record.finish(
            Status.INTERRUPTED,
            interrupted=noted,
            stopped_by="interrupted",
            wall_time_s=run.elapsed(),
        )
        raise Interrupted(signal_name, Path(run_dir)) from None
    except BaseException as err:
        if _is_trial_pruned(err):
            record.finish(
                Status.PRUNED, error=str(err), stopped_by="pruned", wall_time_s=run.elapsed()
            )
            _ended(ended, run_dir, record)
            return
        record.finish(
            Status.FAILED,
            error=f"{type(err).__name__}: {err}",
            stopped_by="failed",
            wall_time_s=run.elapsed(),
        )
        _ended(ended, run_dir, record)
        raise


def _signal_of(err: BaseException) -> str | None:
    """``SIGINT`` or ``SIGTERM`` when ``err`` is how a signal ends a run (Ctrl-C, or Lightning's
    ``sys.exit(1)`` after it; Lightning's ``SIGTERMException``, ``Terminated`` outside it), else
    None."""
    if isinstance(err, KeyboardInterrupt) or isinstance(err.__context__, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(err, Terminated):
        return err.signal_name
    if type(err).__name__ == "SIGTERMException":
        return "SIGTERM"
    return None


def _ended(ended, run_dir: Path, record: RunRecord) -> None:
    if ended is None or not record.write or "config" not in record.data:
        return
    try:
        ended(Path(run_dir), record.data)
    except Exception as err:  # noqa: BLE001 - the run's own error matters more
        logging.getLogger(__name__).warning("no HParams row for %s: %s", run_dir, err)
