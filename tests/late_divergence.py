"""A callback for tests only: the training loss "diverges" at a chosen epoch, the way
``DivergenceGuard`` reports it (``+callbacks.late._target_=late_divergence.DivergeAt``)."""

from __future__ import annotations

import lightning as L

from xray_loss.runtime.record import TrainingDiverged


class DivergeAt(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise TrainingDiverged(f"Training diverged: injected in epoch {self.epoch}")
