"""Bad input files: each one named once and cleanly, and no run that "completes" on bad data."""

from __future__ import annotations

import csv
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures import (
    NOT_UTF8,
    SHOWN,
    kermany_datamodule,
    kermany_setup_error,
    make_kermany,
    make_pneumoniamnist,
    png_header_only,
)
from xray_loss import callbacks
from xray_loss.data.base import DataError
from xray_loss.data.phantom import PhantomDataModule
from xray_loss.data.pneumoniamnist import PneumoniaMNISTDataModule
from xray_loss.module import Evaluated


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_decompression_bombs_are_listed_with_the_unreadable_files_and_skipped(tmp_path, caplog):
    """Over PIL's limit: the error range (> 2x, 14000 x 14000) and the warning range (between
    the limit and 2x, 10000 x 10000) are both bad files, named with the others."""
    root = make_kermany(tmp_path / "cx")
    huge = png_header_only(root / "train" / "NORMAL" / "IM-0900-0001.png", 14000, 14000)
    large = png_header_only(root / "train" / "PNEUMONIA" / "person900_virus_1.png", 10000, 10000)
    junk = root / "train" / "PNEUMONIA" / "person901_virus_2.jpeg"
    junk.write_text("not an image")
    text = kermany_setup_error(root, tmp_path)
    assert "3 image file(s) could not be read" in text
    assert f"{huge}: 196,000,000 pixels is over PIL's decompression-bomb limit" in text
    assert f"{large}: 100,000,000 pixels is over PIL's decompression-bomb limit" in text
    assert "skip_bad_files=true" in text
    with caplog.at_level(logging.WARNING):
        dm = kermany_datamodule(root, tmp_path, skip_bad_files=True)
        dm.setup("fit")
    warned = _warnings(caplog)
    for path in (huge, large, junk):
        assert sum(str(path) in w for w in warned) == 1, path
    assert sum(len(dm.splits[s]) for s in ("train", "val")) == 24 + 36 + 2


def test_each_bad_file_is_named_once_without_the_decoders_stream_repr(tmp_path, caplog):
    root = make_kermany(tmp_path / "cx")
    truncated = root / "train" / "NORMAL" / "IM-0100-0001.jpeg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    text_file = root / "train" / "PNEUMONIA" / "person1_bacteria_3.jpeg"
    text_file.write_text("not an image")
    odd = root / "train" / "NORMAL" / NOT_UTF8
    odd.write_text("not an image either")
    text = kermany_setup_error(root, tmp_path)
    lines = {line.strip() for line in text.splitlines() if line.startswith("  ")}
    assert lines == {
        f"{truncated}: Truncated File Read",
        f"{text_file}: cannot identify image file",
        f"{root}/train/NORMAL/{SHOWN}: cannot identify image file",
    }
    assert "BytesIO" not in text and "<_io" not in text
    for path in (truncated, text_file):
        assert text.count(str(path)) == 1
    with caplog.at_level(logging.WARNING):
        kermany_datamodule(root, tmp_path, skip_bad_files=True).setup("fit")
    warned = "\n".join(_warnings(caplog))
    assert warned.count(str(truncated)) == 1 and warned.count(str(text_file)) == 1
    assert warned.count(SHOWN) == 1 and "BytesIO" not in warned
    warned.encode("utf-8")  # a log file can take every message


def test_a_file_name_that_is_not_utf8_trains_and_is_written_readably(tmp_path):
    root = make_kermany(tmp_path / "cx")
    src = sorted((root / "test" / "NORMAL").glob("*.jpeg"))[0]
    odd = root / "test" / "NORMAL" / NOT_UTF8
    with Image.open(src) as image:
        image.rotate(5).save(odd, "JPEG")  # its own contents, not a duplicate
    dm = kermany_datamodule(root, tmp_path)
    dm.setup("fit")
    with open(tmp_path / "split.csv", encoding="utf-8") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    assert rows[f"test/NORMAL/{SHOWN}"]["split"] == "test"
    assert rows[f"test/NORMAL/{SHOWN}"]["patient"] == "test/IM-0001"
    test = dm.splits["test"]
    assert f"test/NORMAL/{SHOWN}" in test.files
    # the test report writes the split's file names: every one of them must be writable
    n = len(test)
    evaluated = Evaluated(
        torch.arange(n), test.labels, torch.full((n,), 0.5), torch.zeros(n), torch.tensor(0.0)
    )
    module = SimpleNamespace(evaluated={"test": evaluated}, threshold=torch.tensor(0.5))
    trainer = SimpleNamespace(datamodule=dm, loggers=[], global_step=0)
    callbacks.TestReport(str(tmp_path / "run")).on_test_end(trainer, module)
    with open(tmp_path / "run" / "test_predictions.csv", encoding="utf-8") as f:
        files = [r["file"] for r in csv.DictReader(f)]
    assert f"test/NORMAL/{SHOWN}" in files and len(files) == n


def test_a_kermany_split_left_with_one_class_after_skipping_stops_at_setup(tmp_path):
    root = make_kermany(tmp_path / "cx")
    normals = sorted((root / "test" / "NORMAL").glob("*.jpeg"))
    for path in normals:
        path.write_text("unreadable")
    text = kermany_setup_error(root, tmp_path, skip_bad_files=True)
    assert text.startswith(f"The test split ({root}/test/, after skipping {len(normals)} ")
    assert "holds only PNEUMONIA images, no NORMAL image" in text
    assert "a split needs both classes" in text
    assert "train/NORMAL/*.jpeg" in text  # the expected layout


def test_a_pneumoniamnist_split_with_one_class_names_the_file_and_the_split(tmp_path):
    path = make_pneumoniamnist(tmp_path, 28, val_labels=np.ones((12, 1), np.uint8))
    with pytest.raises(DataError) as err:
        PneumoniaMNISTDataModule(root=str(tmp_path), size=28).setup("fit")
    text = str(err.value)
    assert text.startswith(f"The val split of {path} (val_images/val_labels)")
    assert "holds only PNEUMONIA images, no NORMAL image" in text
    assert "PneumoniaMNIST npz" in text


def test_a_batch_size_larger_than_the_training_split_is_named_and_still_trains(caplog):
    with caplog.at_level(logging.WARNING):
        dm = PhantomDataModule(n_train=20, n_val=8, n_test=8, image_size=16, batch_size=64)
        dm.setup("fit")
    assert "batch_size=64 is larger than the training split (20 images)" in caplog.text
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0][0].shape[0] == 20  # one step, not zero
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dm = PhantomDataModule(n_train=100, n_val=8, n_test=8, image_size=16, batch_size=64)
        dm.setup("fit")
    assert "batch_size" not in caplog.text
    assert len(dm.train_dataloader()) == 2  # under two batches: the short one is kept
