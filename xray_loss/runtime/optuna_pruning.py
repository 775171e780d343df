"""Per-epoch reporting to an Optuna trial, so hopeless trials stop early (median pruner).

The ``hparams_search=optuna`` sweeper (``hydra_plugins/xray_loss_optuna``) gives every job
``+optuna_trial_id=N``; the job opens the study in the sweep's SQLite storage and reports its
validation AUROC after each epoch. A pruned job ends with ``status: pruned``.
"""

from __future__ import annotations

import lightning as L
import optuna
from hydra.core.hydra_config import HydraConfig


def trial_from_sweep(trial_id: int) -> optuna.trial.Trial:
    """The running trial ``trial_id`` of the sweep's study (storage from the sweeper config)."""
    sweeper = HydraConfig.get().sweeper
    study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
    return optuna.trial.Trial(study, int(trial_id))


class OptunaPruning(L.Callback):
    """Reports ``monitor`` after every validation and raises ``TrialPruned`` when told to."""

    def __init__(self, trial: optuna.trial.Trial, monitor: str = "val/auroc") -> None:
        self.trial = trial
        self.monitor = monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        epoch = trainer.current_epoch
        prune = False
        if trainer.is_global_zero:
            self.trial.report(value, step=epoch)
            prune = self.trial.should_prune()
        # every rank takes rank 0's decision, so DDP ranks stop together
        if trainer.strategy.broadcast(prune, src=0):
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.monitor}={value:.4f})")
