"""One schema for what a run is (xray_loss.identity): every derived list agrees with it, and a
key nobody listed can never be pooled as a repeat."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from xray_loss import identity
from xray_loss.config import register_resolvers, run_dirname
from xray_loss.identity import SCHEMA, Key, Role, key_of, run_configuration
from xray_loss.report.runs import identity as configuration_of
from xray_loss.report.runs import repeat
from xray_loss.runtime.sweep import sweep_key


def composed(*overrides: str):
    """The job config of ``python -m xray_loss.train overrides...`` and Hydra's choices."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(identity.CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def record_of(cfg, choices) -> dict:
    return {
        "config": identity.hyperparameters(cfg, choices),
        "configuration": run_configuration(cfg),
    }


def test_a_key_nobody_listed_is_a_setting_that_splits_configurations():
    cfg, choices = composed("debug=tiny")
    with open_dict(cfg):
        cfg.brand_new_knob = 1  # a key added to train.yaml, listed nowhere
        cfg.data.another_knob = "a"  # and one a data source grew
    assert key_of("brand_new_knob").role == Role.SETTING
    one = record_of(cfg, choices)
    assert one["configuration"]["brand_new_knob"] == 1
    assert one["configuration"]["data.another_knob"] == "a"
    with open_dict(cfg):
        cfg.brand_new_knob = 2
    other = record_of(cfg, choices)
    assert configuration_of(one) != configuration_of(other)  # never pooled as repeats
    assert repeat(one) == repeat(other)


def test_only_the_listed_repeats_pool_runs():
    assert identity.repeat_keys() == ("seed", "data.fold")
    a = record_of(*composed("debug=tiny", "seed=0"))
    b = record_of(*composed("debug=tiny", "seed=1"))
    assert configuration_of(a) == configuration_of(b) and repeat(a) != repeat(b)
    c = record_of(*composed("debug=tiny", "seed=0", "lr=0.01"))
    assert configuration_of(a) != configuration_of(c)


@pytest.mark.parametrize(
    ("override", "in_configuration"),
    [
        ("threads=1", True),  # changes the arithmetic in the last bits: a setting
        ("channels_last=true", True),
        ("compile=true", True),  # fuses kernels: different results
        ("data.num_workers=2", False),
        ("checkpoint_every_n_steps=5", False),
        ("paths.log_dir=elsewhere", False),
        ("name=other", False),
        ("lr=0.01", True),
        ("+loss.pos_weight=2", True),  # a setting nobody named
        ("trainer.precision=bf16-mixed", True),
        ("callbacks.model_checkpoint.monitor=val/objective", True),  # another checkpoint is tested
        ("+callbacks.ema._target_=lightning.pytorch.callbacks.EMAWeightAveraging", True),
        ("callbacks.progress_bar.refresh_rate=0", False),
        ("callbacks.model_checkpoint.dirpath=elsewhere", False),
    ],
)
def test_bookkeeping_leaves_the_configuration_alone(override, in_configuration):
    base = run_configuration(composed("debug=tiny")[0])
    changed = run_configuration(composed("debug=tiny", override)[0])
    assert (base != changed) == in_configuration


def test_names_and_sweep_identity_follow_the_roles():
    overrides = [
        "loss=ce",
        "data.root=/data/chest_xray",  # a setting, but a path names no run
        "experiment=full_grid",  # a preset: part of the sweep, no run's name
        "resume=true",
        "hydra/launcher=joblib",
        "data.num_workers=2",  # bookkeeping that a sweep may vary: named
    ]
    assert run_dirname(overrides) == "data.num_workers=2,loss=ce"
    # what a sweep is: neither resume, nor the launcher, nor bookkeeping
    assert sweep_key(overrides) == sweep_key(
        ["experiment=full_grid", "data.root=/data/chest_xray", "loss=ce"]
    )
    assert sweep_key(overrides) != sweep_key(["experiment=lr_sweep", "loss=ce"])


def test_every_named_axis_is_read_from_where_the_schema_says():
    cfg, choices = composed("loss=ce", "optimizer=adamw", "data.image_size=48", "lr=0.01")
    config = identity.hyperparameters(cfg, choices)
    assert list(config) == list(identity.axis_names())
    assert config["loss"] == "ce" and config["optimizer"] == "adamw"
    assert config["image_size"] == 48 and config["lr"] == 0.01
    assert config["weight_decay"] == float(cfg.optimizer.weight_decay)


def test_a_named_axis_is_one_line_of_the_schema(monkeypatch):
    """The README's worked example (Extending: a sweep axis): model.backbone.dropout named."""
    monkeypatch.setitem(SCHEMA, "dropout", Key(Role.AXIS, "model.backbone.dropout", float))
    cfg, choices = composed("model.backbone.dropout=0.25")
    assert identity.hyperparameters(cfg, choices)["dropout"] == 0.25
    assert "dropout" in identity.axis_names()
    # the resolved setting restates the axis: the report shows one column, "dropout"
    assert "model.backbone.dropout" in identity.restated()["dropout"]
