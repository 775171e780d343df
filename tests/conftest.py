"""Shared test helpers: run the real command line in a subprocess, read run directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    """``python -m <module> args...`` in ``cwd``; returns the finished process (text output)."""
    full_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "XRAY_LOSS_CACHE": str(cwd / "cache"),
        **(env or {}),
    }
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


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
