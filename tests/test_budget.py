"""trainer.max_time as a budget (xray_loss.budget.TimeBudget): the run ends at an epoch boundary
with a cosine schedule that anneals into it, the budget is used, the epoch-sized schedule is
left exactly when the budget is enough, and DDP ranks follow rank 0's clock.

The planning is driven with a fake clock through a real Trainer: a callback advances the clock
by the seconds each epoch should take (80% over its training steps, 20% validating)."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from datetime import timedelta

import lightning as L
import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import ROOT, TINY, assert_ok, events, metrics, run_cli, run_dirs
from xray_loss.budget import MARGIN, TimeBudget, epochs_that_fit, pace

STEPS = 4  # training steps per epoch of the fake-clock runs
BUDGET = 180.0  # seconds


def test_the_pace_is_robust_to_one_slow_epoch_and_follows_a_slowdown_at_once():
    assert pace([], 20.0) == 20.0
    assert pace([60.0, 40.0, 20.0, 20.0], 20.0) == 20.0  # one slow epoch 1: the median
    assert pace([60.0, 20.0, 20.0, 20.0], 30.0) == 30.0  # this epoch is slower: it
    # epoch 2 ends with 100 s left: 2 + 1 + floor(100 / (20 * MARGIN)) epochs in all
    assert epochs_that_fit(2, 100.0, 20.0) == 3 + 4
    assert epochs_that_fit(2, 20.0 * MARGIN - 1e-6, 20.0) == 3  # the next one does not fit
    assert epochs_that_fit(2, -5.0, 20.0) == 3


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


# --- a real Trainer on a fake clock -----------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Paced(L.Callback):
    """Epoch ``e`` takes ``seconds(e)`` on the fake clock: 80% in its training steps, 20% in
    validation (``jump``: seconds added after that step of that epoch, mid-epoch)."""

    def __init__(self, clock: FakeClock, seconds: Callable[[int], float], jump=None) -> None:
        self.clock, self.seconds, self.jump = clock, seconds, jump or {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.now += 0.8 * self.seconds(trainer.current_epoch) / STEPS
        self.clock.now += self.jump.get((trainer.current_epoch, batch_idx), 0.0)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.clock.now += 0.2 * self.seconds(trainer.current_epoch)


class Model(L.LightningModule):
    """SGD at lr 1 with an epoch-sized cosine; validation improves every epoch (val/score)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.layer, self.epochs, self.lrs = torch.nn.Linear(1, 1), epochs, []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum() * 0.0

    def validation_step(self, batch, batch_idx) -> None:
        self.log("val/score", float(self.current_epoch))

    def on_train_epoch_start(self) -> None:
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        cosine = CosineAnnealingLR(opt, T_max=self.epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "epoch"}}

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(STEPS, 1)), batch_size=1)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(1, 1)), batch_size=1)


def fit(seconds, budget=BUDGET, epochs=500, jump=None, callbacks=()) -> dict:
    """Fits on the fake clock; what the run did."""
    clock = FakeClock()
    timer = TimeBudget(duration=budget and timedelta(seconds=budget), clock=clock)
    model = Model(epochs)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[Paced(clock, seconds, jump), timer, *callbacks],
        logger=False,
        enable_checkpointing=bool(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        default_root_dir=None,
    )
    trainer.fit(model)
    return {
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "seconds": clock.now,
        "lrs": model.lrs,
        "t_max": trainer.lr_scheduler_configs[0].scheduler.T_max,
        "stopped": timer.stopped,
        "trainer": trainer,
    }


def cosine(epochs: int) -> list[float]:
    return [(1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]


def assert_ends_with_its_plan(run: dict, pace_seconds: float) -> None:
    """Ended by the plan at an epoch boundary, inside the budget, with too little left for
    another epoch; the cosine falls throughout and reaches 0 right after the last epoch."""
    assert run["stopped"] and run["steps"] == STEPS * run["epochs"]
    assert run["seconds"] <= BUDGET
    assert BUDGET - run["seconds"] < pace_seconds * MARGIN  # the next epoch did not fit
    assert run["t_max"] == run["epochs"]  # lr 0 right after the last trained epoch
    lrs = run["lrs"]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False)), lrs


