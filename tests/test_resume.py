"""Exact resume: a run killed with SIGKILL and resumed ends bit for bit where the uninterrupted
run ends; ``resume=true`` on a single run continues it or says why it cannot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_ok, metrics, run_cli, run_dirs, start_cli
from tests.test_dir_lock import lock_is_free
from xray_loss.runtime.rundirs import LOCK

pytestmark = pytest.mark.slow

# augmentation (CPU, in the main process) and dropout draw from the global RNG; 16 steps an
# epoch, a mid-epoch checkpoint every 6 steps; one thread, so the arithmetic is the same
ARGS = [
    "debug=tiny",
    "epochs=4",
    "batch_size=16",
    "threads=1",
    "checkpoint_every_n_steps=6",
    "data.augment.enabled=true",
    "model.backbone.dropout=0.3",
]
STEPS_PER_EPOCH = 256 // 16


def newest_checkpoint(root: Path) -> Path | None:
    found = [p for p in root.glob("logs/train/runs/*/checkpoints/*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def kill_when_newest(proc: subprocess.Popen, root: Path, name: str, after: Path | None) -> Path:
    """SIGKILL the run once its newest checkpoint is ``name`` (and not ``after``, the one it
    resumed from). The run is stopped (SIGSTOP) to look, so what it leaves is what was seen."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        newest = newest_checkpoint(root)
        if newest is not None and newest.name == name and newest != after:
            os.killpg(proc.pid, signal.SIGSTOP)
            newest = newest_checkpoint(root)
            if newest.name == name and newest != after:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return newest
            os.killpg(proc.pid, signal.SIGCONT)
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (exit {proc.returncode}) before it could be killed:\n"
                f"{proc.stderr.read()[-3000:]}"
            )
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {name} within 240 s")


def step_of(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]


def test_a_run_killed_twice_and_resumed_ends_bit_for_bit_as_the_uninterrupted_one(workdir):
    reference = start_cli(workdir, *ARGS, "name=reference")
    # the interrupted run writes last.ckpt every 3 epochs (and at the end), the reference
    # every epoch: the cadence changes what a resume repeats, never the result
    args = [*ARGS, "checkpoint_every_n_epochs=3"]
    # 1. killed after an epoch's end (resumes from last.ckpt: the next epoch's order and RNG)
    proc = start_cli(workdir, *args)
    first = kill_when_newest(proc, workdir, "last.ckpt", after=None)
    run = first.parent.parent
    assert step_of(first) == 3 * STEPS_PER_EPOCH
    assert metrics(run)["status"] == "running"
    first_started = metrics(run)["started"]
    # 2. resumed, then killed mid-epoch (resumes from resume.ckpt: the rest of that epoch)
    proc = start_cli(workdir, *args, "resume=true")
    second = kill_when_newest(proc, workdir, "resume.ckpt", after=first)
    assert second.parent.parent == run and step_of(second) % STEPS_PER_EPOCH != 0
    assert reference.wait(timeout=240) == 0, reference.stderr.read()[-3000:]
    # 3. resumed to the end (epoch 4: last.ckpt written as training ends, off the cadence)
    assert_ok(run_cli(*args, "resume=true", cwd=workdir))

    (ref_run,) = (workdir / "logs" / "reference" / "runs").iterdir()
    record, ref = metrics(run), metrics(ref_run)
    assert record["status"] == "completed"
    assert [Path(r["checkpoint"]).name for r in record["resumes"]] == ["last.ckpt", "resume.ckpt"]
    # the history is kept: the first start, every attempt's time, how each attempt ended
    assert record["started"] == first_started
    for resumed in record["resumes"]:  # SIGKILL: the attempt noted nothing, the record says so
        assert resumed["interrupted"]["reason"].startswith("killed without notice")
    last = _seconds(record["finished"]) - _seconds(record["attempt_started"])
    assert record["wall_time_s"] > last + 1  # the killed attempts' time up to their checkpoints
    for key in ("best_epoch", "best_val_auroc", "epochs_trained", "threshold", "val", "test"):
        assert record[key] == ref[key], key
    assert Path(record["best_checkpoint"]).name == Path(ref["best_checkpoint"]).name
    # the same files, no -v1 copies of checkpoints written again after the kills
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (ref_run / "checkpoints").iterdir())
    assert not (run / "checkpoints" / "resume.ckpt").exists()
    # resume=true once more: it completed, nothing to resume, nothing run again
    proc = run_cli(*args, "resume=true", cwd=workdir)
    assert_ok(proc)
    assert f"resume=true: {run.relative_to(workdir)} completed" in proc.stdout
    assert metrics(run)["finished"] == record["finished"]

    for name in ("last.ckpt", Path(ref["best_checkpoint"]).name):
        got = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        want = torch.load(ref_run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert got["global_step"] == want["global_step"]
        assert got["state_dict"].keys() == want["state_dict"].keys()
        for key, tensor in want["state_dict"].items():
            assert torch.equal(got["state_dict"][key], tensor), f"{name}: {key}"
        for (_, a), (_, b) in zip(
            _tensors(got["optimizer_states"]), _tensors(want["optimizer_states"]), strict=True
        ):
            assert torch.equal(a, b), f"{name}: optimizer state"
        # the epoch's running training metrics came through the resume too
        for metric, state in want["metric_states"].items():
            for key, value in state["states"].items():
                assert torch.equal(got["metric_states"][metric]["states"][key], value), metric


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key in sorted(tree, key=str):
            yield from _tensors(tree[key], f"{prefix}.{key}")
    elif isinstance(tree, (list, tuple)):
        for i, item in enumerate(tree):
            yield from _tensors(item, f"{prefix}.{i}")


def test_resume_true_on_a_single_run_says_why_it_cannot(workdir):
    # the latest run of these overrides was interrupted before its first checkpoint
    run = workdir / "logs" / "train" / "runs" / "2026-01-02_03-04-05-000006_epochs=1,lr=0.005"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"status": "running"}))
    none = start_cli(workdir, "debug=tiny", "epochs=1", "lr=0.003", "resume=true")
    early = start_cli(workdir, "debug=tiny", "epochs=1", "lr=0.005", "resume=true")
    assert none.wait(timeout=120) == 1 and early.wait(timeout=120) == 1
    message = "resume=true: no earlier run with overrides epochs=1,lr=0.003 under logs/train/runs/"
    assert message in none.stderr.read()
    shown = run.relative_to(workdir)  # as the command names it, under logs/ where it ran
    assert f"resume=true: {shown} was interrupted before its first checkpoint" in (
        early.stderr.read()
    )
    # and neither started a run
    assert [p.name for p in run.parent.iterdir()] == [run.name]
    left = sorted(p.name for p in run.iterdir() if p.name != LOCK)  # filelock 4 keeps .lock
    assert left == ["checkpoints", "metrics.json"] and lock_is_free(run)


