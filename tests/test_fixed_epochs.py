"""Epoch budgets test the weights of the budget's own epoch beside the best checkpoint within
it: where selection keeps the last epoch, the two are the same model and the same numbers."""

from __future__ import annotations

import pytest

from tests.conftest import assert_ok, metrics, run_cli, run_dirs

pytestmark = pytest.mark.slow


def test_each_budget_tests_its_own_epoch_beside_its_best_checkpoint(tmp_path):
    # the checkpoint's metric is the epoch count: the best checkpoint is always the last one
    args = ["debug=tiny", "epochs=3", "budgets=[1,3]", "callbacks.model_checkpoint.monitor=step"]
    assert_ok(run_cli(*args, cwd=tmp_path))
    (run,) = run_dirs(tmp_path)
    budgets = metrics(run)["budgets"]
    for nominal in ("1", "3"):
        assert budgets[nominal]["best_epoch"] == int(nominal)
        assert budgets[nominal]["last_test"] == budgets[nominal]["test"]
        kept = run / f"test_predictions_epoch{int(nominal):03d}_last.csv"
        best = run / f"test_predictions_epoch{int(nominal):03d}.csv"
        assert kept.read_text() == best.read_text()
    assert budgets["1"]["last_test"] != budgets["3"]["last_test"]  # two models, not one
