"""predict and eval on bad inputs: every file gets a status, nothing "succeeds" on nothing."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import run_cli
from tests.fixtures import NOT_UTF8, SHOWN, png_header_only, save_model
from xray_loss.config import ConfigError
from xray_loss.eval import evaluate
from xray_loss.predict import COLUMNS, predict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained small CNN saved as a training run would save it (32 px, squash)."""
    return save_model(tmp_path_factory.mktemp("ckpt") / "best-epoch001.ckpt")


def _cfg(tmp_path: Path, **values):
    base = {
        "ckpt_path": "???",
        "inputs": "???",
        "threshold": 0.5,
        "cam": False,
        "batch_size": 2,
        "accelerator": "cpu",
        "split": "test",
        "paths": {"output_dir": str(tmp_path / "out")},
    }
    return OmegaConf.create({**base, **values})


def _image(path: Path, size: tuple[int, int], mode: str = "L") -> Path:
    pixels = np.random.default_rng(len(path.name)).integers(0, 256, (size[1], size[0]), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def _rows(tmp_path: Path) -> list[dict]:
    with open(tmp_path / "out" / "predictions.csv", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_every_input_file_is_listed_with_its_status(tmp_path, checkpoint, caplog):
    scans = tmp_path / "scans"
    _image(scans / "a.png", (40, 30))
    _image(scans / "b.jpeg", (50, 64), "RGB")
    _image(scans / NOT_UTF8, (33, 33))
    bomb = png_header_only(scans / "c_bomb.png", 14000, 14000)
    (scans / "d_notes.txt").write_text("not an image")
    truncated = scans / "e_cut.jpeg"
    truncated.write_bytes((scans / "b.jpeg").read_bytes()[:150])
    cfg = _cfg(tmp_path, ckpt_path=str(checkpoint), inputs=str(scans))
    with caplog.at_level(logging.WARNING, logger="xray_loss.predict"):
        classified = predict(cfg)
    assert len(classified) == 3
    rows = {r["file"]: r for r in _rows(tmp_path)}
    assert list(rows) == [
        str(scans / n)
        for n in (SHOWN, "a.png", "b.jpeg", "c_bomb.png", "d_notes.txt", "e_cut.jpeg")
    ]
    for name in (SHOWN, "a.png", "b.jpeg"):
        row = rows[str(scans / name)]
        assert row["status"] == "ok" and 0 <= float(row["prob_pneumonia"]) <= 1
        assert row["label"] in ("NORMAL", "PNEUMONIA") and float(row["threshold"]) == 0.5
    bomb_row = rows[str(bomb)]
    assert bomb_row["status"].startswith("skipped: 196,000,000 pixels is over PIL's")
    assert bomb_row["prob_pneumonia"] == bomb_row["label"] == ""
    assert rows[str(scans / "d_notes.txt")]["status"] == "skipped: cannot identify image file"
    assert rows[str(truncated)]["status"].startswith("skipped: ")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3
    for path in (bomb, scans / "d_notes.txt", truncated):
        assert sum(str(path) in w for w in warned) == 1 and "".join(warned).count(str(path)) == 1
    assert "BytesIO" not in "".join(warned) + (tmp_path / "out" / "predictions.csv").read_text()


def test_no_readable_image_fails_after_listing_every_file(tmp_path, checkpoint):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "a.jpeg").write_text("not an image")
    png_header_only(scans / "b.png", 14000, 14000)
    cfg = _cfg(tmp_path, ckpt_path=str(checkpoint), inputs=str(scans))
    with pytest.raises(ConfigError) as err:
        predict(cfg)
    text = str(err.value)
    assert text.startswith(f"No readable image in inputs={scans}: all 2 file(s) were skipped")
    assert "a.jpeg: cannot identify image file" in text and "\n" not in text
    assert str(tmp_path / "out" / "predictions.csv") in text
    assert [r["status"].split(":")[0] for r in _rows(tmp_path)] == ["skipped", "skipped"]


def test_missing_checkpoint_or_inputs_is_one_sentence_with_an_example(tmp_path):
    with pytest.raises(ConfigError) as err:
        predict(_cfg(tmp_path))
    text = str(err.value)
    assert text.startswith("ckpt_path and inputs are not set:")
    assert "python -m xray_loss.predict ckpt_path=" in text and "\n" not in text
    with pytest.raises(ConfigError, match=r"^inputs is not set: .* inputs=scans/$"):
        predict(_cfg(tmp_path, ckpt_path="x.ckpt"))
    with pytest.raises(ConfigError) as err:
        evaluate(_cfg(tmp_path))
    assert str(err.value).startswith("ckpt_path is not set:")
    assert "python -m xray_loss.eval ckpt_path=" in str(err.value)


@pytest.mark.slow
def test_the_commands_exit_non_zero_with_one_message_and_no_traceback(workdir, checkpoint):
    proc = run_cli(module="xray_loss.eval", cwd=workdir)
    assert proc.returncode != 0
    assert "ckpt_path is not set" in proc.stderr and "python -m xray_loss.eval" in proc.stderr
    assert "Traceback" not in proc.stderr and "MissingMandatoryValue" not in proc.stderr
    scans = workdir / "scans"
    scans.mkdir()
    (scans / "a.jpeg").write_text("not an image")
    proc = run_cli(
        f"ckpt_path={checkpoint}", f"inputs={scans}", module="xray_loss.predict", cwd=workdir
    )
    assert proc.returncode != 0
    assert "No readable image in inputs=" in proc.stderr and "Traceback" not in proc.stderr
    (csv_path,) = (workdir / "logs").rglob("predictions.csv")
    assert "skipped: cannot identify image file" in csv_path.read_text()


@pytest.mark.parametrize("kind", ["directory", "random", "pickled"])
def test_a_checkpoint_path_that_is_no_checkpoint_says_what_it_is(tmp_path, kind):
    from xray_loss.inference import CheckpointError, load_classifier

    path = tmp_path / "run" / "best.ckpt"
    path.parent.mkdir()
    if kind == "directory":
        path = path.parent
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        import torch

        torch.save({"state_dict": {}, "payload": Path("x")}, path)
    with pytest.raises(CheckpointError) as err:
        load_classifier(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert "weights_only" not in message and "trust" not in message
    if kind == "directory":
        assert "is a directory" in message
