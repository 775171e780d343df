"""Values checked where they enter (train, predict, report, make tensorboard): each bad value is
one sentence naming the key, the value and what is valid, before any data or model is touched."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import run_cli
from tests.test_config import CONF, _compose
from xray_loss.checks import check_config
from xray_loss.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_gpu(monkeypatch):
    """The same answer on a GPU machine: the checks ask torch whether there is one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize(
    ("overrides", "key", "valid"),
    [
        (["+trainer.max_time=0"], "trainer.max_time=0", "DD:HH:MM:SS"),
        (["+trainer.max_time=-1"], "trainer.max_time=-1", "DD:HH:MM:SS"),
        (["+trainer.max_time=abc"], "trainer.max_time='abc'", "DD:HH:MM:SS"),
        (["+trainer.max_time=1:00"], "trainer.max_time='1:00'", "DD:HH:MM:SS"),
        (["+trainer.max_time="], "trainer.max_time=''", "DD:HH:MM:SS"),
        (["+trainer.max_time={a:1}"], "trainer.max_time={'a': 1}", "{minutes: 14}"),
        (["resume=maybe"], "resume='maybe'", "true or false"),
        (["resume=no"], "resume='no'", "true or false"),
        (["channels_last=maybe"], "channels_last='maybe'", "auto, true or false"),
        (["compile=maybe"], "compile='maybe'", "true or false"),
        (["data.on_device=maybe"], "data.on_device='maybe'", "auto, true or false"),
        (["checkpoint_every_n_steps=-1"], "checkpoint_every_n_steps=-1", "integer >= 0"),
        (["checkpoint_every_n_steps=abc"], "checkpoint_every_n_steps='abc'", "integer >= 0"),
        (["logger=[]"], "logger=[]", "logger=tensorboard"),
        (["optimizer=sgd", "optimizer.momentum=2"], "optimizer.momentum=2", "[0, 1)"),
        (["data.augment.rotation=abc"], "data.augment.rotation='abc'", ">= 0"),
        (["model.backbone.widths=[0]"], "model.backbone.widths=[0]", "integers >= 1"),
        (["seed=4294967296"], "seed=4294967296", "< 2**32"),
        (["name='ünïcode'"], "name='ünïcode'", "ASCII"),
        ([f"name={'a' * 300}"], "name='aaaa", "at most 100"),
        (["trainer=gpu"], "trainer.accelerator='gpu'", "no GPU"),
        (["model=resnet18", "debug=tiny"], "model.backbone.widths", "debug=tiny sets it"),
    ],
)
def test_a_bad_value_is_one_sentence_naming_key_value_and_range(overrides, key, valid, no_gpu):
    with pytest.raises(ConfigError) as err:
        check_config(_compose(*overrides))
    message = str(err.value)
    assert key in message and valid in message, message
    assert "\n" not in message and len(message) < 400


@pytest.mark.parametrize(
    "overrides",
    [
        ["+trainer.max_time=00:00:14:00"],
        ["+trainer.max_time={minutes:14}"],
        ["resume=true", "compile=false", "channels_last=auto", "data.on_device=false"],
        ["checkpoint_every_n_steps=0", "logger=[tensorboard,csv]", "seed=4294967295"],
        ["optimizer=sgd", "optimizer.momentum=0", "data.augment.rotation=0"],
    ],
)
def test_the_valid_edges_pass(overrides):
    check_config(_compose(*overrides))


@pytest.mark.parametrize(
    "argv",
    [
        ["threshold=youden", "threshold.source=folder"],
        ["threshold.source=folder", "threshold=youden"],
    ],
)
def test_the_documented_short_threshold_takes_a_source_beside_it(argv):
    from xray_loss.config import spell_out_threshold

    cfg = _compose(*spell_out_threshold(argv))
    assert (cfg.threshold.rule, cfg.threshold.source) == ("youden", "folder")
    assert spell_out_threshold(["threshold=youden"]) == ["threshold=youden"]  # run names kept


