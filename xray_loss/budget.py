"""``trainer.max_time`` as a budget that ends at an epoch boundary, with a cosine schedule that
anneals into it; and the images a run saw.

Lightning's own ``max_time`` is a wall: its ``Timer`` stops the run at the first *step* past
the budget, in the middle of an epoch, and that cut epoch is still validated and can become the
best checkpoint of a model that saw part of it. An epoch-sized cosine schedule cut there ends
with the learning rate still high. :class:`TimeBudget` replaces that ``Timer`` (it is one:
Lightning then adds none, and says it ignores ``Trainer(max_time=...)``; the budget is the
same, ``conf/callbacks/default.yaml`` passes it on) and plans instead:

- *Pace.* Before the last training step of every epoch it estimates that epoch's time: the
  seconds per step of this epoch (its first step left out: start-up costs) times its steps,
  plus what the previous epoch spent outside training steps (validation, checkpoints). An epoch
  is planned at the median of the whole epochs after the first and this estimate, or at the
  estimate where that is slower (a slowdown counts at once, a single slow epoch not for good),
  with :data:`MARGIN`.
- *Plan.* The epochs that fit in all: this one plus those the time left after it holds. It may
  grow as well as shrink; a cosine ``CosineAnnealingLR`` is re-sized to it (never past its own
  ``T_max``) before it steps, so the learning rate of the next epoch already follows the plan.
  Until an epoch after the first has been timed whole, the plan keeps at least one more epoch.
- *Stop.* At the end of an epoch, when the plan ends with it (the cosine reaches 0 right after
  it) or the next epoch no longer fits (the epoch ran slower than planned); rank 0 decides for
  every rank. The last epoch is validated and checkpointed as usual. If an epoch runs past the
  budget anyway, the run stops at its end (never inside it) and ends late by that much.

When the budget is enough nothing is re-sized: the run is the epoch-sized one, exactly.
Annealing to zero at the budget beats an off-the-shelf schedule cut short (Li, Yumer and
Ramanan, "Budgeted Training", ICLR 2020). Re-sizing uses ``CosineAnnealingLR``'s documented
recursive form, lr_{t+1} = eta_min + (lr_t - eta_min) (1 + cos(pi (t+1) / T_max)) /
(1 + cos(pi t / T_max)): after ``T_max`` changes, the learning rate goes on from where it is,
along the new cosine's remaining shape, never rises, and is eta_min at ``t = T_max``.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import CosineAnnealingLR

log = logging.getLogger(__name__)

MARGIN = 1.05  # plan each coming epoch 5% longer than its pace


def pace(whole: list[float], estimate: float) -> float:
    """Seconds to plan per coming epoch: the median of the whole epochs after the first
    (``whole[1:]``) and this epoch's ``estimate``, or the estimate where it is slower."""
    return max(statistics.median([*whole[1:], estimate]), estimate)


def epochs_that_fit(epoch: int, left: float, seconds: float) -> int:
    """Epochs in all when epoch ``epoch`` (0-based) ends with ``left`` seconds of the budget
    and each coming epoch is planned at ``seconds`` x :data:`MARGIN`."""
    return epoch + 1 + max(0, math.floor(left / (seconds * MARGIN)))


@dataclass
class _Epoch:
    """The clock readings of the epoch under way in this process."""

    index: int
    first: float  # the clock at its first batch's start
    whole: bool  # this process saw its first batch (not resumed mid-epoch)
    second: tuple[int, float] | None = None  # the next batch: index and clock
    per_step: float | None = None  # seconds per training step (``whole`` epochs only)

    def seconds_per_step(self, batch_idx: int, now: float) -> float | None:
        """From the second batch (the first carries start-up costs) to ``batch_idx``, or from
        the first where the epoch has only two; None for a resumed or one-batch epoch."""
        if not self.whole or self.second is None:
            return None
        if batch_idx > self.second[0]:
            return (now - self.second[1]) / (batch_idx - self.second[0])
        return self.second[1] - self.first


