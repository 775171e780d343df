"""End to end through the real command line, as a user runs it (tiny data, CPU)."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.conftest import (
    ROOT,
    TINY,
    assert_ok,
    events,
    hparams_data,
    metrics,
    run_cli,
    run_dirs,
    start_cli,
)
from tests.fixtures import tmpfs
from xray_loss.metrics import OBJECTIVE, SCORES
from xray_loss.module import XrayClassifier

pytestmark = pytest.mark.slow

NAMES = [OBJECTIVE, *SCORES]
SCALARS = ["train/objective", "train/acc"] + [f"{s}/{m}" for s in ("val", "test") for m in NAMES]
HPARAMS = {"loss", "lr", "epochs", "batch_size", "model", "data", "seed"}


def hparams_of(ea) -> dict:
    hparams = hparams_data(ea, "_hparams_/session_start_info").session_start_info.hparams
    return {k: v.string_value or v.number_value for k, v in hparams.items()}


def metric_names_of(ea) -> set:
    return {m.name.tag for m in hparams_data(ea, "_hparams_/experiment").experiment.metric_infos}


def test_a_run_leaves_metrics_checkpoints_and_tensorboard_logs(workdir):
    proc = run_cli(*TINY, "epochs=2", cwd=workdir)
    assert_ok(proc)
    assert "make tensorboard SWEEP=" in proc.stdout
    assert "test/auroc" in proc.stdout  # the test metrics are printed
    (run,) = run_dirs(workdir / "logs")
    record = metrics(run)
    assert record["status"] == "completed"
    # every metric at the run's threshold, and the threshold-dependent ones at 0.5 too
    at_half = {f"test/{m}@0.5" for m, score in SCORES.items() if not score.ranks}
    assert set(record["test"]) == {f"test/{m}" for m in NAMES} | at_half
    assert {"val/auroc", "val/acc"} <= set(record["val"])
    assert 1 <= record["best_epoch"] <= 2 and record["wall_time_s"] > 0
    assert record["config"]["loss"] == "bce" and record["config"]["lr"] == 0.001
    assert list((run / "checkpoints").glob("best-epoch*.ckpt"))
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / ".hydra" / "config.yaml").exists()

    ea = events(run)
    assert set(SCALARS) <= set(ea.Tags()["scalars"])
    assert "hp_metric" not in ea.Tags()["scalars"]
    figures = {"viz/samples_normal", "viz/samples_pneumonia"}
    assert figures | {"viz/test_confusion_matrix", "viz/test_roc"} <= set(ea.Tags()["images"])
    hp = hparams_of(ea)
    # values as a reader types them: 0.001, 64 (not 64.000), and the run's status
    assert set(hp) >= HPARAMS and hp["loss"] == "bce" and hp["lr"] == 0.001
    assert hp["batch_size"] == 64 and hp["status"] == "completed"
    assert not any("${" in str(v) for v in hp.values())
    assert {"val/auroc_best", "test/acc", "test/auroc"} <= metric_names_of(ea)
    assert "${" not in (run / "hparams.yaml").read_text()

    with open(run / "test_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 96 and {r["label"] for r in rows} == {"0", "1"}


def test_multirun_grid_gives_one_run_per_job_with_heads_of_the_right_size(workdir):
    proc = run_cli("-m", *TINY, "loss=bce,ce", "lr=1e-4,1e-3", "epochs=2", cwd=workdir)
    assert_ok(proc)
    runs = run_dirs(workdir / "logs")
    assert len(runs) == 4
    assert len({r.parent for r in runs}) == 1  # one sweep directory
    seen = set()
    for run in runs:
        record = metrics(run)
        assert record["status"] == "completed"
        loss, lr = record["config"]["loss"], record["config"]["lr"]
        assert f"loss={loss}" in run.name and "lr=" in run.name
        seen.add((loss, lr))
        hp = hparams_of(events(run))
        assert hp["loss"] == loss and float(hp["lr"]) == pytest.approx(lr)
        (best,) = (run / "checkpoints").glob("best-*.ckpt")
        model = XrayClassifier.load_from_checkpoint(best, weights_only=True, map_location="cpu")
        assert model.head.linear.out_features == (2 if loss == "ce" else 1)
    assert seen == {(lo, lr) for lo in ("bce", "ce") for lr in (1e-4, 1e-3)}


def test_focal_head_trains(workdir):
    assert_ok(run_cli(*TINY, "loss=focal", "loss.alpha=auto", "epochs=1", cwd=workdir))
    (run,) = run_dirs(workdir / "logs")
    assert metrics(run)["status"] == "completed"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("lr=-1", "lr must be a number > 0"),
        ("batch_size=0", "batch_size must be an integer >= 1"),
        ("loss=foo", "Available options in 'loss'"),
    ],
)
def test_bad_input_gives_one_clear_message(workdir, override, expected):
    proc = run_cli(*TINY, override, cwd=workdir)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    if override == "loss=foo":
        assert "\tce\n" in proc.stderr and "\tfocal\n" in proc.stderr
    assert not list(workdir.glob("logs/*/runs/*"))  # refused before a run directory is made


def test_a_name_that_is_a_path_writes_nothing_outside_logs(workdir):
    proc = run_cli("-m", *TINY, "loss=bce,ce", "name=../../escaped", cwd=workdir)
    assert proc.returncode == 1 and "name must be a plain folder name" in proc.stderr
    assert not (workdir.parent / "escaped").exists() and not list(workdir.rglob("escaped"))


def test_a_diverging_run_stops_in_its_first_epoch(workdir):
    proc = run_cli(*TINY, "lr=10", "epochs=5", "data.n_train=640", cwd=workdir)
    assert proc.returncode != 0
    assert "Training diverged" in proc.stderr and "Traceback" not in proc.stderr
    (run,) = run_dirs(workdir / "logs")
    record = metrics(run)
    assert record["status"] == "diverged" and "lr=10" in record["error"]
    assert "epoch 1 " in record["error"]  # epochs are counted from 1, as the progress bar does


def test_same_seed_same_metrics_and_simultaneous_runs_get_their_own_directories(workdir):
    procs = [start_cli(workdir, *TINY, "epochs=2", "seed=0") for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    runs = run_dirs(workdir / "logs")
    assert len(runs) == 2
    a, b = (metrics(r) for r in runs)
    assert a["test"] == b["test"] and a["val"] == b["val"]
    ca = torch.load(next((runs[0] / "checkpoints").glob("best*.ckpt")), weights_only=True)
    cb = torch.load(next((runs[1] / "checkpoints").glob("best*.ckpt")), weights_only=True)
    for k, v in ca["state_dict"].items():
        assert torch.equal(v, cb["state_dict"][k]), k


def test_val_metrics_use_the_threshold_the_test_metrics_use(workdir):
    assert_ok(run_cli(*TINY, "epochs=3", "lr=3e-3", "threshold=youden", cwd=workdir))
    (run,) = run_dirs(workdir / "logs")
    record = metrics(run)
    point = record["operating_point"]
    assert (point["rule"], point["source"], point["n"]) == ("youden", "carveout", 96)
    assert record["threshold"] == point["value"] != 0.5
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    # evaluated in batches of 7 (training validated in batches of 64): the same numbers
    args = [f"ckpt_path={best}", "split=val", "batch_size=7"]
    assert_ok(run_cli(*args, module="xray_loss.eval", cwd=workdir))
    (evaluated,) = [r for r in run_dirs(workdir / "logs") if r != run]
    assert metrics(evaluated)["threshold"] == pytest.approx(record["threshold"])
    for name in NAMES:
        assert metrics(evaluated)["test"][f"test/{name}"] == pytest.approx(
            record["val"][f"val/{name}"], abs=1e-6
        ), name


def test_a_run_stopped_by_the_clock_says_so_and_counts_complete_epochs_only(workdir):
    proc = run_cli(*TINY, "epochs=500", "+trainer.max_time=00:00:00:05", cwd=workdir)
    assert_ok(proc)
    (run,) = run_dirs(workdir / "logs")
    record = metrics(run)
    assert record["status"] == "completed" and record["stopped_by"] == "max_time"
    steps_per_epoch = 256 // 64  # debug=tiny
    assert 0 < record["epochs_trained"] < 500
    assert record["epochs_trained"] == record["steps"] // steps_per_epoch  # a cut epoch: not
    assert hparams_of(events(run))["stopped_by"] == "max_time"  # marked in HParams
    # without a clock: every epoch, and the record says why it ended
    assert_ok(run_cli(*TINY, "epochs=2", "name=plain", cwd=workdir))
    (plain,) = run_dirs(workdir / "logs" / "plain")
    assert metrics(plain)["stopped_by"] == "max_epochs" and metrics(plain)["epochs_trained"] == 2
    # the learning rate per epoch, on the epoch axis, and the backbone's last in the record
    assert metrics(plain)["final_lr"] == pytest.approx(1e-3)
    lrs = [(e.step, e.value) for e in events(plain).Scalars("train/lr")]
    assert lrs == [(1, pytest.approx(1e-3)), (2, pytest.approx(1e-3))]


def test_a_run_that_diverges_late_keeps_the_budgets_it_passed(workdir):
    env = {"PYTHONPATH": str(ROOT / "tests"), "XRAY_LOSS_CACHE": str(workdir)}
    late = ["+callbacks.late._target_=late_divergence.DivergeAt", "+callbacks.late.epoch=3"]
    proc = run_cli(*TINY, "epochs=4", "budgets=[1,2,4]", *late, cwd=workdir, env=env)
    assert proc.returncode != 0 and "injected in epoch 3" in proc.stderr
    (run,) = run_dirs(workdir / "logs")
    record = metrics(run)
    assert record["status"] == "diverged" and record["stopped_by"] == "diverged"
    assert set(record["budgets"]) == {"1", "2"}  # what separate 1- and 2-epoch runs report
    assert record["budgets"]["2"]["test"]["test/auroc"] > 0


@pytest.mark.parametrize("multirun", [False, True])
def test_a_read_only_log_directory_is_one_sentence(workdir, multirun):
    args = ["-m", "loss=bce,ce"] if multirun else []
    with tmpfs(workdir / "ro", read_only=True) as disk:
        proc = run_cli(*args, *TINY, f"paths.log_dir={disk / 'logs'}", cwd=workdir)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"the log directory {disk / 'logs'} cannot be written" in proc.stderr
    assert "read-only" in proc.stderr and "paths.log_dir=" in proc.stderr
