"""Run and sweep directories: one writer each, a directory of its own for every sweep, the
run a single ``resume=true`` continues, a sweep job's name, and the runs TensorBoard lists in a
directory (``python -m xray_loss.runtime.rundirs URL <dir> <port>``: what ``make tensorboard``
opens).
Used by ``xray_loss.runtime.sweep.SweepBookkeeping``.

A directory being written to is locked with ``filelock`` (an flock on ``.lock``, a file filelock
4 leaves in place when released, so that every contender locks the same one) and holds
``.lock.owner`` (owner pid, host, start, command) while locked; a second writer stops with a
message naming the owner instead of mixing its files in. The kernel frees the lock when its
process ends, killed or not, so a lock left by a dead process is free again.
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

from filelock import BaseFileLock, FileLock, Timeout
from omegaconf import DictConfig

from xray_loss.atomic import write_json_atomic
from xray_loss.config import run_dirname
from xray_loss.runtime.record import Status, now_iso, read_record, resumable
from xray_loss.runtime.resume import damaged_checkpoints, resume_checkpoint

log = logging.getLogger(__name__)

LOCK = ".lock"  # the file filelock locks (a contender of filelock 3.x would truncate it)
OWNER = ".lock.owner"  # who holds the lock: written by the holder, removed when it releases

_held: dict[Path, tuple[int, BaseFileLock]] = {}  # lock file -> (holder pid, its lock)


# Both stop the command with their message (exit status 1). They are SystemExit, not Exception:
# Hydra turns an Exception raised in a callback into a warning and carries on.
class DirectoryInUse(SystemExit):
    """Another live process writes to the directory (its ``.lock.owner`` names it)."""


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


def _owner(directory: Path) -> dict[str, Any] | None:
    """What the holder of ``directory``'s lock wrote about itself (pid, host, start, command)."""
    try:
        owner = json.loads((directory / OWNER).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and "pid" in owner else None


def lock_directory(directory: Path, what: str) -> Path:
    """Make this process the one writer of ``directory`` (``<directory>/.lock``); refuse with
    ``DirectoryInUse`` while another process holds it. Held again by its holder at once;
    released by ``unlock_directory``, at exit, or by the kernel when the process dies."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    key = path.absolute()
    held = _held.get(key)
    if held and held[0] == os.getpid():
        return path  # ours already
    lock = FileLock(path, thread_local=False)
    deadline = time.monotonic() + 2
    while True:
        try:
            lock.acquire(blocking=False)
            break
        except Timeout:
            owner = _owner(directory)
            # no owner file: being written or removed this instant, or unreadable
            if owner is not None or time.monotonic() > deadline:
                raise DirectoryInUse(_in_use(directory, what, owner)) from None
            time.sleep(0.05)
    _held[key] = (os.getpid(), lock)
    host, left = socket.gethostname(), _owner(directory)  # left by a holder that was killed
    if left and left.get("host") != host:
        log.warning(
            "%s: taking the lock pid %s on host %s left; if that process still runs, this file "
            "system does not share locks between hosts, and both write here",
            path,
            left["pid"],
            left.get("host"),
        )
    me = {
        "pid": os.getpid(),
        "host": host,
        "started": now_iso(),
        "command": " ".join(sys.argv),
    }
    write_json_atomic(directory / OWNER, me)
    atexit.register(unlock_directory, path)
    return path


def _in_use(directory: Path, what: str, owner: dict[str, Any] | None) -> str:
    stop = "Two writers would mix their runs' files, so this one stops."
    if owner is None:
        return (
            f"{directory} is in use by another {what} (it holds {directory / LOCK}; "
            f"{directory / OWNER}, which names it, cannot be read). {stop} Wait until it ends."
        )
    host = socket.gethostname()
    where = "this host" if owner.get("host") == host else f"host {owner.get('host')}"
    # the lock goes with its process, killed or not; across hosts the file server frees it
    wait = "Wait until it ends" + (
        ""
        if owner.get("host") == host
        else " (if that host went down, until its file server frees the lock)"
    )
    return (
        f"{directory} is in use by another {what}: pid {owner['pid']} on {where}, since "
        f"{owner.get('started', '?')} ({owner.get('command', '')}). {stop} {wait}."
    )


def unlock_directory(path: Path | None) -> None:
    """Release the lock ``path`` (and remove its owner file) if this process holds it."""
    if path is None:
        return
    key = Path(path).absolute()
    pid, lock = _held.get(key, (None, None))
    if pid != os.getpid():
        return  # not ours, or inherited by a forked child: its parent holds it
    del _held[key]
    (key.parent / OWNER).unlink(missing_ok=True)
    lock.release()


def new_sweep_dir(base: Path, name: str) -> Path:
    """A directory no other sweep has: ``<time to the microsecond>_<name>`` (``name``: what the
    sweep varies and its command's key, ``sweep.sweep_name``), created atomically."""
    base.mkdir(parents=True, exist_ok=True)
    while True:
        path = base / f"{datetime.now():%Y-%m-%d_%H-%M-%S-%f}_{name}"
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
    if record is not None and record.get("status") == Status.COMPLETED:
        print(
            f"resume=true: {run_dir} completed ({record.get('finished', '?')}); nothing to "
            f"resume. Its results are in {run_dir / 'metrics.json'}.",
            flush=True,
        )
        sys.exit(0)
    refusal = cannot_resume(run_dir)
    if refusal:
        raise CannotResume(refusal)


def cannot_resume(run_dir: Path) -> str | None:
    """Why ``resume=true`` cannot continue ``run_dir`` (each reason ends with the command that
    works instead), or None if it can."""
    record = read_record(run_dir)
    if record is None:
        return (
            f"resume=true: {run_dir} holds no metrics.json (the run never started), so there is "
            f"nothing to continue; start it without resume=true."
        )
    if not resumable(record):
        return (
            f"resume=true: the latest run, {run_dir}, ended {record.get('status')}: "
            f"{record.get('error') or 'see its metrics.json'}. Only interrupted runs continue; "
            f"start it again without resume=true."
        )
    if resume_checkpoint(run_dir) is not None:
        return None
    damaged = damaged_checkpoints(run_dir)
    if damaged:
        names = ", ".join(str(p) for p in damaged)
        return (
            f"resume=true: {names} is damaged (cut short or not a checkpoint) and {run_dir} "
            f"holds no other checkpoint, so there is nothing to continue from; start it again "
            f"without resume=true."
        )
    return (
        f"resume=true: {run_dir} was interrupted before its first checkpoint (none in "
        f"{run_dir / 'checkpoints'}), so there is nothing to continue from; start it again "
        f"without resume=true (checkpoint_every_n_steps=N checkpoints within epochs)."
    )


# --- names: a sweep job, TensorBoard's runs ----------------------------------------------------
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
# filter leaves out test/ and BEST (one point per run, which the HParams tab shows) to open on
# the curves (train/, val/), then the images and figures (IMAGES/).
IMAGES = "viz"  # the images' and figures' tag group (xray_loss.dashboard.SampleGrid)
BEST = "val/auroc_best"  # the checkpoint's val AUROC, an HParams column (xray_loss.dashboard)
TIME_SERIES = f"^(train|val|{IMAGES})/(?!{re.escape(BEST.split('/', 1)[1])}$)"
_MAX_DEFAULT_SELECTED = 40
# runs are coloured by their head where the runs differ in it (else one colour per run)
HEAD = "loss"


def tensorboard_url(logdir: Path, port: int | str, host: str = "127.0.0.1") -> str:
    """The URL that opens every TensorBoard tab on ``logdir`` filled: all runs selected (however
    many), curves unsmoothed, the training and validation curves first, and in Time Series
    one colour per head where runs differ in it (TensorBoard's run colour group by regex: BCE
    and CE runs of a sweep could otherwise share a colour)."""
    runs = tensorboard_runs(logdir)
    group = HEAD + r"=(\w+)"  # TensorBoard colours runs by the regex's first group
    heads = {m.group(1) for m in map(re.compile(rf"(?:^|[,/]){group}").search, runs) if m}
    colour = "&runColorGroup=" + quote("regex:" + group, "") if len(heads) > 1 else ""
    state = ""
    if len(runs) > _MAX_DEFAULT_SELECTED:
        selected = json.dumps(dict.fromkeys(runs, 1), separators=(",", ":"))
        state = "&runSelectionState=" + quote(base64.b64encode(selected.encode()).decode(), "")
    tags = f"tagFilter={quote(TIME_SERIES, '')}"
    query = f"smoothing=0&{tags}{colour}"
    return f"http://{host}:{port}/?{query}#timeseries&_smoothingWeight=0&{tags}{state}"


# python -m xray_loss.runtime.rundirs URL <logdir> <port>: for `make tensorboard`
if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "URL":
        sys.exit("usage: python -m xray_loss.runtime.rundirs URL <logdir> <port>")
    _logdir = Path(sys.argv[2])
    _runs = tensorboard_runs(_logdir) if _logdir.is_dir() else []
    if not _runs:  # an empty board would look like a TensorBoard problem
        _what = "holds no TensorBoard runs" if _logdir.is_dir() else "does not exist"
        sys.exit(
            f"make tensorboard: SWEEP={sys.argv[2]} "
            f"{'is a file, not a folder' if _logdir.is_file() else _what}: "
            f"give a run or sweep directory, e.g. SWEEP=logs/full_grid/multirun/<sweep>."
        )
    print(
        f"TensorBoard on {sys.argv[2]} ({len(_runs)} runs): every tab filled, unsmoothed, at\n"
        f"  {tensorboard_url(Path(sys.argv[2]), sys.argv[3])}\n(Ctrl-C to stop)",
        flush=True,
    )
