"""Every private attribute of a library this project uses, in one place, with why, pinned: when a
release renames one, the test names it and what depends on it, instead of a resume that silently
stops being exact.

- torchmetrics ``Metric._update_count``, ``Metric._defaults``, ``Metric._computed``, in
  ``runtime/checkpointing.ResumeCheckpoint``: a mid-epoch checkpoint carries the running
  training metrics; ``persistent(True)`` would put their states in the module's ``state_dict``
  (every earlier checkpoint would then fail a strict load) and drops the update count.
- Lightning ``ModelCheckpoint._last_global_step_saved``, in
  ``runtime/checkpointing.LastCheckpoint.saved_at``: whether last.ckpt is already at the final
  step; ``ModelCheckpoint`` keeps it only privately.
- Lightning ``trainer.fit_loop.epoch_loop.batch_progress.is_last_batch``, in
  ``callbacks.fit_end`` and ``runtime/checkpointing.ResumeCheckpoint``: whether the epoch ran
  to its end (``max_time`` can cut it); there is no public flag.
- Optuna ``Trial._trial_id``, in ``hydra_plugins/xray_loss_optuna``: a job reopens its trial by
  storage id; Optuna has no public accessor.
"""

from __future__ import annotations

import lightning as L
import optuna
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torchmetrics.classification import BinaryAccuracy

PINNED = "private API used by xray_loss (tests/test_private_apis.py lists why): "


def test_torchmetrics_metric_keeps_its_update_count_defaults_and_cached_result():
    metric = BinaryAccuracy()
    assert hasattr(metric, "_defaults") and "tp" in metric._defaults, PINNED + "Metric._defaults"
    metric.update(torch.tensor([1, 0]), torch.tensor([1, 1]))
    assert metric._update_count == 1, PINNED + "Metric._update_count"
    metric.compute()
    assert metric._computed is not None, PINNED + "Metric._computed"
    metric._computed = None  # what a restore does: the next compute() reads the states
    assert float(metric.compute()) == pytest.approx(0.5)


def test_model_checkpoint_remembers_the_step_of_its_last_save():
    assert hasattr(ModelCheckpoint(), "_last_global_step_saved"), (
        PINNED + "ModelCheckpoint._last_global_step_saved"
    )


def test_the_fit_loop_knows_whether_the_epoch_reached_its_last_batch():
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert isinstance(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch, bool), (
        PINNED + "trainer.fit_loop.epoch_loop.batch_progress.is_last_batch"
    )


def test_an_optuna_trial_carries_its_storage_id():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study().ask()
    assert isinstance(trial._trial_id, int), PINNED + "Trial._trial_id"
    assert optuna.trial.Trial(trial.study, trial._trial_id).number == trial.number
