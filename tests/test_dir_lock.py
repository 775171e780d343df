"""The one-writer lock of a run or sweep directory (xray_loss.runtime.rundirs): a second writer
stops with a message naming the holder, the holder may take it again, and a lock whose process
ended (at exit, or killed) is free again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from xray_loss.runtime.rundirs import (
    LOCK,
    OWNER,
    DirectoryInUse,
    lock_directory,
    unlock_directory,
)

ROOT = Path(__file__).resolve().parents[1]
# a process that takes the lock of argv[1] as "an earlier sweep", says so, then waits or exits
HOLDER = """
import sys, time
from pathlib import Path
from xray_loss.runtime.rundirs import lock_directory
directory, then = Path(sys.argv[1]), sys.argv[2]
sys.argv = ["an", "earlier", "sweep"]
lock_directory(directory, "sweep")
print("locked", flush=True)
if then == "wait":
    time.sleep(300)
"""


def lock_is_free(directory: Path) -> bool:
    """No process holds ``directory``'s lock, and no owner file is left (filelock 4 keeps the
    lock file itself, filelock 3.2x removes it)."""
    lock = FileLock(directory / LOCK)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        return False
    lock.release()
    return not (directory / OWNER).exists()


def hold(directory: Path, then: str = "wait") -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory), then],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_stops_with_a_message_naming_the_holder(tmp_path):
    holder = hold(tmp_path)
    try:
        with pytest.raises(DirectoryInUse) as stopped:
            lock_directory(tmp_path, "sweep")
    finally:
        holder.kill()
        holder.wait()
    message = str(stopped.value)
    assert f"{tmp_path} is in use by another sweep: pid {holder.pid} on this host" in message
    assert "(an earlier sweep)" in message and "Wait until it ends." in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK, OWNER]  # the holder's only


def test_the_holder_takes_its_lock_again_and_releases_it_once(tmp_path):
    path = lock_directory(tmp_path, "run")
    assert lock_directory(tmp_path, "run") == path  # e.g. resume=true: checked, then run
    owner = json.loads((tmp_path / OWNER).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    unlock_directory(path)
    assert lock_is_free(tmp_path)
    unlock_directory(path)  # not held: nothing to do
    hold(tmp_path, then="exit").wait()  # free for another process


@pytest.mark.parametrize("end", ["exit", "kill"])
def test_a_lock_is_free_again_once_its_process_ended(tmp_path, end):
    holder = hold(tmp_path, then="exit" if end == "exit" else "wait")
    if end == "kill":  # SIGKILL: no exit handler runs, the kernel drops the lock
        os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    # at exit the holder released it and removed its owner file; killed, it left that behind
    assert (tmp_path / OWNER).exists() == (end == "kill")
    path = lock_directory(tmp_path, "run")
    try:
        assert json.loads((tmp_path / OWNER).read_text())["pid"] == os.getpid()
    finally:
        unlock_directory(path)
