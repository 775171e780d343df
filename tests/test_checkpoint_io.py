"""Checkpoints are written atomically and loaded without running pickled code: a full disk or
a bad file is one sentence naming the path, and the checkpoints already there stay intact."""

from __future__ import annotations

import pickle

import pytest
import torch

from tests.fixtures import tmpfs
from xray_loss.runtime.checkpointing import AtomicCheckpointIO
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