def test_constant_epochs_use_the_budget_and_anneal_exactly_like_a_cosine_of_that_length():
    run = fit(lambda e: 20.0)
    assert_ends_with_its_plan(run, 20.0)
    assert run["epochs"] == 8  # 9 would need all 180 s and the 5% margin
    assert run["lrs"][-1] == pytest.approx(cosine(8)[-1], abs=0.005)


def test_one_slow_epoch_1_does_not_shrink_the_plan_for_good():
    run = fit(lambda e: 40.0 if e == 1 else 20.0)
    assert_ends_with_its_plan(run, 20.0)
    assert run["epochs"] == 7  # 20 + 40 + 5 x 20 = 160 s: the plan grew back
    assert run["lrs"][-1] < 0.05


def test_when_three_epochs_fit_the_run_anneals_over_them():
    run = fit(lambda e: 55.0)
    assert_ends_with_its_plan(run, 55.0)
    assert run["lrs"] == pytest.approx(cosine(3))  # 1, 0.75, 0.25: planned from epoch 0's steps


def test_a_late_slowdown_ends_the_run_with_its_plan_not_with_the_clock():
    run = fit(lambda e: 20.0 if e < 5 else 30.0)
    assert_ends_with_its_plan(run, 30.0)
    assert run["lrs"][-1] < 0.1


def test_noisy_epochs_use_the_budget_and_each_run_ends_with_its_plan():
    used = []
    for seed in range(20):
        rng = random.Random(seed)
        seconds = [20.0 * rng.uniform(0.7, 1.3) for _ in range(20)]
        run = fit(lambda e, s=seconds: s[e])
        assert run["stopped"] and run["seconds"] <= BUDGET, seed
        assert run["t_max"] == run["epochs"] and run["lrs"][-1] < 0.1, seed
        used.append(run["seconds"] / BUDGET)
    assert sum(used) / len(used) > 0.9


def test_a_budget_that_is_enough_leaves_the_epoch_sized_cosine_untouched():
    run = fit(lambda e: 20.0, budget=3600.0, epochs=5)
    assert not run["stopped"] and run["epochs"] == 5 and run["t_max"] == 5
    assert run["lrs"] == fit(lambda e: 20.0, budget=None, epochs=5)["lrs"]  # exactly


def test_an_epoch_that_overruns_the_budget_is_finished_and_no_cut_epoch_is_checkpointed(tmp_path):
    """Epoch 3 stalls after its second step past the whole budget: the run still ends at the
    epoch's end (every step trained), and the best checkpoint is of a complete epoch."""
    best = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="val/score", mode="max")
    run = fit(lambda e: 20.0, jump={(3, 1): BUDGET}, callbacks=[best])
    assert run["epochs"] == 4 and run["steps"] == STEPS * 4  # ended at the boundary
    assert run["seconds"] > BUDGET  # late by the stall, never cut
    assert best.best_model_score == 3.0 and "epoch=3" in best.best_model_path
    assert torch.load(best.best_model_path, weights_only=False)["epoch"] + 1 <= run["epochs"]


def test_lightning_adds_no_mid_epoch_timer_beside_the_budget():
    budget = TimeBudget(duration="00:00:03:00")
    trainer = L.Trainer(max_time="00:00:03:00", callbacks=[budget], logger=False)
    timers = [c for c in trainer.callbacks if isinstance(c, L.pytorch.callbacks.Timer)]
    assert timers == [budget] and budget.time_remaining() == 180.0


def test_a_resume_goes_on_with_the_clock_and_testing_a_checkpoint_leaves_it_alone():
    budget = TimeBudget.of(fit(lambda e: 20.0)["trainer"])
    spent, state = budget.time_elapsed(), budget.state_dict()
    budget.load_state_dict({**state, "time_elapsed": {"train": 1.0}})  # the best epoch's
    assert budget.time_elapsed() == spent == 160.0
    resumed = TimeBudget(duration="00:00:03:00", clock=FakeClock())
    resumed.load_state_dict(state)
    assert resumed.time_remaining() == 20.0


