"""Optuna is an optional part (the ``optuna`` extra): without it a run, a grid sweep and the
report work, and ``hparams_search=optuna`` says in one sentence what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import cli_env, sweep_dirs

pytestmark = pytest.mark.slow

# python -m xray_loss.train as an install without optuna runs it: importing optuna fails
WITHOUT_OPTUNA = (
    "import runpy, sys; sys.modules['optuna'] = None; sys.argv = ['train', *sys.argv[1:]]; "
    "runpy.run_module('xray_loss.train', run_name='__main__')"
)


def _train(cwd, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", WITHOUT_OPTUNA, *args]
    return subprocess.run(command, cwd=cwd, env=cli_env(cwd), capture_output=True, text=True)


def test_without_optuna_a_grid_sweep_trains_and_a_search_names_the_extra(tmp_path):
    done = _train(tmp_path, "-m", "debug=tiny", "epochs=1", "loss=bce,ce")
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = sweep_dirs(tmp_path)
    assert len(list(sweep.glob("*/metrics.json"))) == 2
    refused = _train(tmp_path, "-m", "hparams_search=optuna", "debug=tiny", "epochs=1")
    assert refused.returncode != 0
    assert "pip install -e '.[optuna]'" in refused.stderr
    assert "Traceback" not in refused.stderr
