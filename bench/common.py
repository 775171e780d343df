"""What every benchmark prints about the machine it ran on."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC | {cpu} | {os.cpu_count()} cores "
        f"(torch threads {torch.get_num_threads()}) | {gpu} | torch {torch.__version__} | "
        f"python {platform.python_version()} | commit {_commit()}"
    )


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def job_costs(records: list[dict]) -> tuple[float, float]:
    """(start-up s per job, s per epoch): wall = a + b * epochs, least squares over the jobs'
    metrics.json records."""
    xs = [r["epochs_trained"] for r in records]
    ys = [r["wall_time_s"] for r in records]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return my - b * mx, b
