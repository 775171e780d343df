"""Checkpoints are written atomically and loaded without running pickled code: a full disk or
a bad file is one sentence naming the path, and the checkpoints already there stay intact. A
checkpoint carries the running training metrics exactly, and last.ckpt knows its step."""

from __future__ import annotations

import io
import pickle

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy

from tests.fixtures import tmpfs
from xray_loss.runtime.checkpointing import AtomicCheckpointIO, LastCheckpoint, ResumeCheckpoint
from xray_loss.runtime.record import RunStopped


@pytest.fixture
def tiny_disk(tmp_path):
    with tmpfs(tmp_path / "disk", size="256k") as disk:
        yield disk


def test_a_full_disk_keeps_the_last_checkpoint_and_names_the_path(tiny_disk):
    io = AtomicCheckpointIO()
    path = tiny_disk / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "epoch": 1}, path)
    with pytest.raises(RunStopped) as err:  # 1 MB does not fit in 256 KiB
        io.save_checkpoint({"state_dict": {"w": torch.ones(250_000)}, "epoch": 2}, path)
    message = str(err.value)
    assert str(path) in message and "free space" in message and "resume=true" in message
    # the previous checkpoint is whole under its name, and no temp file is left
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_read_only_disk_is_named(tmp_path):
    with tmpfs(tmp_path / "ro", read_only=True) as disk, pytest.raises(RunStopped) as err:
        AtomicCheckpointIO().save_checkpoint({"epoch": 0}, disk / "best-epoch000.ckpt")
    assert str(disk / "best-epoch000.ckpt") in str(err.value)
    assert "writable" in str(err.value)


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.parametrize("content", ["pickle", "garbage"])
def test_a_checkpoint_with_pickled_code_or_garbage_is_refused_and_named(tmp_path, capsys, content):
    path = tmp_path / "last.ckpt"
    if content == "pickle":
        torch.save({"epoch": 1, "evil": Payload()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    else:
        path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(RunStopped) as err:
        AtomicCheckpointIO().load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "Remove it" in message and "pickled code" in message
    assert "weights_only" not in message and "allow_pickle" not in message
    assert "pickled code ran" not in capsys.readouterr().out


class Running(torch.nn.Module):
    """The module's running training metrics (XrayClassifier: train_acc, train_loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.train_acc = BinaryAccuracy(validate_args=False)
        self.train_loss = MeanMetric(nan_strategy="disable")

    def step(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        predicted, labels = torch.randint(0, 2, (2, 16), generator=g)
        self.train_acc.update(predicted, labels)
        self.train_loss.update(torch.rand((), generator=g).expand(16))

    def computed(self) -> list[torch.Tensor]:
        return [self.train_acc.compute(), self.train_loss.compute()]

    def states(self) -> list[torch.Tensor]:
        return [*self.train_acc.metric_state.values(), *self.train_loss.metric_state.values()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_the_running_metrics_come_back_exactly_and_stay_out_of_the_state_dict():
    uninterrupted, resumed = Running(), Running()
    for seed in range(3):
        uninterrupted.step(seed)
    checkpoint: dict = {}
    ResumeCheckpoint("unused").on_save_checkpoint(None, uninterrupted, checkpoint)
    buffer = io.BytesIO()  # written and read back as a checkpoint is
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed.step(99)
    resumed.computed()  # a cached result, which the restore drops
    ResumeCheckpoint("unused").on_load_checkpoint(None, resumed, checkpoint)
    assert same(resumed.states(), uninterrupted.states())
    uninterrupted.step(3)
    resumed.step(3)  # the rest of the epoch
    assert same(resumed.computed(), uninterrupted.computed())
    # the states are not in the module's state_dict: earlier checkpoints load strictly
    assert list(Running().state_dict()) == []


def test_last_checkpoint_knows_the_step_of_its_newest_save(tmp_path):
    seen = []

    class Look(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            seen.append(last.saved_at())

    last = LastCheckpoint(str(tmp_path), every_n_epochs=2)
    trainer = L.Trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[last, Look()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(BoringModel())
    assert seen == [0, 0, 4]  # every 2nd epoch: saved at step 4, after the second
    # the end is off that cadence: on_train_end saved it at the last step
    assert torch.load(last.path, weights_only=True)["global_step"] == 6
