"""PneumoniaMNIST from local npz files (no download in tests)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tests.fixtures import make_pneumoniamnist
from xray_loss.data.base import DataError
from xray_loss.data.pneumoniamnist import PneumoniaMNISTDataModule


@pytest.mark.parametrize("size", [28, 64, 128, 224])
def test_loads_every_size_with_the_official_splits(tmp_path, size):
    make_pneumoniamnist(tmp_path, size)
    dm = PneumoniaMNISTDataModule(root=str(tmp_path), size=size, batch_size=4)
    dm.setup("fit")
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [40, 12, 16]
    x, y, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, size, size) and x.dtype == torch.uint8 and y.dtype == torch.int64


def test_resizes_once_to_image_size(tmp_path):
    make_pneumoniamnist(tmp_path, 28)
    dm = PneumoniaMNISTDataModule(root=str(tmp_path), size=28, image_size=64)
    dm.setup("fit")
    assert dm.splits["test"].images.shape == (16, 1, 64, 64)


def test_wrong_keys_and_shapes_are_named(tmp_path):
    make_pneumoniamnist(tmp_path, 64, val_labels=None)
    with pytest.raises(DataError, match=r"lacks the keys \['val_labels'\].*found"):
        PneumoniaMNISTDataModule(root=str(tmp_path), size=64).setup("fit")
    make_pneumoniamnist(tmp_path, 64, train_images=np.zeros((40, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"train_images has shape \(40, 32, 32\).*\(N, 64, 64\)"):
        PneumoniaMNISTDataModule(root=str(tmp_path), size=64).setup("fit")
    make_pneumoniamnist(tmp_path, 64, test_labels=np.full((16, 1), 7, np.uint8))
    with pytest.raises(DataError, match="test_labels"):
        PneumoniaMNISTDataModule(root=str(tmp_path), size=64).setup("fit")


def test_missing_file_says_what_to_put_where(tmp_path):
    with pytest.raises(DataError) as err:
        PneumoniaMNISTDataModule(root=str(tmp_path), size=128).setup("fit")
    text = str(err.value)
    assert "pneumoniamnist_128.npz" in text and str(tmp_path) in text
    assert "zenodo.org/records/10519652" in text


def test_offline_download_fails_with_the_same_clear_message(tmp_path, monkeypatch):
    # no medmnist package and an address nothing listens on: what an offline machine sees
    monkeypatch.setitem(__import__("sys").modules, "medmnist", None)
    dm = PneumoniaMNISTDataModule(
        root=str(tmp_path), size=64, download=True, url="http://127.0.0.1:9/{file}"
    )
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    text = str(err.value)
    assert text.startswith("The download failed")
    assert "pneumoniamnist_64.npz" in text and "place it at" in text
    assert not list(tmp_path.glob("*.part"))


def test_images_repeated_across_official_splits_are_dropped_from_the_lower_split(tmp_path, caplog):
    path = make_pneumoniamnist(tmp_path, 28)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["train_images"][:3] = arrays["test_images"][:3]  # train copies of test images
    arrays["val_images"][0] = arrays["test_images"][5]
    arrays["train_images"][10] = arrays["val_images"][4]
    np.savez(path, **arrays)
    with caplog.at_level(logging.WARNING):
        dm = PneumoniaMNISTDataModule(root=str(tmp_path), size=28)
        dm.setup("fit")
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [40 - 4, 12 - 1, 16]
    assert "train 4" in caplog.text and "val 1" in caplog.text
    assert "image-level split" in caplog.text  # the val split's patient leak is stated
    seen = {}
    for name in ("train", "val", "test"):
        for image in dm.splits[name].images:
            seen.setdefault(image.numpy().tobytes(), set()).add(name)
    assert all(len(s) == 1 for s in seen.values())


@pytest.mark.parametrize("content", ["random", "pickled"])
def test_a_file_that_is_not_an_npz_of_arrays_is_named_without_unsafe_advice(tmp_path, content):
    path = tmp_path / "pneumoniamnist_64.npz"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        make_pneumoniamnist(tmp_path, 64, train_labels=np.array([{"a": 1}] * 40, dtype=object))
    with pytest.raises(DataError) as err:
        dm = PneumoniaMNISTDataModule(root=str(tmp_path), size=64)
        dm.setup("fit")
    message = str(err.value)
    assert str(path) in message and "not a valid PneumoniaMNIST npz" in message
    assert "allow_pickle" not in message and "trust" not in message


@pytest.mark.slow
def test_the_pneumoniamnist_cpu_recipe_runs_as_the_readme_says(tmp_path):
    from tests.conftest import assert_ok, metrics, run_cli, run_dirs

    make_pneumoniamnist(tmp_path / "npz", 28)
    done = run_cli(
        "experiment=pneumoniamnist_cpu", f"data.root={tmp_path / 'npz'}", "epochs=2", cwd=tmp_path
    )
    assert_ok(done)
    (run,) = run_dirs(tmp_path / "logs")
    record = metrics(run)
    assert record["status"] == "completed" and record["config"]["image_size"] == 28
    assert record["config"]["scheduler"] == "cosine"
    assert record["final_lr"] == pytest.approx(3e-3 / 2)  # the lr epoch 2 of 2 trained at
    assert record["operating_point"]["rule"] == "youden"