# --- the command line ---------------------------------------------------------------------
class SlowStep(L.Callback):
    """For the command-line test: one training step of ``epoch`` sleeps ``seconds`` (real)."""

    def __init__(self, epoch: int, seconds: float) -> None:
        self.epoch, self.seconds = int(epoch), float(seconds)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            time.sleep(self.seconds)


@pytest.mark.slow
def test_the_clock_never_cuts_an_epoch_so_the_best_epoch_was_trained_whole(workdir):
    """The issue's run (debug=tiny epochs=500 lr=3e-3, 6 s), with epoch 2 stalling mid-epoch
    past the budget: Lightning's own Timer cut it there and validated the cut epoch."""
    slow = ["+callbacks.slow._target_=tests.test_budget.SlowStep", "+callbacks.slow.epoch=2"]
    args = [*TINY, "epochs=500", "lr=3e-3", "+trainer.max_time=00:00:00:06", *slow]
    proc = run_cli(*args, "+callbacks.slow.seconds=7", cwd=workdir)
    assert_ok(proc)
    said = proc.stdout + proc.stderr
    assert "TimeBudget keeps it" in said and "Ignoring `Trainer(max_time" not in said  # ours only
    record = metrics(run_dirs(workdir)[0])
    assert record["stopped_by"] == "max_time"
    assert record["steps"] == 4 * record["epochs_trained"]  # 4 steps an epoch: none cut
    assert record["best_epoch"] <= record["epochs_trained"]


COSINE = [*TINY, "scheduler=cosine", "lr=0.01", "batch_size=32"]


@pytest.mark.slow
def test_a_budget_that_cuts_the_schedule_anneals_to_zero_and_says_so(workdir):
    # 1000 epochs cannot fit in 10 s: the schedule is re-sized to the epochs that do
    assert_ok(run_cli(*COSINE, "epochs=1000", "+trainer.max_time=00:00:00:10", cwd=workdir))
    (run,) = run_dirs(workdir)
    record = metrics(run)
    assert record["stopped_by"] == "max_time"
    assert 3 <= record["epochs_trained"] < 1000
    # the lr each epoch trained at falls throughout; the last one is what the record says
    lrs = [e.value for e in events(run).Scalars("train/lr")]
    assert len(lrs) == record["epochs_trained"]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False)), lrs
    # how far it falls depends on how steady this machine's epochs are: the fake-clock tests
    # above pin the annealing itself
    assert record["final_lr"] == pytest.approx(lrs[-1], rel=1e-6) and lrs[-1] < lrs[0], lrs
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
    assert b["final_lr"] == a["final_lr"] == pytest.approx(0.01 * cosine(3)[-1])  # epoch 3's
    assert b["test"] == a["test"] and b["val"] == a["val"]  # the same run, number for number


# --- DDP: every rank follows rank 0 -----------------------------------------------------------
class RankClock:
    """Rank 0's clock runs ``speed`` times faster than the others': the ranks disagree on how
    much of the budget is left, as on machines whose clocks drift or start apart."""

    def __init__(self, speed: float) -> None:
        self.speed = float(speed)

    def __call__(self) -> float:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank()
        else:
            rank = int(os.environ.get("LOCAL_RANK", 0))
        return time.monotonic() * (self.speed if rank == 0 else 1.0)


@pytest.mark.slow
def test_ddp_ranks_whose_clocks_differ_stop_together_at_rank_0s_plan(workdir):
    """2 gloo ranks; rank 0 spends its 5-minute budget in about 6 s, rank 1 sees it all left.
    The old callback returned on rank 1 before the broadcast that rank 0 entered: a hang."""
    clock = ["+callbacks.time_budget.clock._target_=tests.test_budget.RankClock"]
    proc = run_cli(
        *COSINE,
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "epochs=500",
        "+trainer.max_time=00:00:05:00",
        *clock,
        "+callbacks.time_budget.clock.speed=50",
        cwd=workdir,
        env={"PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert_ok(proc)
    (run,) = run_dirs(workdir)
    record = metrics(run)
    assert record["world_size"] == 2 and record["stopped_by"] == "max_time"
    assert 2 <= record["epochs_trained"] < 500
    assert record["steps"] == 4 * record["epochs_trained"]  # 128 images a rank, batch 32
