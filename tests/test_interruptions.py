"""Interruptions that can be continued: whatever stops a run or sweep (SIGTERM between jobs or
while the decode cache is built, Ctrl-C before the first checkpoint, a full disk, a damaged
last.ckpt), the command it prints, or that its message names, works; a resume that would mix
two setups is refused in one sentence, the run left as it was.

Each case stops a command in a process of its own (a signal to itself must not reach pytest)
through a hook of tests/signal_hooks.py, then runs what the message says, as a user would.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    ROOT,
    TINY,
    assert_ok,
    metrics,
    run_cli,
    run_dirs,
    sweep_dirs,
    sweep_summary,
)
from tests.fixtures import kermany_cli, make_kermany

pytestmark = pytest.mark.slow

HOOKS = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
SMALL = ["model.backbone.widths=[8,16]", "callbacks.progress_bar.refresh_rate=0", "batch_size=16"]


def stop(*args: str, cwd: Path):
    """The command in a process of its own, its hooks armed."""
    return run_cli(*args, cwd=cwd, env={**HOOKS, "XRAY_LOSS_TEST_HOOKS": "1"}, process=True)


def printed(proc) -> list[str]:
    """The arguments of the command an interrupted run printed last."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1].strip()
    assert line.startswith("python -m xray_loss.train "), proc.stderr[-3000:]
    return shlex.split(line)[3:]


def signal_at(signal: str, **when: int) -> list[str]:
    """The overrides of a run that sends itself ``signal`` (``step=N`` or ``epoch=N``)."""
    when = {"signal": signal, **when}
    return ["+callbacks.stop._target_=signal_hooks.SignalAt"] + [
        f"+callbacks.stop.{k}={v}" for k, v in when.items()
    ]


def sigterm_between_sweep_jobs(workdir: Path, signal: str = "SIGTERM") -> None:
    hook = "+hydra.callbacks.stop._target_=signal_hooks.SignalAfterFirstJob"
    args = ["-m", *TINY, "epochs=1", "lr=1e-3,2e-3", hook, f"+hydra.callbacks.stop.signal={signal}"]
    first = stop(*args, cwd=workdir)
    assert first.returncode == {"SIGTERM": 143, "SIGINT": 130}[signal], first.stderr[-3000:]
    assert f"Interrupted by {signal}: the sweep stopped with 1 of 1" in first.stderr
    (sweep,) = sweep_dirs(workdir)
    assert [(r["job"], r["status"]) for r in sweep_summary(sweep)] == [("lr=0.001", "completed")]
    finished = metrics(sweep / "lr=0.001")["finished"]
    assert printed(first) == [*args, "resume=true"]
    assert_ok(run_cli(*printed(first), cwd=workdir))
    statuses = {r["job"]: r["status"] for r in sweep_summary(sweep)}
    assert statuses == {"lr=0.001": "completed", "lr=0.002": "completed"}
    assert metrics(sweep / "lr=0.001")["finished"] == finished  # kept, not trained again


def ctrl_c_between_sweep_jobs(workdir: Path) -> None:
    sigterm_between_sweep_jobs(workdir, "SIGINT")


def sigterm_while_the_cache_is_built(workdir: Path) -> None:
    root = make_kermany(workdir / "chest_xray", test=False)
    hook = "+hydra.callbacks.stop._target_=signal_hooks.SignalWhileDecoding"
    args = [*kermany_cli(root), *SMALL, "epochs=1", hook]
    first = stop(*args, cwd=workdir)
    assert first.returncode == 143 and "Interrupted by SIGTERM" in first.stderr, first.stderr
    (run,) = run_dirs(workdir / "logs")
    assert metrics(run)["status"] == "interrupted"
    assert not list((workdir / "cache").glob(".*.tmp"))  # the half-built store went with it
    assert printed(first) == args  # nothing to continue from: the command starts it again
    assert_ok(run_cli(*printed(first), cwd=workdir))
    assert sorted(metrics(r)["status"] for r in run_dirs(workdir / "logs")) == [
        "completed",
        "interrupted",
    ]


