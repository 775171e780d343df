"""Run and sweep directories: one writer each, a directory of its own for every sweep, the
run a single ``resume=true`` continues, a sweep job's name, and the runs TensorBoard lists in a
directory (``python -m xray_loss.runtime.rundirs URL <dir> <port>``: what ``make tensorboard``
opens).
Used by ``xray_loss.runtime.sweep.SweepBookkeeping``.

A directory being written to holds ``.lock`` (owner pid, host, start, command), created
atomically; a second live writer stops with a message naming the owner instead of mixing its
files in, and a lock whose process is gone (same host) is stale and taken over.
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import re
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from omegaconf import DictConfig

from xray_loss.config import run_dirname
from xray_loss.runtime.record import RESUMABLE, now_iso, read_record
from xray_loss.runtime.resume import resume_checkpoint

log = logging.getLogger(__name__)

LOCK = ".lock"


# Both stop the command with their message (exit status 1). They are SystemExit, not Exception:
# Hydra turns an Exception raised in a callback into a warning and carries on.
class DirectoryInUse(SystemExit):
    """Another live process writes to the directory (its lock file names it)."""


class CannotResume(SystemExit):
    """``resume=true`` found nothing to continue; the message says why."""


class CannotWrite(SystemExit):
    """The log directory cannot be written; the message names it (raised before Hydra makes
    the run's folder, which would end in a chain of tracebacks)."""


def check_writable(path: Path) -> None:
    """Refuse a log directory whose nearest existing folder is read-only or not writable."""
    folder = Path(path).expanduser().absolute()
    while not folder.exists():
        folder = folder.parent
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    if read_only or not os.access(folder, os.W_OK | os.X_OK):
        why = "is on a read-only disk" if read_only else "is not writable"
        raise CannotWrite(
            f"Error: the log directory {path} cannot be written: {folder} {why}. Run from a "
            f"writable folder or point paths.log_dir=... at one."
        )


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


def _alive(pid: int, started: int | None) -> bool:
    """Process ``pid`` of this host still runs (and is the one that took the lock)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    if stat[stat.rindex(")") + 2 :][:1] in ("Z", "X"):
        return False  # a zombie has ended
    return started is None or _process_start(pid) == started


def _owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and "pid" in owner else None


def lock_directory(directory: Path, what: str) -> Path:
    """Make this process the one writer of ``directory`` (``<directory>/.lock``); refuse with
    ``DirectoryInUse`` while another live process holds it. Released at exit at the latest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    host = socket.gethostname()
    me = {
        "pid": os.getpid(),
        "host": host,
        "started": now_iso(),
        "pid_start": _process_start(os.getpid()),
        "command": " ".join(sys.argv),
    }
    unreadable_since = None
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(path)
            if owner is None:  # being written this instant, or left empty by a killed process
                unreadable_since = unreadable_since or time.monotonic()
                if time.monotonic() - unreadable_since < 2:
                    time.sleep(0.05)
                    continue
                owner = {"pid": -1, "host": host, "pid_start": None}
            if owner["pid"] == me["pid"] and owner.get("host") == host:
                return path  # ours already
            if owner.get("host") == host and not _alive(int(owner["pid"]), owner.get("pid_start")):
                log.warning("%s: taking over the stale lock of pid %s (gone)", path, owner["pid"])
                path.unlink(missing_ok=True)
                continue
            where = "this host" if owner.get("host") == host else f"host {owner.get('host')}"
            raise DirectoryInUse(
                f"{directory} is in use by another {what}: pid {owner['pid']} on {where}, since "
                f"{owner.get('started', '?')} ({owner.get('command', '')}). Two writers would mix "
                f"their runs' files, so this one stops. Wait until it ends"
                + (
                    ""
                    if owner.get("host") == host
                    else f", or if that process is gone (it cannot be checked from {host}), "
                    f"delete {path}"
                )
                + "."
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        atexit.register(unlock_directory, path)
        return path


def unlock_directory(path: Path | None) -> None:
    """Remove the lock ``path`` if this process holds it."""
    if path is None:
        return
    owner = _owner(Path(path))
    if owner and owner["pid"] == os.getpid() and owner.get("host") == socket.gethostname():
        Path(path).unlink(missing_ok=True)


def new_sweep_dir(base: Path, key: str) -> Path:
    """A directory no other sweep has: ``<time to the microsecond>_<key>``, created atomically."""
    base.mkdir(parents=True, exist_ok=True)
    while True:
        path = base / f"{datetime.now():%Y-%m-%d_%H-%M-%S-%f}_{key}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            time.sleep(1e-6)


# the run directories of conf/hydra/default.yaml: <time to the microsecond><_overrides>
_RUN_TIME = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(-\d{6})?"


def run_to_resume(config: DictConfig) -> Path:
    """The latest run directory of this command's overrides (``resume`` aside), for
    ``resume=true`` on a single run; ``CannotResume`` if there is none."""
    base = Path(config.paths.log_dir) / str(config.name) / "runs"
    suffix = run_dirname(list(config.hydra.overrides.task), "_", "")
    pattern = re.compile(_RUN_TIME + re.escape(suffix))
    found = sorted(p for p in base.glob("*") if p.is_dir() and pattern.fullmatch(p.name))
    if not found:
        what = f"overrides {suffix[1:]}" if suffix else "no overrides"
        raise CannotResume(
            f"resume=true: no earlier run with {what} under {base}/, so there is nothing to "
            f"continue; start it without resume=true."
        )
    return found[-1]


def check_resumable(run_dir: Path) -> None:
    """``resume=true`` on a single run: return if ``run_dir`` can be continued; else say why
    (exit 0 when it completed: nothing left to do)."""
    record = read_record(run_dir)
    if record is None:
        raise CannotResume(
            f"resume=true: {run_dir} holds no metrics.json (the run never started), so there is "
            f"nothing to continue; start it without resume=true."
        )
    status = record.get("status")
    if status == "completed":
        print(
            f"resume=true: {run_dir} completed ({record.get('finished', '?')}); nothing to "
            f"resume. Its results are in {run_dir / 'metrics.json'}.",
            flush=True,
        )
        sys.exit(0)
    if status not in RESUMABLE:
        raise CannotResume(
            f"resume=true: the latest run, {run_dir}, ended {status}: "
            f"{record.get('error') or 'see its metrics.json'}. Only interrupted runs continue; "
            f"start it again without resume=true."
        )
    if resume_checkpoint(run_dir) is None:
        raise CannotResume(
            f"resume=true: {run_dir} was interrupted before its first checkpoint (none in "
            f"{run_dir / 'checkpoints'}), so there is nothing to continue from; start it again "
            f"without resume=true (checkpoint_every_n_steps=N checkpoints within epochs)."
        )


# --- names: a sweep job, TensorBoard's runs ----------------------------------------------------
def job_dirname(overrides: list[str], held: list[str], fallback: str) -> str:
    """A sweep job's directory (and TensorBoard run) name: its overrides without the ``held``
    keys, those that take one value in the whole sweep (``hydra.job.config.override_dirname.
    exclude_keys``, set by ``SweepBookkeeping``), e.g. ``loss=ce,lr=0.001,seed=1``."""
    held = set(held or ())
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in held]
    return run_dirname(kept, "", fallback)


def tensorboard_runs(logdir: Path) -> list[str]:
    """The runs TensorBoard lists for ``logdir``: every directory holding an events file,
    named by its path relative to ``logdir`` (``.`` for ``logdir`` itself)."""
    logdir = Path(logdir)
    found = {p.parent.relative_to(logdir).as_posix() for p in logdir.rglob("*tfevents*")}
    return sorted(found)


# TensorBoard selects every run in Time Series (up to 500) but, in Scalars, Custom Scalars and
# Images, none when there are more than 40, and smooths by 0.6. The last three keep their state
# in the URL's #fragment (shared by the tabs; runSelectionState: base64 JSON), Time Series in
# its query. Tabs sort tag groups by name (Time Series opens the first two only), so a tag
# filter leaves out test/ (one point per run, which the HParams tab shows) to open on the
# curves (train/, val/), then the images and figures (IMAGES/).
IMAGES = "viz"  # the images' and figures' tag group (xray_loss.dashboard.SampleGrid)
TIME_SERIES = f"^(train|val|{IMAGES})/"
_MAX_DEFAULT_SELECTED = 40


def tensorboard_url(logdir: Path, port: int | str, host: str = "127.0.0.1") -> str:
    """The URL that opens every TensorBoard tab on ``logdir`` filled: all runs selected (however
    many), curves unsmoothed, the training and validation curves first."""
    runs = tensorboard_runs(logdir)
    state = ""
    if len(runs) > _MAX_DEFAULT_SELECTED:
        selected = json.dumps(dict.fromkeys(runs, 1), separators=(",", ":"))
        state = "&runSelectionState=" + quote(base64.b64encode(selected.encode()).decode(), "")
    tags = f"tagFilter={quote(TIME_SERIES, '')}"
    return f"http://{host}:{port}/?smoothing=0&{tags}#timeseries&_smoothingWeight=0&{tags}{state}"


# python -m xray_loss.runtime.rundirs URL <logdir> <port>: for `make tensorboard`
if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "URL":
        sys.exit("usage: python -m xray_loss.runtime.rundirs URL <logdir> <port>")
    _runs = tensorboard_runs(Path(sys.argv[2])) if Path(sys.argv[2]).is_dir() else []
    if not _runs:  # an empty board would look like a TensorBoard problem
        sys.exit(
            f"make tensorboard: SWEEP={sys.argv[2]} "
            f"{'holds no TensorBoard runs' if Path(sys.argv[2]).is_dir() else 'does not exist'}: "
            f"give a run or sweep directory, e.g. SWEEP=logs/full_grid/multirun/<sweep>."
        )
    print(
        f"TensorBoard on {sys.argv[2]} ({len(_runs)} runs): every tab filled, unsmoothed, at\n"
        f"  {tensorboard_url(Path(sys.argv[2]), sys.argv[3])}\n(Ctrl-C to stop)",
        flush=True,
    )
