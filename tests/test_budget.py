"""A cosine schedule sized by trainer.max_time: it anneals to 0 when the clock ends the run,
and is the epoch-sized schedule, exactly, when the budget is enough (xray_loss.budget)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from tests.conftest import TINY, assert_ok, metrics, run_cli, run_dirs
from xray_loss.budget import MARGIN, epochs_that_fit


def test_epochs_that_fit_skip_the_warm_up_and_plan_at_the_slower_pace():
    assert epochs_that_fit(started=1, remaining=100.0, durations=[]) is None
    assert epochs_that_fit(started=2, remaining=100.0, durations=[30.0]) is None  # warm-up
    # epochs 0-1 done, epoch 2 begun: 2 + floor(100 / (10 * MARGIN)) = 2 + 9
    assert epochs_that_fit(started=3, remaining=100.0, durations=[30.0, 10.0]) == 11
    # a slow last epoch sets the pace, not the mean
    assert epochs_that_fit(started=4, remaining=100.0, durations=[30.0, 10.0, 20.0]) == 3 + 4
    pace = 10.0 * MARGIN
    assert epochs_that_fit(started=3, remaining=pace - 1e-6, durations=[30.0, 10.0]) == 2


def test_a_cosine_resized_mid_run_goes_on_from_its_lr_and_ends_at_zero_on_the_new_length():
    """The documented recursive form that TimeBudget relies on: after T_max shrinks, the lr
    neither jumps nor stops short; it is 0 at the new T_max."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cosine = CosineAnnealingLR(opt, T_max=10)
    lrs = [opt.param_groups[0]["lr"]]
    for epoch in range(1, 6):
        if epoch == 3:
            cosine.T_max = 5
        opt.step()
        cosine.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:3] == pytest.approx([(1 + math.cos(math.pi * e / 10)) / 2 for e in range(3)])
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # falls, no jump up
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


COSINE = [*TINY, "scheduler=cosine", "lr=0.01", "batch_size=32"]


@pytest.mark.slow
def test_a_budget_that_cuts_the_schedule_anneals_to_zero_and_says_so(workdir):
    # 1000 epochs cannot fit in 10 s: the schedule is re-sized to the epochs that do
    assert_ok(run_cli(*COSINE, "epochs=1000", "+trainer.max_time=00:00:00:10", cwd=workdir))
    record = metrics(run_dirs(workdir)[0])
    assert record["stopped_by"] == "max_time"
    assert 3 <= record["epochs_trained"] < 1000
    assert record["final_lr"] == pytest.approx(0.0, abs=1e-9)
    # what it saw: every step a full batch (256 images, batch 32: 8 steps an epoch)
    assert record["steps"] == 8 * record["epochs_trained"]
    assert record["images_seen"] == 32 * record["steps"]


@pytest.mark.slow
def test_a_budget_that_is_enough_leaves_the_epoch_sized_schedule_exactly(workdir):
    plain, budgeted = workdir / "plain", workdir / "budgeted"
    plain.mkdir(), budgeted.mkdir()
    assert_ok(run_cli(*COSINE, "epochs=3", cwd=plain))
    assert_ok(run_cli(*COSINE, "epochs=3", "+trainer.max_time=00:01:00:00", cwd=budgeted))
    a, b = metrics(run_dirs(plain)[0]), metrics(run_dirs(budgeted)[0])
    assert b["stopped_by"] == a["stopped_by"] == "max_epochs"
    assert b["final_lr"] == a["final_lr"] == pytest.approx(0.0, abs=1e-12)
    assert b["test"] == a["test"] and b["val"] == a["val"]  # the same run, number for number
