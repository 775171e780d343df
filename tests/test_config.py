"""Config composition and the checks of user values (in-process, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from xray_loss.checks import check_config
from xray_loss.config import ConfigError, register_resolvers, run_dirname

CONF = str(Path(__file__).resolve().parents[1] / "conf")
register_resolvers()


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("lr=-1", "lr", "> 0"),
        ("lr=0", "lr", "> 0"),
        ("epochs=0", "epochs", ">= 1"),
        ("batch_size=0", "batch_size", ">= 1"),
        ("data.n_train=-5", "data.n_train", ">= 2"),
        ("data.n_test=-1", "data.n_test", ">= 2"),
        ("seed=-3", "seed", ">= 0"),
        ("threshold.rule=1.5", "threshold.rule", "[0, 1]"),
        ("threshold.rule=sens@1.5", "sens@0.95", "[0, 1]"),
        ("threshold.source=/no/such/folder", "threshold.source", "labeled"),
    ],
)
def test_invalid_values_name_the_key_and_the_range(override, key, allowed):
    cfg = _compose(override)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    message = str(err.value)
    assert key in message and allowed in message
    assert "\n" not in message  # one sentence, no traceback wall


def test_defaults_pass_the_checks():
    check_config(_compose())
    check_config(_compose("threshold=youden", "loss=ce", "seed=0"))
    check_config(_compose("threshold.rule=sens@0.95", "threshold.source=auto"))


@pytest.mark.parametrize(
    "model", ["small_cnn", "resnet18", "resnet50", "densenet121", "efficientnet_b0"]
)
def test_every_backbone_builds_for_one_channel_input(model):
    cfg = _compose(f"model={model}")
    backbone = instantiate(cfg.model.backbone)
    features = backbone(torch.zeros(2, 1, 64, 64))
    assert features.shape == (2, backbone.out_features)


@pytest.mark.parametrize("group", ["loss", "optimizer", "scheduler", "trainer"])
def test_every_group_option_composes(group):
    options = sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))
    assert options
    for option in options:
        cfg = _compose(f"{group}={option}")
        assert cfg[group] is not None


def test_top_level_knobs_reach_the_configs_they_drive():
    cfg = _compose("loss=ce", "lr=0.003", "epochs=7", "batch_size=48", "seed=5")
    assert cfg.optimizer.lr == 0.003
    assert cfg.trainer.max_epochs == 7
    assert cfg.data.batch_size == 48 and cfg.data.seed == 5
    assert cfg.module.head._target_.endswith("CEHead")
    assert _compose("epochs=100", "epochs_scale=0.05").trainer.max_epochs == 5


def test_run_directory_names_come_from_overrides():
    assert run_dirname(["loss=ce", "lr=0.001"]) == "loss=ce,lr=0.001"
    assert run_dirname(["lr=0.001", "loss=ce"]) == "loss=ce,lr=0.001"
    assert run_dirname(["data.root=/a/b", "resume=true", "seed=1"]) == "seed=1"
    assert run_dirname([], "_", "job0") == "job0"
    long = run_dirname([f"model.backbone.widths=[{','.join(['64'] * 40)}]"])
    assert len(long) <= 120 and "/" not in long


def test_slurm_preset_asks_one_task_per_gpu():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "hydra/launcher=slurm",
                "trainer=ddp",
                "trainer.devices=4",
                "trainer.num_nodes=2",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)


@pytest.mark.parametrize(
    "name",
    [
        "loss_compare",
        "epochs_sweep",
        "epochs_budget",
        "lr_sweep",
        "full_grid",
        "kermany_cpu",
        "pneumoniamnist_cpu",
    ],
)
def test_experiments_compose(name):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=[f"experiment={name}"], return_hydra_config=True
        )
    assert cfg.name == name
    if not name.endswith("_cpu"):  # the recipes are single runs
        params = cfg.hydra.sweeper.params
        assert params.seed == "range(0,3)"


def test_paths_and_non_ascii_values_are_quoted_for_hydra():
    from xray_loss.config import quote_overrides

    argv = [
        "ckpt_path=/logs/x/epochs=30,loss=ce,lr=0.001/checkpoints/best.ckpt",
        "cam=true",
        "inputs='already quoted'",
        "inputs=/scans/it's",
        "name=résumé",
        "data.root=/données/a,/données/b",
    ]
    assert quote_overrides(argv, ["ckpt_path", "inputs"]) == [
        "ckpt_path='/logs/x/epochs=30,loss=ce,lr=0.001/checkpoints/best.ckpt'",
        "cam=true",
        "inputs='already quoted'",
        "inputs='/scans/it\\'s'",
        "name='résumé'",  # Hydra's lexer refuses it bare
        "data.root=/données/a,/données/b",  # a sweep's list: quoting would make it one value
    ]


def test_epoch_budgets_with_a_schedule_are_refused():
    with pytest.raises(ConfigError, match="scheduler=none"):
        check_config(_compose("budgets=[2,4]", "epochs=4", "scheduler=cosine"))
    check_config(_compose("budgets=[2,4]", "epochs=4"))


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (["+foo=1"], "Unknown setting foo:"),
        (["+data.bogus=1"], "Unknown setting data.bogus: PhantomDataModule takes no bogus"),
        (["+loss.bogus=1"], "Unknown setting loss.bogus: BCEHead"),
        (["model=resnet18", "+model.backbone.depth=3"], "torchvision_backbone takes no depth"),
        (["debug=tiny", "data=kermany"], "KermanyDataModule takes no"),
        (["budgets=[1,5]", "epochs=1"], "asks for [5] epochs, but the run trains epochs=1"),
        (["threads=abc"], "threads must be auto or an integer >= 1"),
        (["name=../../../x"], "name must be a plain folder name under logs/"),
    ],
)
def test_keys_nothing_reads_and_values_nothing_can_use_are_refused(overrides, said):
    with pytest.raises(ConfigError) as err:
        check_config(_compose(*overrides))
    assert said in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["+trainer.max_time=00:00:00:05"],
        ["+optimizer.betas=[0.9,0.99]"],
        ["experiment=kermany_cpu"],
        ["hparams_search=optuna"],
        ["debug=sweep", "experiment=full_grid_budgets"],
        ["threads=2", "name=my-study_1"],
    ],
)
def test_keys_the_code_reads_pass(overrides):
    check_config(_compose(*overrides))
