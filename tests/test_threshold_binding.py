"""A recalibrated threshold belongs to the weights it was chosen for: eval and predict refuse it
for any other (a checkpoint overwritten by ``resume=true``, a file copied beside another
checkpoint), and its number is checked exactly as a threshold on the command line is."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.fixtures import make_labeled_folder, save_model
from xray_loss.config import ConfigError
from xray_loss.eval import evaluate
from xray_loss.predict import predict
from xray_loss.threshold import sidecar_path


def _cfg(out: Path, ckpt: Path, **values):
    base = {
        "ckpt_path": str(ckpt),
        "inputs": "???",
        "threshold": None,
        "recalibrate": None,
        "cam": False,
        "batch_size": 8,
        "accelerator": "cpu",
        "split": "test",
        "paths": {"output_dir": str(out)},
    }
    return OmegaConf.create({**base, **values})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return make_labeled_folder(tmp_path_factory.mktemp("site") / "site", 8, 8)


def recalibrate(tmp_path: Path, ckpt: Path, site: Path) -> dict:
    """``python -m xray_loss.eval ckpt_path=CKPT recalibrate=SITE``: the sidecar it writes."""
    evaluate(_cfg(tmp_path / "recal", ckpt, recalibrate=str(site), threshold="youden"))
    return json.loads(sidecar_path(ckpt).read_text())


def predicted_threshold(tmp_path: Path, ckpt: Path, site: Path, threshold="stored") -> float:
    """The threshold ``python -m xray_loss.predict`` classifies the site's images at."""
    out = tmp_path / f"predict{len(list(tmp_path.glob('predict*')))}"
    rows = predict(_cfg(out, ckpt, inputs=str(site), threshold=threshold))
    (value,) = {float(row["threshold"]) for row in rows}
    return value


def refusal(tmp_path: Path, ckpt: Path, site: Path) -> str:
    """The one sentence both predict and eval refuse ``ckpt``'s sidecar with."""
    with pytest.raises(ConfigError) as predicted:
        predicted_threshold(tmp_path, ckpt, site)
    with pytest.raises(ConfigError) as evaluated:
        evaluate(_cfg(tmp_path / "eval", ckpt))
    assert str(predicted.value) == str(evaluated.value)
    return str(predicted.value)


def test_a_checkpoint_overwritten_after_recalibration_refuses_the_old_threshold(tmp_path, site):
    # case 1: recalibrate last.ckpt of an interrupted run; resume=true then rewrites last.ckpt
    last = save_model(tmp_path / "run" / "checkpoints" / "last.ckpt", seed=1)
    point = recalibrate(tmp_path, last, site)
    assert predicted_threshold(tmp_path, last, site) == pytest.approx(point["value"], abs=1e-6)
    save_model(last, seed=2)  # the resumed run's next epoch: other weights, the same file
    message = refusal(tmp_path, last, site)
    assert str(sidecar_path(last)) in message and str(last) in message
    assert "resume=true" in message and "recalibrate=" in message and "delete it" in message
    # the remedy it names works: recalibrating the new weights replaces the refused file
    again = recalibrate(tmp_path, last, site)
    assert predicted_threshold(tmp_path, last, site) == pytest.approx(again["value"], abs=1e-6)


def test_a_threshold_file_beside_another_model_is_refused_naming_both(tmp_path, site):
    # case 2: the file names the checkpoint it was chosen for; another model is not that one
    chosen = save_model(tmp_path / "a" / "best-epoch003.ckpt", seed=1)
    other = save_model(tmp_path / "b" / "best-epoch003.ckpt", seed=2)
    recalibrate(tmp_path, chosen, site)
    shutil.copy(sidecar_path(chosen), sidecar_path(other))
    message = refusal(tmp_path, other, site)
    assert str(chosen.resolve()) in message and str(other) in message
    # the same weights under another name (a copied run folder) keep their threshold
    copy = tmp_path / "copy" / "best-epoch003.ckpt"
    copy.parent.mkdir()
    shutil.copy(chosen, copy)
    shutil.copy(sidecar_path(chosen), sidecar_path(copy))
    expected = json.loads(sidecar_path(chosen).read_text())["value"]
    assert predicted_threshold(tmp_path, copy, site) == pytest.approx(expected, abs=1e-6)


def test_a_threshold_file_that_names_no_weights_is_refused(tmp_path, site):
    ckpt = save_model(tmp_path / "best-epoch003.ckpt", seed=1)
    point = recalibrate(tmp_path, ckpt, site)
    older = {k: v for k, v in point.items() if k not in ("weights_sha256",)}
    sidecar_path(ckpt).write_text(json.dumps(older))
    assert "does not name the weights" in refusal(tmp_path, ckpt, site)


REFUSED = "refused"


@pytest.mark.parametrize(
    "value, applied",
    [
        (True, REFUSED),  # JSON true: not 1.0
        (False, REFUSED),  # nor 0.0
        (None, REFUSED),
        (1.5, REFUSED),
        (-0.1, REFUSED),
        (math.nan, REFUSED),
        (math.inf, REFUSED),
        ("high", REFUSED),
        ([0.3], REFUSED),
        (0.3, 0.3),
        (1, 1.0),
        (0, 0.0),
        ("0.25", 0.25),
    ],
)
def test_a_threshold_is_one_validation_whether_in_a_file_or_on_the_command_line(
    tmp_path, site, value, applied
):
    # case 3: "value": true in the file read as 1.0 (every image normal), while threshold=true
    # on the command line is refused. Now both refuse, or both apply the same number.
    ckpt = save_model(tmp_path / "best-epoch003.ckpt", seed=1)
    point = recalibrate(tmp_path, ckpt, site)
    sidecar_path(ckpt).write_text(json.dumps({**point, "value": value}))

    def outcome(threshold) -> float | str:
        try:
            return predicted_threshold(tmp_path, ckpt, site, threshold)
        except ConfigError as err:
            assert "Traceback" not in str(err)
            return REFUSED

    from_file, given = outcome("stored"), outcome(value)
    assert from_file == given
    assert from_file == (applied if applied == REFUSED else pytest.approx(applied, abs=1e-6))
