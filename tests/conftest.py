"""Shared test helpers: run the real command line in a child process, read run directories."""

from __future__ import annotations

import atexit
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=tiny"]


def run_cli(
    *args: str,
    cwd: Path,
    module: str = "xray_loss.train",
    timeout: float = 600,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """``python -m <module> args...`` in ``cwd``; returns the finished process (text output).

    The process is forked from a pre-imported interpreter (tests/zygote.py), which saves the
    ~7 s of importing Lightning per command; ``XRAY_LOSS_TEST_SUBPROCESS=1`` starts a fresh
    interpreter instead.
    """
    full_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "XRAY_LOSS_CACHE": str(cwd / "cache"),
        **(env or {}),
    }
    full_env.pop("HYDRA_FULL_ERROR", None)
    command = [sys.executable, "-m", module, *args]
    # joblib's loky workers, started from a forked child, wait out a 300 s timeout at exit
    joblib = any(a.startswith("hydra/launcher=joblib") for a in args)
    if joblib or os.environ.get("XRAY_LOSS_TEST_SUBPROCESS") == "1":
        return subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
        )
    return _ZYGOTE.run(command, module, list(args), cwd, full_env, timeout)


class _Zygote:
    """The client side of tests/zygote.py: one pre-imported interpreter per test session."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.replies: queue.Queue = queue.Queue()

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "zygote.py")],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        assert self.replies.get(timeout=300).get("ready"), "tests/zygote.py did not start"

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.replies.put(json.loads(line))

    def run(self, command, module, args, cwd, env, timeout) -> subprocess.CompletedProcess:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"module": module, "args": args, "cwd": str(cwd), "env": env}
            request.update(stdout=str(out), stderr=str(err))
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            pid = self.replies.get(timeout=60)["pid"]
            try:
                code = self.replies.get(timeout=timeout)["code"]
            except queue.Empty:
                os.killpg(pid, signal.SIGKILL)
                self.replies.get(timeout=60)
                raise subprocess.TimeoutExpired(command, timeout) from None
            return subprocess.CompletedProcess(
                command, code, out.read_text(errors="replace"), err.read_text(errors="replace")
            )

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


_ZYGOTE = _Zygote()
atexit.register(_ZYGOTE.close)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (one holding metrics.json) under ``root``."""
    return sorted(p.parent for p in root.rglob("metrics.json"))


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def study_sweep(tmp_path_factory) -> Path:
    """A debug-size full grid with 2 seeds (36 tiny jobs) plus one unfinished run: shared by
    the report, eval and predict tests."""
    work = tmp_path_factory.mktemp("sweep")
    assert_ok(run_cli("-m", "experiment=full_grid", "debug=sweep", "seeds=2", cwd=work))
    (sweep_dir,) = [p for p in (work / "logs" / "full_grid" / "multirun").iterdir() if p.is_dir()]
    unfinished = sweep_dir / "epochs=10,loss=ce,lr=0.1,seed=0"
    unfinished.mkdir()
    (unfinished / "metrics.json").write_text(json.dumps({"status": "running"}))
    return sweep_dir


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch directory to run commands in (logs/ and the cache go there)."""
    return tmp_path