def kill_at_step(proc: subprocess.Popen, root: Path, after: int, before: int) -> Path:
    """SIGKILL the run once its resume.ckpt holds a step in (after, before)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        newest = newest_checkpoint(root)
        if newest is not None and newest.name == "resume.ckpt":
            os.killpg(proc.pid, signal.SIGSTOP)
            step = step_of(newest) if newest.exists() else -1
            if after < step < before:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return newest
            if step >= before:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"the run passed step {before} before it could be killed")
            os.killpg(proc.pid, signal.SIGCONT)
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}):\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("no resume.ckpt within 240 s")


def test_two_kills_in_one_epoch_with_worker_processes_end_as_a_run_without_workers(workdir):
    # augmentation in 2 DataLoader worker processes, killed twice within the first epoch; the
    # reference runs uninterrupted in the main process alone: every tensor must match. Four
    # epochs: the validation loaders' iterators (one per process with persistent workers, one
    # per validation without) must not draw from the global RNG that dropout uses
    args = [
        "debug=tiny",
        "epochs=4",
        "batch_size=16",
        "threads=1",
        "checkpoint_every_n_steps=2",
        "data.augment.enabled=true",
        "model.backbone.dropout=0.3",
    ]
    assert_ok(run_cli(*args, "data.num_workers=0", "name=reference", cwd=workdir))
    workers = [*args, "data.num_workers=2"]
    first = kill_at_step(start_cli(workdir, *workers), workdir, 0, STEPS_PER_EPOCH // 2)
    first_step = step_of(first)
    second = kill_at_step(
        start_cli(workdir, *workers, "resume=true"), workdir, first_step, STEPS_PER_EPOCH
    )
    assert step_of(second) > first_step
    assert_ok(run_cli(*workers, "resume=true", cwd=workdir))
    (run,) = (workdir / "logs" / "train" / "runs").iterdir()
    (ref_run,) = (workdir / "logs" / "reference" / "runs").iterdir()
    record, ref = metrics(run), metrics(ref_run)
    assert [Path(r["checkpoint"]).name for r in record["resumes"]] == ["resume.ckpt"] * 2
    for key in ("best_epoch", "val", "test"):
        assert record[key] == ref[key], key
    got = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    want = torch.load(ref_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for key, tensor in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], tensor), key
    for (name, a), (_, b) in zip(
        _tensors(got["optimizer_states"]), _tensors(want["optimizer_states"]), strict=True
    ):
        assert torch.equal(a, b), f"optimizer state {name}"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_a_run_as_interrupted_with_the_command_that_continues_it(workdir, sig, code):
    args = ["debug=tiny", "epochs=40", "threads=1"]
    proc = start_cli(workdir, *args)
    deadline = time.monotonic() + 240
    while not list(workdir.glob("logs/train/runs/*/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.02)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C reaches the terminal's whole process group
    else:
        os.kill(proc.pid, sig)  # kill PID, a scheduler's or a container's stop
    assert proc.wait(timeout=120) == code
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and f"Interrupted by {sig.name}" in stderr
    command = stderr.strip().splitlines()[-1].strip()
    assert command == "python -m xray_loss.train " + " ".join(args) + " resume=true"
    (run,) = run_dirs(workdir / "logs")
    record = metrics(run)
    assert record["status"] == "interrupted" and record["interrupted"]["reason"] == sig.name
    # the printed command continues it
    assert_ok(run_cli(*command.split()[3:], cwd=workdir))
    record = metrics(run)
    assert record["status"] == "completed" and record["epochs_trained"] == 40
    assert record["resumes"][0]["interrupted"]["reason"] == sig.name
