"""A cosine schedule that ends when the clock does (``trainer.max_time``), and the images a run
saw.

Without ``max_time`` a cosine schedule is sized in epochs (``T_max = max_epochs``) and nothing
here changes it. With ``max_time``, an epoch-sized schedule is cut wherever the clock stops it:
on a machine slower or busier than the one the recipe was tuned on, the run ends with the
learning rate still high and ships an un-annealed model. So after every epoch
:class:`TimeBudget` measures the fit's pace (Lightning's ``Timer``: validation included),
counts the epochs that still fit into the time left, and when that is fewer than planned
re-sizes the schedule to them and stops after the last one: the learning rate reaches its floor
(0) at the end of the last epoch that fits, which is validated and checkpointed as usual.
Annealing to zero at the budget beats an off-the-shelf schedule cut short (Li, Yumer and
Ramanan, "Budgeted Training", ICLR 2020). When the budget is enough, nothing is re-sized: the
run is the epoch-sized one, exactly.

Re-sizing uses ``CosineAnnealingLR``'s documented recursive form, lr_{t+1} = eta_min +
(lr_t - eta_min) (1 + cos(pi (t+1) / T_max)) / (1 + cos(pi t / T_max)): after ``T_max`` changes,
the learning rate goes on from where it is, along the new cosine's remaining shape, and is
eta_min at ``t = T_max``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer
from torch.optim.lr_scheduler import CosineAnnealingLR

log = logging.getLogger(__name__)

MARGIN = 1.05  # plan each remaining epoch 5% longer than the measured pace


def epochs_that_fit(started: int, remaining: float, durations: list[float]) -> int | None:
    """How many epochs the run completes in all, when ``started`` epochs have begun (the one
    under way included) and ``remaining`` seconds are left; None during the warm-up (one epoch
    timed: the first, with the start-up costs in it, is no pace).

    The pace: the last epoch or the mean of those after the first, whichever is slower, with
    :data:`MARGIN`. An epoch's time is from its start to the next one's: validation and
    checkpointing included."""
    if len(durations) < 2:
        return None
    pace = max(durations[-1], sum(durations[1:]) / len(durations[1:])) * MARGIN
    return started - 1 + math.floor(remaining / pace)


class TimeBudget(L.Callback):
    """Sizes an epoch-wise cosine schedule to ``trainer.max_time``; counts the images seen."""

    def __init__(self) -> None:
        self.images = 0  # training images of this rank, across resumes (checkpointed)
        self.fit_images = 0  # ``images`` when the fit ended
        self.stopped = False  # the run stopped after the last epoch that fits its budget
        self.last: int | None = None  # index of the last epoch, once the budget decides it
        self.durations: list[float] = []  # seconds of each completed epoch, validation included
        self._epoch_start: float | None = None

    @staticmethod
    def of(trainer: L.Trainer) -> TimeBudget | None:
        return next((c for c in trainer.callbacks if isinstance(c, TimeBudget)), None)

    @staticmethod
    def images_seen(trainer: L.Trainer) -> int | None:
        """Training images of all ranks (equal shards), resumed attempts included, as the fit
        ended (testing the best checkpoint restores the callbacks' states of its epoch)."""
        budget = TimeBudget.of(trainer)
        return None if budget is None else budget.fit_images * trainer.world_size

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_images = self.images

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[0])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Re-size before the epoch: Lightning steps an epoch-wise scheduler right after the
        epoch's last optimizer step, before any epoch-end hook."""
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        cosine = [
            c.scheduler
            for c in trainer.lr_scheduler_configs
            if isinstance(c.scheduler, CosineAnnealingLR)
        ]
        if timer is None or not cosine or trainer.max_epochs is None:
            return
        elapsed = timer.time_elapsed("train")
        if self._epoch_start is not None:
            self.durations.append(elapsed - self._epoch_start)
        self._epoch_start = elapsed
        epoch = trainer.current_epoch
        fit = epochs_that_fit(epoch + 1, timer.time_remaining("train") or 0.0, self.durations)
        if fit is None or fit >= trainer.max_epochs:
            return
        fit = int(trainer.strategy.broadcast(fit, 0))  # DDP ranks follow rank 0's clock
        if fit <= epoch:
            log.warning("max_time: epoch %d will not finish in the time left", epoch + 1)
            return
        for scheduler in cosine:
            if fit < scheduler.T_max:
                log.info(
                    "max_time: %d epochs fit in all (of %d); the cosine schedule ends with them",
                    fit,
                    trainer.max_epochs,
                )
                scheduler.T_max = fit
        # the schedule only ever shrinks (past T_max a cosine climbs again): stop at its end
        self.last = min(s.T_max for s in cosine) - 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.last is not None and trainer.current_epoch >= self.last:
            self.stopped = True
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "durations": self.durations,
            "start": self._epoch_start,
            "last": self.last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images = int(state.get("images", 0))
        self.durations = list(state.get("durations", []))
        self._epoch_start = state.get("start")
        self.last = state.get("last")
