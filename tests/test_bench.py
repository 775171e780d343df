"""The benchmark scripts still run (toy sizes, CPU): figures come from real runs, not tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import make_kermany

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_gpu_benchmark_smoke_on_cpu(tmp_path):
    out = _run(str(ROOT / "bench" / "gpu.py"), "--tiny", cwd=ROOT)
    assert "ceiling (model only" in out and "of the ceiling" in out
    assert "(c) cache on GPU" in out and "(a) workers decoding JPEGs" in out
    assert "projected full grid" in out


def test_overhead_benchmark_smoke(tmp_path):
    out = _run(
        str(ROOT / "bench" / "overhead.py"),
        "--models",
        "small_cnn",
        "--images",
        "128",
        "--repeats",
        "1",
        "--epochs",
        "1",
        cwd=ROOT,
    )
    line = [x for x in out.splitlines() if x.startswith("small_cnn")][-1]
    assert float(line.split()[-1]) > 0


def test_data_throughput_benchmark_smoke(tmp_path):
    root = make_kermany(tmp_path / "cx", test=False)
    out = _run(
        str(ROOT / "bench" / "data_throughput.py"),
        "--root",
        str(root),
        "--fullres",
        "40",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--work-dir",
        str(tmp_path / "w"),
        cwd=ROOT,
    )
    assert "Kermany 224 px copies" in out and "full resolution" in out
