"""Every private attribute of a library this project uses, in one place, with why, pinned: when a
release renames one, the test names it and what depends on it, instead of a resume that silently
stops being exact. (The running training metrics of a mid-epoch checkpoint and last.ckpt's
step go through public APIs now: tests/test_checkpoint_io.py.)

- Lightning ``trainer.fit_loop.epoch_loop.batch_progress.is_last_batch``, in
  ``callbacks.fit_end`` and ``runtime/checkpointing.ResumeCheckpoint``: whether the epoch ran
  to its end (``max_time`` can cut it); there is no public flag.
- Optuna ``Trial._trial_id``, in ``xray_loss/runtime/optuna_search.py``: a job reopens its trial by
  storage id; Optuna has no public accessor.
"""

from __future__ import annotations

import lightning as L
import optuna

PINNED = "private API used by xray_loss (tests/test_private_apis.py lists why): "


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
