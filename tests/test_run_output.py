"""What one run shows and leaves: epochs counted from 1 everywhere (checkpoint names, budget
checkpoints, divergence message, as metrics.json and the curves count them), its
summary in train.log as on the console, no known-benign Lightning warning."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests.conftest import TINY, assert_ok, metrics, run_cli, run_dirs

pytestmark = pytest.mark.slow


def test_a_run_counts_epochs_from_one_and_logs_what_the_console_showed(workdir):
    proc = run_cli(*TINY, "epochs=2", "budgets=[1,2]", cwd=workdir)
    assert_ok(proc)
    (run,) = run_dirs(workdir / "logs")
    record = metrics(run)
    best = Path(record["best_checkpoint"])
    # best-epoch002.ckpt: the weights after 2 epochs, metrics.json's best_epoch 2
    assert best.name == f"best-epoch{record['best_epoch']:03d}.ckpt"
    assert best.exists()
    for budget, info in record["budgets"].items():
        name = f"budget{int(budget):03d}-best-epoch{info['best_epoch']:03d}.ckpt"
        assert Path(info["checkpoint"]).name == name and Path(info["checkpoint"]).exists()
        last = f"budget{int(budget):03d}-last-epoch{int(budget):03d}.ckpt"
        assert Path(info["last_checkpoint"]).name == last
    assert record["budgets"]["1"]["best_epoch"] == 1

    # the filtered warning is benign: the checkpoint Lightning tests is the one recorded
    assert "multiple `ModelCheckpoint` callbacks" not in proc.stderr + proc.stdout
    assert f"Restoring states from the checkpoint path at {best}" in proc.stderr

    log = (run / "train.log").read_text()
    summary = proc.stdout[proc.stdout.index("Run finished:") :].strip().splitlines()
    assert len(summary) == 4 and summary[0].startswith(
        f"Run finished: best epoch {record['best_epoch']}"
    )
    for line in summary:
        assert line in log, line


def test_a_diverged_run_names_its_epoch_counted_from_one(workdir):
    proc = run_cli(*TINY, "lr=10", "epochs=3", cwd=workdir)
    assert proc.returncode == 1
    (run,) = run_dirs(workdir / "logs")
    found = re.search(r"in epoch (\d+) \(step (\d+)\)", metrics(run)["error"])
    epoch, step = int(found[1]), int(found[2])
    steps_per_epoch = 256 // 64  # debug=tiny's 256 training images, batch_size 64
    assert epoch == math.ceil(step / steps_per_epoch) >= 1