def _entry_cfg(entry: str, *overrides: str):
    needs = {"predict": ["inputs=/no/such"], "eval": []}[entry]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            config_name=entry,
            overrides=["ckpt_path=/no/such.ckpt", *needs, *overrides],
            return_hydra_config=True,
        )


ENTRY_VALUES = [
    ("batch_size=0", "batch_size=0: batch_size must be an integer >= 1"),
    ("batch_size=abc", "batch_size='abc': batch_size must be an integer >= 1"),
    ("accelerator=gpu", "accelerator='gpu': accelerator must be auto, cpu or gpu"),
    ("accelerator=tpu", "accelerator='tpu': accelerator must be auto, cpu or gpu"),
]


@pytest.mark.parametrize(
    ("entry", "override", "said"),
    [("predict", o, s) for o, s in ENTRY_VALUES]
    + [("predict", "cam=maybe", "cam='maybe': cam must be true or false")]
    + [("eval", o, s) for o, s in ENTRY_VALUES]
    + [("eval", "seed=-1", "seed=-1: seed must be an integer >= 0")],
)
def test_predict_and_eval_check_their_values_before_loading_the_checkpoint(
    entry, override, said, no_gpu
):
    from xray_loss.eval import evaluate
    from xray_loss.predict import predict

    with pytest.raises(ConfigError) as err:
        {"predict": predict, "eval": evaluate}[entry](_entry_cfg(entry, override))
    assert said in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--bootstrap", "-5"], "--bootstrap -5: give an integer >= 40"),
        (["--bootstrap", "0"], "--bootstrap 0: give an integer >= 40"),
        (["--bootstrap", "abc"], "--bootstrap abc: give an integer >= 40"),
        (["--out", "{file}"], "a_file is a file; give a folder"),
        (["--out", "{file}/below"], "a_file is a file; give a folder"),
    ],
)
def test_report_options_are_checked_where_they_enter(tmp_path, capsys, args, said):
    from xray_loss.report.__main__ import main

    file = tmp_path / "a_file"
    file.write_text("")
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), *(a.format(file=file) for a in args)])
    err = capsys.readouterr().err
    assert stop.value.code != 0 and said in err and "Traceback" not in err


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    ("name", "said"), [('we"ird', "holds no TensorBoard runs"), ("f", "is a file")]
)
def test_make_tensorboard_takes_any_path_and_says_what_it_is(tmp_path, name, said):
    sweep = tmp_path / name
    sweep.write_text("") if name == "f" else sweep.mkdir()
    proc = subprocess.run(
        ["make", "-s", "-o", "install", "tensorboard", f"SWEEP={sweep}", f"PY={sys.executable}"]
        + [f"VENV={tmp_path / 'venv'}"],  # never the real venv: install is not remade (-o)
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode != 0 and f"SWEEP={sweep} {said}" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_per_step_checkpoints_save_without_lightnings_weights_only_line(workdir):
    proc = run_cli("debug=tiny", "epochs=1", "threads=1", "checkpoint_every_n_steps=1", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "weights_only" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("xray_loss.eval", ["ckpt_path=/no/such.ckpt", "batch_size=0"]),
        ("xray_loss.predict", ["ckpt_path=/no/such.ckpt", "inputs=/no/such", "cam=maybe"]),
        ("xray_loss.train", ["name=résumé"]),  # ours, not Hydra's lexer on a non-ASCII value
    ],
)
def test_entry_points_refuse_a_value_in_one_line_before_making_a_folder(tmp_path, module, args):
    from tests.conftest import run_cli

    proc = run_cli(*args, module=module, cwd=tmp_path)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().startswith("Error: Invalid value ") and "Traceback" not in proc.stderr
    )
    assert "HYDRA_FULL_ERROR" not in proc.stderr and not (tmp_path / "logs").exists()
