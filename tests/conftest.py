"""Shared test helpers: run the command line, read run directories and TensorBoard events."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.in_process import run_in_process

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=tiny"]

# How the tests run the command line
# ----------------------------------
# run_cli(*args, module=..., cwd=...) is `python -m <module> args...` in `cwd` (logs/ and the
# cache go there) and returns a subprocess.CompletedProcess: exit status, text stdout, stderr.
#
# In this process (tests/in_process.py), by default: the module's own __main__ block runs
# through runpy with sys.argv set, so the overrides, Hydra's @hydra.main (-m multiruns on the
# basic launcher, the Hydra callbacks of conf/hydra/default.yaml, the Optuna sweeper), config
# errors (one sentence, exit 1) and exit codes are what a user gets; the process state a
# command touches is put back afterwards. This saves the ~7 s of importing Lightning and torch
# per command, and a command sees what the test patched (tests/test_extending.py adds a metric
# to xray_loss.metrics.SCORES). Every run_cli call not listed below runs this way. Tests that
# need only a trained run's result compose the config and call train() (test_config_folders).
#
# In a fresh interpreter (subprocess.run([sys.executable, "-m", ...])) where a separate process
# is the point:
# - by itself (_needs_a_process), for arguments that run jobs in other processes: a parallel or
#   cluster launcher (hydra/launcher=joblib: loky workers; submitit_local; slurm, as in
#   tests/cluster) and DDP (trainer=ddp or a ddp strategy: the ranks are processes);
# - run_cli(..., process=True): the smoke test of each entry point's real command line
#   (tests/test_entry_points.py: train, eval, predict, and in-process runs against them;
#   tests/test_report.py:test_report_command_line; tests/test_run_names.py: make tensorboard);
# - start_cli (below), for tests that signal or race their commands: SIGINT, SIGTERM, SIGKILL
#   and resume (tests/test_resume.py, tests/test_sweeps.py, tests/cluster), simultaneous runs
#   and sweeps (tests/test_train_cli.py, tests/test_concurrent_sweeps.py);
# - tests of what a process does at import or exit (tests/test_imports.py, tests/test_house.py,
#   tests/test_dir_lock.py) start their own.
_LAUNCHERS_IN_PROCESS = ("basic",)


def _needs_a_process(args: tuple[str, ...]) -> bool:
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "hydra/launcher" and value not in _LAUNCHERS_IN_PROCESS:
            return True
        if (key == "trainer" and value == "ddp") or (
            key == "trainer.strategy" and value.startswith("ddp")
        ):
            return True
    return False


def cli_env(cwd: Path, env: dict | None = None) -> dict[str, str]:
    """The environment of a command run in ``cwd``: this one, its decode cache in cwd/cache,
    unbuffered output, no HYDRA_FULL_ERROR (errors as a user sees them), then ``env``."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "XRAY_LOSS_CACHE": str(cwd / "cache")}
    full.pop("HYDRA_FULL_ERROR", None)
    return {**full, **(env or {})}


def run_cli(
    *args: str,
    cwd: Path,
    module: str = "xray_loss.train",
    timeout: float = 600,
    env: dict | None = None,
    process: bool = False,
) -> subprocess.CompletedProcess:
    """``python -m <module> args...`` in ``cwd``; returns the finished command (text output).

    In this process unless ``process`` or the arguments need one (see above); ``timeout``
    bounds a subprocess (pytest-timeout bounds the rest).
    """
    full_env = cli_env(cwd, env)
    if process or _needs_a_process(args):
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
    return run_in_process(module, list(args), cwd=Path(cwd), env=full_env)


def start_cli(
    cwd: Path,
    *args: str,
    module: str = "xray_loss.train",
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
) -> subprocess.Popen:
    """``python -m <module> args...`` started in ``cwd`` in a fresh interpreter, in a session
    of its own (``os.killpg(proc.pid, ...)`` signals it and its children), text output."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=cli_env(cwd),
        stdout=stdout,
        stderr=stderr,
        text=True,
        start_new_session=True,
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


def sweep_dirs(workdir: Path) -> list[Path]:
    """Every sweep directory (one holding multirun.yaml) under ``workdir/logs``."""
    return sorted(p.parent for p in workdir.glob("logs/*/multirun/*/multirun.yaml"))


def sweep_summary(sweep_dir: Path) -> list[dict]:
    """The rows of a sweep's sweep_summary.csv."""
    with open(sweep_dir / "sweep_summary.csv") as f:
        return list(csv.DictReader(f))


def events(run_dir: Path):
    """A run's TensorBoard events (its directory, or one event file), every scalar, tensor
    and image loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def hparams_data(events_or_dir, tag: str):
    """The HParams plugin's data under ``tag`` (``_hparams_/experiment``,
    ``_hparams_/session_start_info``) of a run directory or its loaded ``events``."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    ea = events(events_or_dir) if isinstance(events_or_dir, str | Path) else events_or_dir
    return plugin_data_pb2.HParamsPluginData.FromString(ea.PluginTagToContent("hparams")[tag])


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