def ctrl_c_before_the_first_checkpoint(workdir: Path) -> None:
    args = [*TINY, "epochs=2", *signal_at("SIGINT", step=2)]
    first = stop(*args, cwd=workdir)
    assert first.returncode == 130, first.stderr[-3000:]
    assert_ok(run_cli(*printed(first), cwd=workdir))
    done = [r for r in run_dirs(workdir / "logs") if metrics(r)["status"] == "completed"]
    assert len(done) == 1 and metrics(done[0])["epochs_trained"] == 2


def a_full_disk(workdir: Path) -> None:
    args = [*TINY, "epochs=2", "+callbacks.disk._target_=signal_hooks.DiskFullAtEpoch"]
    first = stop(*args, "+callbacks.disk.epoch=1", cwd=workdir)
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr[-3000:]
    assert "resume=true continues from the newest" in first.stderr
    assert_ok(run_cli(*args, "+callbacks.disk.epoch=1", "resume=true", cwd=workdir))
    (run,) = run_dirs(workdir / "logs")
    record = metrics(run)
    assert record["status"] == "completed" and record["epochs_trained"] == 2
    assert Path(record["resumes"][0]["checkpoint"]).name == "last.ckpt"  # the saved epoch


def a_last_checkpoint_holding_code(workdir: Path) -> None:
    args = [*TINY, "epochs=2", "checkpoint_every_n_steps=2", *signal_at("SIGTERM", step=6)]
    first = stop(*args, cwd=workdir)
    assert first.returncode == 143, first.stderr[-3000:]
    (run,) = run_dirs(workdir / "logs")
    last = run / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": print}, last)  # pickled code, never run: refused by name
    refused = run_cli(*printed(first), cwd=workdir)
    assert refused.returncode == 1 and "last.ckpt is not a plain" in refused.stderr
    assert "Remove it; resume=true then continues from the newest other" in refused.stderr
    last.unlink()
    assert_ok(run_cli(*printed(first), cwd=workdir))
    record = metrics(run)
    assert record["status"] == "completed" and record["epochs_trained"] == 2
    assert Path(record["resumes"][-1]["checkpoint"]).name == "resume.ckpt"


def a_truncated_last_checkpoint(workdir: Path) -> None:
    args = [*TINY, "epochs=2", *signal_at("SIGTERM", epoch=1)]
    first = stop(*args, cwd=workdir)
    assert first.returncode == 143, first.stderr[-3000:]
    (run,) = run_dirs(workdir / "logs")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # cut short
    refused = run_cli(*printed(first), cwd=workdir)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "checkpoints/last.ckpt is damaged (cut short" in refused.stderr
    assert "start it again without resume=true" in refused.stderr
    assert_ok(run_cli(*args, cwd=workdir))


def resume_with_another_data_root(workdir: Path) -> None:
    root = make_kermany(workdir / "a", test=False)
    other = make_kermany(workdir / "b", test=False, seed=1)
    args = [*kermany_cli(root), *SMALL, "epochs=2", *signal_at("SIGTERM", epoch=1)]
    first = stop(*args, cwd=workdir)
    assert first.returncode == 143, first.stderr[-3000:]
    (run,) = run_dirs(workdir / "logs")
    before = metrics(run)
    mixed = [f"data.root={other}" if a == f"data.root={root}" else a for a in printed(first)]
    refused = run_cli(*mixed, cwd=workdir)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "resume=true refused: data.root is" in refused.stderr
    assert metrics(run) == before  # as it was: the right command still continues it
    assert_ok(run_cli(*printed(first), cwd=workdir))
    record = metrics(run)
    assert record["status"] == "completed" and len(record["resumes"]) == 1
    assert record["configuration"]["data.root"] == str(root)


CASES = [
    sigterm_between_sweep_jobs,
    ctrl_c_between_sweep_jobs,
    sigterm_while_the_cache_is_built,
    ctrl_c_before_the_first_checkpoint,
    a_full_disk,
    a_last_checkpoint_holding_code,
    a_truncated_last_checkpoint,
    resume_with_another_data_root,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_what_an_interruption_says_to_run_works(workdir, case):
    case(workdir)
