"""Exact resume, the checkpoint side: what a checkpoint holds beyond weights, optimizer and
Lightning's loop state, and checkpoints in the middle of epochs, also when SLURM preempts a job.

A resumed run ends with the weights and metrics of the run that was never interrupted: the data
order comes back with the training sampler (``xray_loss.data.order``), the global RNG states
(augmentation, dropout) and the epoch's running training metrics with ``ResumeCheckpoint``;
``xray_loss.runtime.resume`` picks the checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import move_data_to_device
from torchmetrics import Metric

from xray_loss.atomic import atomic_path
from xray_loss.runtime.record import RunStopped
from xray_loss.runtime.resume import Preempted
from xray_loss.runtime.slurm import job_id, requeue_slurm_job

log = logging.getLogger(__name__)


def rng_states() -> dict[str, Any]:
    """The global RNG states (torch, CUDA, numpy, python) as tensors and plain values, so a
    checkpoint holding them still loads with ``weights_only=True``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint written to a temp file and renamed over its name (the trainer's
    ``plugins``): a full or read-only disk leaves the previous checkpoint intact, never a
    truncated one under the real name, and stops the run with one sentence naming the path.
    A checkpoint that cannot be loaded without running pickled code is refused, named."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        try:
            with atomic_path(path) as tmp:
                super().save_checkpoint(checkpoint, tmp, storage_options)
        except OSError as err:
            raise RunStopped(
                f"Could not write the checkpoint {path} ({err.strerror or err}): free space on "
                f"that disk or make {path.parent} writable; the checkpoints already there are "
                f"intact, and resume=true continues from the newest.",
                resumable=True,
            ) from None

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except (OSError, EOFError) as err:
            problem = f"cannot be read ({err})"
        except Exception as err:  # noqa: BLE001 - torch names pickle payloads in many ways
            problem = f"is not a plain xray_loss checkpoint ({type(err).__name__})"
        raise RunStopped(
            f"The checkpoint {path} {problem}: it is damaged or holds pickled code, which is never "
            f"run. Remove it; resume=true then continues from the newest other checkpoint.",
            resumable=True,
        ) from None


class LastCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt``, what an interrupted run resumes from: every
    ``every_n_epochs`` epochs and when training ends.

    Writing it is per-epoch work that a sweep of short GPU epochs pays on every epoch (a
    ResNet-18 with Adam's state is ~130 MB); with k > 1 a resumed run repeats at most k - 1
    epochs, and ends as the uninterrupted run would (the data order and RNG states are in
    the checkpoint, see ``ResumeCheckpoint``). The best-val checkpoint is another callback
    (``model_checkpoint``), saved whenever val AUROC improves.
    """

    FILENAME = "last.ckpt"

    def __init__(self, dirpath: str, every_n_epochs: int = 1) -> None:
        # no monitor and top-1: the newest checkpoint, under one name, every k epochs
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_epochs=int(every_n_epochs),
            enable_version_counter=False,
        )
        self._saved_at = 0  # no steps, nothing to save (as ModelCheckpoint counts)
        self._noting = False

    @property
    def path(self) -> Path:
        return Path(self.dirpath) / self.FILENAME

    def saved_at(self) -> int:
        """The global step of the newest save of last.ckpt this fit (0: none yet)."""
        return self._saved_at

    # ModelCheckpoint saves in these two hooks; a checkpoint saved while one runs is last.ckpt
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        with self._noting_saves():
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        with self._noting_saves():
            super().on_validation_end(trainer, pl_module)

    @contextmanager
    def _noting_saves(self) -> Iterator[None]:
        self._noting = True
        try:
            yield
        finally:
            self._noting = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._noting:
            self._saved_at = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        if self.saved_at() != trainer.global_step:  # the end, when off the cadence
            trainer.save_checkpoint(self.path, weights_only=False)  # the full state, quietly


class ResumeCheckpoint(L.Callback):
    """What a checkpoint needs for an exact resume beyond weights, optimizer and loop state, and
    checkpoints in the middle of epochs, also at SLURM preemption.

    The train loader keeps the data order (``xray_loss.data.order.TrainLoader``). This callback
    adds to every checkpoint

    - the global RNG states (torch, CUDA, numpy, python) of the moment it is taken, put back
      when the resumed fit starts training: the next batch is augmented, and dropout drawn, as
      in the uninterrupted run (nothing draws from them between a checkpoint and the next batch);
    - the module's running training metrics (``train/nll``, ``train/acc``, ... of the epoch under
      way), so the epoch a run resumes in logs what the uninterrupted run logged;

    and writes

    - ``checkpoints/resume.ckpt`` every ``every_n_steps`` training steps (0: never), written
      atomically and never on an epoch's last batch (``last.ckpt`` follows at its end); removed
      when training ends;
    - under SLURM, handlers for ``signals`` (``scancel --signal=USR1 <job>``; SLURM sends
      ``--signal`` before the time limit, submitit asks for USR2 120 s before): at the next step
      boundary the run saves ``resume.ckpt`` (after an epoch's last step, the ``last.ckpt`` of
      its end is that checkpoint: it stops as the next epoch starts), requeues its job
      (``scontrol requeue``, up to ``max_requeues`` times) and exits (``Preempted``), its
      record left ``running``. The requeued job re-runs the same job and continues from that
      checkpoint (``xray_loss.runtime.record.recorded_run``). Installed when
      fit starts, before Lightning's own SLURM handler, which then stays out (its ``hpc_ckpt``
      is saved wherever the signal lands, mid-step, so a resume from it could not be exact).
    """

    FILENAME = "resume.ckpt"

    def __init__(
        self,
        dirpath: str,
        every_n_steps: int = 0,
        signals: list[str] | tuple[str, ...] = ("SIGUSR1", "SIGUSR2"),
        max_requeues: int = 20,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = max(0, int(every_n_steps or 0))
        self.signals = [getattr(signal, name) for name in signals]
        self.max_requeues = int(max_requeues)
        self._replaced: dict[int, Any] = {}  # signal -> the handler before ours
        self._signalled: str | None = None
        self._rng: dict[str, Any] | None = None  # of the checkpoint a fit resumes from

    @property
    def path(self) -> Path:
        return self.dirpath / self.FILENAME

    # --- signals -----------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or "SLURM_JOB_ID" not in os.environ or self._replaced:
            return
        # kept for the rest of the job: a signal while the best checkpoint is tested lets the
        # test finish (Lightning's handler, which it keeps out, would checkpoint and requeue)
        for signum in self.signals:
            self._replaced[signum] = signal.signal(signum, self._on_signal)
        names = "/".join(signal.Signals(s).name for s in self.signals)
        log.info(
            "SLURM job %s: %s save a checkpoint at the next training step and requeue the job",
            job_id(),
            names,
        )

    def _on_signal(self, signum: int, frame) -> None:
        self._signalled = signal.Signals(signum).name  # acted on at the next step boundary

    def _stop_requested(self, trainer) -> bool:
        if not self._replaced:
            return False
        return trainer.strategy.reduce_boolean_decision(self._signalled is not None, all=False)

    # --- saving ------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # test_private_apis.py
            return  # validation and last.ckpt come next; a checkpoint here would skip them
        stop = self._stop_requested(trainer)
        if stop or (self.every_n_steps and trainer.global_step % self.every_n_steps == 0):
            self._save(trainer)
        if stop:
            self._requeue_and_stop(trainer, self.path)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # signalled during an epoch's last batch or validation: the last.ckpt written at that
        # epoch's end is this very state (else the next batch's end saves one)
        if not self._stop_requested(trainer):
            return
        for callback in trainer.checkpoint_callbacks:
            if (
                isinstance(callback, LastCheckpoint)
                and callback.saved_at() == trainer.global_step > 0
            ):
                self._requeue_and_stop(trainer, callback.path)

    def _save(self, trainer) -> None:
        tmp = self.path.with_name(f".{self.FILENAME}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # the full state, quietly
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("ResumeCheckpoint")

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.path.unlink(missing_ok=True)  # last.ckpt is the end of training

    def _requeue_and_stop(self, trainer, checkpoint: Path) -> None:
        what = f"{self._signalled or 'a signal'} at step {trainer.global_step}"
        outcome = "the job is requeued and continues from there"
        if trainer.is_global_zero:
            outcome = requeue_slurm_job(self.max_requeues)
        for logger in trainer.loggers:
            logger.save()
        raise Preempted(f"Preempted by {what}: checkpoint {checkpoint}; {outcome}.")

    # --- RNG states and the module's running training metrics --------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        if self._rng is not None:
            set_rng_states(self._rng)
            self._rng = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()
        # not in the module's state_dict (non-persistent): every earlier checkpoint loads strictly
        checkpoint["metric_states"] = {  # "updates": read by earlier versions of this callback
            name: {"updates": metric.update_count, "states": metric.metric_state}
            for name, metric in pl_module.named_modules()
            if isinstance(metric, Metric)
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._rng = checkpoint.get("rng_states")
        metrics = dict(pl_module.named_modules())
        for name, saved in checkpoint.get("metric_states", {}).items():
            metric = metrics.get(name)
            if isinstance(metric, Metric):
                restore_metric(metric, saved["states"])


def restore_metric(metric: Metric, states: dict[str, Any]) -> None:
    """Put a metric's saved ``metric_state`` back as it was: ``reset`` drops its cached result,
    ``load_state_dict`` sets the states it is given, persistent or not. The update count starts
    again from 0 (torchmetrics has no public setter): torchmetrics reads it only to warn about a
    ``compute`` before any update and to average mean-reduced states in ``forward``, neither of
    which the module's running metrics (sums, fed by ``update``, mid-epoch) meet."""
    metric.reset()
    metric.load_state_dict(move_data_to_device(states, metric.device), strict=True)
