"""Hooks for tests/test_interruptions.py only: the process stops itself at a chosen moment, as a
user's ``kill`` or Ctrl-C or a full disk would stop it. Each acts only while the environment
holds ``XRAY_LOSS_TEST_HOOKS=1``, so the command it printed can be run again as it is."""

from __future__ import annotations

import errno
import os
import signal

import lightning as L
from hydra.experimental.callback import Callback
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def _armed() -> bool:
    return os.environ.get("XRAY_LOSS_TEST_HOOKS") == "1"


def _send(name: str, pid: int | None = None) -> None:
    os.kill(pid or os.getpid(), getattr(signal, name))


class SignalAfterFirstJob(Callback):
    """Hydra callback: ``signal`` once the sweep's first job has ended, before the next starts."""

    def __init__(self, signal: str = "SIGTERM") -> None:
        self.signal = signal

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if _armed() and config.hydra.job.num == 0:
            _send(self.signal)


class SignalWhileDecoding(Callback):
    """Hydra callback: ``signal`` while the decode cache is built (at its ``image``-th file)."""

    def __init__(self, signal: str = "SIGTERM", image: int = 5) -> None:
        self.signal, self.image = signal, int(image)

    def on_run_start(self, config, **kwargs) -> None:
        if not _armed():
            return
        from xray_loss.data import images

        original, hook, command = images._DecodeDataset.__getitem__, self, os.getpid()

        def getitem(dataset, i):  # in a decoding worker, maybe: the command is signalled
            if i == hook.image:
                _send(hook.signal, command)
            return original(dataset, i)

        images._DecodeDataset.__getitem__ = getitem


class SignalAt(L.Callback):
    """Lightning callback: ``signal`` at the end of training step ``step``, or as epoch ``epoch``
    starts."""

    def __init__(self, signal: str, step: int | None = None, epoch: int | None = None) -> None:
        self.signal, self.step, self.epoch = signal, step, epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if _armed() and trainer.global_step == self.step:
            _send(self.signal)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if _armed() and trainer.current_epoch == self.epoch:
            _send(self.signal)


class DiskFullAtEpoch(L.Callback):
    """Lightning callback: from epoch ``epoch`` on, every checkpoint write finds the disk full."""

    def __init__(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if _armed() and trainer.current_epoch == self.epoch:

            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            TorchCheckpointIO.save_checkpoint = full
