"""Every option of conf/model, conf/loss, conf/optimizer and conf/data composes and trains.

The options are read from the folders, so a new backbone, head, optimizer or data source is
covered without editing this file (a data source that needs files gets them from
``DATA_FIXTURES``; add an entry there for a new one).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from tests.fixtures import make_kermany, make_pneumoniamnist
from xray_loss.config import register_resolvers
from xray_loss.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
register_resolvers()
QUICK = [
    "epochs=1",
    "batch_size=16",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "callbacks.sample_grid.per_class=2",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.enable_model_summary=false",
]
PHANTOM = ["data.n_train=64", "data.n_val=32", "data.n_test=32", "data.image_size=32"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _kermany(tmp: Path) -> list[str]:
    root = make_kermany(tmp / "chest_xray", test=False)
    return [f"data.root={root}", "data.test_fraction=0.25", "data.num_workers=0"]


def _pneumoniamnist(tmp: Path) -> list[str]:
    make_pneumoniamnist(tmp / "npz", 28)
    return [f"data.root={tmp / 'npz'}"]


DATA_FIXTURES = {"kermany": _kermany, "pneumoniamnist": _pneumoniamnist}


def train_in_process(tmp: Path, *overrides: str) -> dict:
    """``python -m xray_loss.train OVERRIDES`` in this process (train() on a composed config)."""
    out = tmp / "run"
    extra = [f"paths.output_dir={out}", f"paths.log_dir={tmp / 'logs'}", f"paths.cache_dir={tmp}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", [*QUICK, *overrides, *extra], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return train(cfg)


@pytest.mark.parametrize(
    ("group", "option"),
    [
        # the torchvision backbones take 8-25 s each on 2 cores: the slow tier
        pytest.param(g, o, marks=pytest.mark.slow) if g == "model" and o != "small_cnn" else (g, o)
        for g in ("model", "loss", "optimizer", "data")
        for o in options(g)
    ],
)
def test_every_config_option_trains(tmp_path, group, option):
    overrides = [f"{group}={option}"]
    if group == "data" and option in DATA_FIXTURES:
        overrides += [*DATA_FIXTURES[option](tmp_path), "data.image_size=32"]
    elif group != "data" or option == "phantom":
        overrides += PHANTOM
    record = train_in_process(tmp_path, *overrides)
    assert record["status"] == "completed"
    assert record["config"][group] == option
    assert set(record["test"]) >= {"test/acc", "test/auroc", "test/objective"}