class TimeBudget(Timer):
    """The run's ``Timer`` for ``trainer.max_time``, ending at epoch boundaries; sizes an
    epoch-wise cosine schedule to the budget; counts the images seen.

    ``clock``: seconds, monotonic (tests pass a fake one); every rank reads its own.
    """

    def __init__(
        self,
        duration: str | timedelta | Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            duration=dict(duration) if isinstance(duration, Mapping) else duration,
            interval="epoch",
        )
        self.clock = clock
        self.images = 0  # training images of this rank, across resumes (checkpointed)
        self.fit_images = 0  # ``images`` when the fit ended
        self.stopped = False  # the plan ended the run (at an epoch's end)
        self.plan: int | None = None  # epochs in all that fit, as last planned
        self.seconds: float | None = None  # the pace the plan used, seconds per epoch
        self.whole: list[float] = []  # seconds from an epoch's first batch to the next's
        self.step: list[float] = []  # seconds per training step of those epochs
        self._t_max: list[int] | None = None  # the cosine schedules' own lengths
        self._before = 0.0  # training seconds of earlier attempts (a resumed run)
        self._started: float | None = None
        self._ended: float | None = None
        self._epoch: _Epoch | None = None
        self._told = False  # the first re-sizing is logged at INFO, the others at DEBUG

    @staticmethod
    def of(trainer: L.Trainer) -> TimeBudget | None:
        return next((c for c in trainer.callbacks if isinstance(c, TimeBudget)), None)

    @staticmethod
    def images_seen(trainer: L.Trainer) -> int | None:
        """Training images of all ranks (equal shards), resumed attempts included, as the fit
        ended (testing the best checkpoint restores the callbacks' states of its epoch)."""
        budget = TimeBudget.of(trainer)
        return None if budget is None else budget.fit_images * trainer.world_size

    # --- the clock: Timer's, read from ``clock`` for the training stage ------------------------
    def time_elapsed(self, stage: str = RunningStage.TRAINING) -> float:
        if RunningStage(stage) != RunningStage.TRAINING:
            return super().time_elapsed(stage)
        if self._started is None:
            return self._before
        end = self._ended if self._ended is not None else self.clock()
        return end - self._started + self._before

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self.time_remaining() is not None:
            rank_zero_info(
                f"max_time: {timedelta(seconds=round(self.time_remaining()))} left; "
                "xray_loss.budget.TimeBudget keeps it and ends the run at an epoch boundary"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._started, self._ended = self.clock(), None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._ended = self.clock()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_images = self.images

    # --- timing, planning, stopping ----------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now, epoch = self.clock(), trainer.current_epoch
        current = self._epoch
        if current is None or current.index != epoch:
            if current is not None and current.index == epoch - 1 and current.per_step is not None:
                self.whole.append(now - current.first)
                self.step.append(current.per_step)
            current = self._epoch = _Epoch(epoch, first=now, whole=batch_idx == 0)
        elif current.second is None:
            current.second = (batch_idx, now)
        steps = trainer.num_training_batches
        if math.isfinite(steps) and batch_idx == steps - 1:
            current.per_step = current.seconds_per_step(batch_idx, now)
            if self.time_remaining() is not None:
                self._replan(trainer, batch_idx, int(steps))

    def _replan(self, trainer: L.Trainer, batch_idx: int, steps: int) -> None:
        """Before the epoch's last step (an epoch-wise scheduler steps right after it)."""
        epoch = trainer.current_epoch
        plan, seconds = None, None
        if trainer.is_global_zero:
            per_step = self._epoch.per_step
            if per_step is not None:
                outside = max(0.0, self.whole[-1] - steps * self.step[-1]) if self.whole else 0.0
                estimate = steps * per_step + outside
                left = self.time_remaining() - per_step * (steps - batch_idx) - outside
                seconds = pace(self.whole, estimate)
                plan = epochs_that_fit(epoch, left, seconds)
                if len(self.whole) < 2:  # no epoch after the first timed whole yet
                    plan = max(plan, epoch + 2)
        plan, seconds = trainer.strategy.broadcast((plan, seconds), 0)
        if plan is None:
            return
        self.plan, self.seconds = int(plan), float(seconds)
        cosine = [
            c.scheduler
            for c in trainer.lr_scheduler_configs
            if isinstance(c.scheduler, CosineAnnealingLR)
        ]
        if self._t_max is None:
            self._t_max = [s.T_max for s in cosine]
        for scheduler, own in zip(cosine, self._t_max, strict=True):
            t_max = min(own, self.plan)
            if t_max != scheduler.T_max:
                log.log(
                    logging.DEBUG if self._told else logging.INFO,
                    "max_time: %d epochs fit in all (of %d); the cosine schedule ends with them%s",
                    self.plan,
                    own,
                    "" if self._told else " (re-planned every epoch)",
                )
                self._told = True
                scheduler.T_max = t_max

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # Timer: the budget is spent
        if self.time_remaining() is None:
            return
        stop = False
        if trainer.is_global_zero and self.plan is not None:
            ends = trainer.current_epoch + 1 >= self.plan
            stop = ends or self.time_remaining() < self.seconds * MARGIN
        if trainer.strategy.broadcast(stop, 0):
            log.info("max_time: epoch %d is the last that fits", trainer.current_epoch + 1)
            self.stopped = True
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[0])

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "images": self.images,
            "whole": self.whole,
            "step": self.step,
            "plan": self.plan,
            "seconds": self.seconds,
            "t_max": self._t_max,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self._started is None:  # a resume; testing the best checkpoint leaves the clock alone
            elapsed = state.get("time_elapsed", {}).get(RunningStage.TRAINING.value, 0.0)
            self._before = float(elapsed)
        self.images = int(state.get("images", 0))
        self.whole = list(state.get("whole", []))
        self.step = list(state.get("step", []))
        self.plan = state.get("plan")
        self.seconds = state.get("seconds")
        self._t_max = state.get("t_max")
