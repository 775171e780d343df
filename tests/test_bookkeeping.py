"""Bookkeeping is what identity.SCHEMA says it is: a key marked bookkeeping changes neither the
weights nor a metric, bit for bit. Each such key is varied alone against one reference run that
has global-RNG consumers (dropout, augmentation) and trains past the third epoch, when the
validation loaders have been iterated often enough for a stray draw to show."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import assert_ok, metrics, run_cli, run_dirs
from xray_loss.identity import SCHEMA, Role

pytestmark = pytest.mark.slow

REFERENCE = [
    "debug=tiny",
    "epochs=4",
    "batch_size=32",
    "threads=1",
    "model.backbone.dropout=0.3",
    "data.augment.enabled=true",
]

# every bookkeeping key of the schema, with an override that changes it in a training run
VARIED = {
    "name": "name=elsewhere",
    "paths.": "paths.log_dir=other_logs",
    "checkpoint_every_n_epochs": "checkpoint_every_n_epochs=2",
    "checkpoint_every_n_steps": "checkpoint_every_n_steps=3",
    "logger.": "logger=csv",
    "callbacks.model_checkpoint.filename": "callbacks.model_checkpoint.filename=best",
    "callbacks.model_checkpoint._target_": (
        "callbacks.model_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint"
    ),
    "callbacks.progress_bar.": "callbacks.progress_bar.refresh_rate=1",
    "callbacks.sample_grid.": "callbacks.sample_grid.per_class=2",
    "callbacks.dashboard_layout.": "~callbacks.dashboard_layout",
    "callbacks.test_report.": "+callbacks.test_report.save_figures=true",
    "data.eval_batch_size": "data.eval_batch_size=7",
    "data.num_workers": "data.num_workers=2",
    "trainer.default_root_dir": "trainer.default_root_dir=elsewhere",
    "trainer.enable_model_summary": "trainer.enable_model_summary=true",
    "trainer.enable_progress_bar": "+trainer.enable_progress_bar=false ~callbacks.progress_bar",
    "trainer.log_every_n_steps": "trainer.log_every_n_steps=3",
    "trainer.num_sanity_val_steps": "trainer.num_sanity_val_steps=2",
    "trainer.benchmark": "trainer.benchmark=true",
    "trainer.deterministic": "trainer.deterministic=true",
}
# bookkeeping keys that are no input of a single training run, or restate another key
NOT_A_TRAINING_INPUT = {
    "resume": "tests/test_resume.py: a killed and resumed run ends bit for bit",
    "hydra.launcher.": "a sweep's launcher: tests/test_sweeps.py",
    "hydra.sweep.": "where a sweep writes",
    "hydra.sweeper.n_trials": "the Optuna sweeper's budget",
    "hydra.sweeper.n_jobs": "the Optuna sweeper's parallelism",
    "ckpt_path": "eval and predict",
    "inputs": "predict",
    "optuna_trial_id": "added by the Optuna sweeper",
    "data.cache_dir": "image folders: tests/test_cache.py (cold and warm caches agree)",
    "data.cache": "image folders: tests/test_cache.py",
    "data.split_csv": "where the split's file list is written (image folders)",
    "data.url": "PneumoniaMNIST's download, offline here",
    "data.download": "PneumoniaMNIST's download, offline here",
    "module.": "wires the config groups into the module: restates them",
    "callbacks.model_checkpoint.dirpath": "restates paths.output_dir (varied above)",
    "callbacks.model_checkpoint.save_last": "last.ckpt is last_checkpoint's (below)",
    "callbacks.model_checkpoint.auto_insert_metric_name": "a checkpoint file's name",
    "callbacks.last_checkpoint.": "restates checkpoint_every_n_epochs (varied above)",
    "callbacks.resume_checkpoint.": "restates checkpoint_every_n_steps (varied above)",
    "callbacks.epoch_budgets.": "restates budgets and epochs_scale",
    "callbacks.time_budget.duration": "restates trainer.max_time",
    "data.batch_size": "restates batch_size",
    "data.seed": "restates seed",
    "optimizer.lr": "restates lr",
    "trainer._target_": "always lightning.pytorch.Trainer",
    "trainer.plugins": "the atomic checkpoint IO: tests/test_checkpoint_io.py",
}


def test_every_bookkeeping_key_is_varied_or_says_why_not():
    bookkeeping = {k for k, v in SCHEMA.items() if v.role == Role.BOOKKEEPING}
    assert bookkeeping == set(VARIED) | set(NOT_A_TRAINING_INPUT)
    assert not set(VARIED) & set(NOT_A_TRAINING_INPUT)


def _train(workdir, *overrides: str) -> tuple[dict, dict]:
    assert_ok(run_cli(*REFERENCE, *overrides, cwd=workdir))
    (run,) = run_dirs(workdir)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return metrics(run), last["state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, dict]:
    return _train(tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize("key", sorted(VARIED))
def test_a_bookkeeping_key_changes_no_weight_and_no_metric(key, reference, tmp_path):
    record, weights = _train(tmp_path, *VARIED[key].split())
    ref_record, ref_weights = reference
    for name, tensor in ref_weights.items():
        assert torch.equal(weights[name], tensor), f"{VARIED[key]} changed {name}"
    for field in ("best_epoch", "epochs_trained", "threshold", "val", "test"):
        assert record[field] == ref_record[field], f"{VARIED[key]} changed {field}"
    assert record["configuration"] == ref_record["configuration"]
