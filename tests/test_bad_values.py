"""Values that would give a wrong result with exit status 0 are refused where they are read,
in one sentence naming the key or the file: loss weights that train the model against a class,
and test predictions the report cannot trust."""

from __future__ import annotations

import pytest

from tests.conftest import assert_ok, run_cli
from tests.test_config import _compose
from xray_loss.checks import check_config
from xray_loss.config import ConfigError


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["loss.pos_weight=-1"], "loss.pos_weight", "> 0"),  # a negative loss: trains away
        (["loss.pos_weight=0"], "loss.pos_weight", "> 0"),  # pneumonia weighs nothing
        (["loss.pos_weight=many"], "loss.pos_weight", "> 0"),
        (["loss.pos_weight=.nan"], "loss.pos_weight", "> 0"),
        (["loss=ce", "loss.class_weights=[-1,1]"], "loss.class_weights", "two numbers > 0"),
        (["loss=ce", "loss.class_weights=[1,0]"], "loss.class_weights", "two numbers > 0"),
        (["loss=ce", "loss.class_weights=[1,2,3]"], "loss.class_weights", "two numbers > 0"),
        (["loss=ce", "loss.class_weights=2"], "loss.class_weights", "two numbers > 0"),
        (["loss=ce", "loss.label_smoothing=1"], "loss.label_smoothing", "[0, 1)"),
        (["loss=ce", "loss.label_smoothing=-0.1"], "loss.label_smoothing", "[0, 1)"),
        (["loss=focal", "loss.gamma=-1"], "loss.gamma", ">= 0"),
        (["loss=focal", "loss.alpha=1.5"], "loss.alpha", "between 0 and 1"),
        (["loss=focal", "loss.alpha=0"], "loss.alpha", "between 0 and 1"),
        (["loss=focal", "loss.alpha=-0.25"], "loss.alpha", "between 0 and 1"),
    ],
)
def test_loss_weights_outside_their_range_are_refused_at_config_time(overrides, key, allowed):
    with pytest.raises(ConfigError) as err:
        check_config(_compose(*overrides))
    message = str(err.value)
    assert message.startswith(f"Invalid value {key}=") and allowed in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss.pos_weight=2.5"],
        ["loss.pos_weight=auto"],
        ["loss.pos_weight=null"],
        ["loss=ce", "loss.class_weights=[1,3]"],
        ["loss=ce", "loss.class_weights=auto"],
        ["loss=ce", "loss.label_smoothing=0.1"],
        ["loss=focal", "loss.gamma=0", "loss.alpha=0.25"],
        ["loss=focal", "loss.alpha=auto"],
    ],
)
def test_loss_weights_in_their_range_pass(overrides):
    check_config(_compose(*overrides))


@pytest.mark.slow
def test_a_negative_pos_weight_is_refused_before_training(workdir):
    proc = run_cli("debug=tiny", "epochs=1", "loss.pos_weight=-1", cwd=workdir)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Invalid value loss.pos_weight=-1" in proc.stderr
    assert not list(workdir.glob("logs/train/runs/*/checkpoints/*.ckpt"))
    assert_ok(run_cli("debug=tiny", "epochs=1", "loss.pos_weight=2", cwd=workdir))
