"""Two sweeps never write into one directory: identical sweeps started at once get a directory
each, and a second writer of a directory in use stops with a message instead."""

from __future__ import annotations

import re

import pytest

from tests.conftest import metrics, run_dirs, start_cli, sweep_dirs, sweep_summary
from tests.test_dir_lock import hold, lock_is_free
from xray_loss.runtime.rundirs import LOCK, OWNER

pytestmark = pytest.mark.slow

SWEEP = ["-m", "debug=tiny", "loss=bce,ce", "epochs=1"]


def test_identical_sweeps_started_at_once_keep_apart_and_a_second_writer_stops(workdir):
    # a directory another live process writes to (it holds the lock, its owner file names it)
    held = workdir / "elsewhere"
    owner = hold(held)
    try:
        first, second = start_cli(workdir, *SWEEP), start_cli(workdir, *SWEEP)
        third = start_cli(workdir, *SWEEP, f"hydra.sweep.dir={held}")
        for proc in (first, second):
            assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
        assert third.wait(timeout=300) == 1
    finally:
        owner.kill()
        owner.wait()
    assert f"{held} is in use by another sweep: pid {owner.pid} on this host" in (
        third.stderr.read()
    )
    assert sorted(p.name for p in held.iterdir()) == [LOCK, OWNER]  # it wrote nothing there

    sweeps = sweep_dirs(workdir)
    assert len(sweeps) == 2
    # the same command (hash), its own directory each (time to the microsecond)
    assert len({s.name.split("_")[-1] for s in sweeps}) == 1
    for sweep in sweeps:
        assert lock_is_free(sweep)  # released at the end
        runs = run_dirs(sweep)
        assert sorted(r.name for r in runs) == ["loss=bce", "loss=ce"]  # the swept values
        for run in runs:
            assert metrics(run)["status"] == "completed"
            assert metrics(run)["run_dir"] == str(run)
            # one writer: TensorBoard files of one process (the sweep's experiment, written by
            # the sweep into its first job, included), no -v1 checkpoints
            writers = {
                re.search(r"\.(\d+)\.\d+(\.experiment|\.session)?$", p.name).group(1)
                for p in run.glob("events.out.tfevents.*")
            }
            assert len(writers) == 1, sorted(p.name for p in run.glob("events.out.tfevents.*"))
            assert not list(run.glob("checkpoints/*-v*.ckpt"))
        rows = sweep_summary(sweep)
        assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
