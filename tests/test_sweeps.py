"""Sweeps: experiment grids, bookkeeping, failures, resumption, Optuna, launchers, DDP."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch

from tests.conftest import (
    assert_ok,
    metrics,
    run_cli,
    run_dirs,
    start_cli,
    sweep_dirs,
    sweep_summary,
)
from tests.fixtures import make_kermany
from xray_loss.report.runs import identity, load_runs
from xray_loss.report.stats import summarise
from xray_loss.runtime.optuna_search import OptunaPruning

pytestmark = pytest.mark.slow


def test_debug_full_grid_writes_every_run_and_a_complete_summary(study_sweep):
    # study_sweep: python -m xray_loss.train -m experiment=full_grid debug=sweep seeds=2
    rows = sweep_summary(study_sweep)
    assert len(rows) == 36 and {r["status"] for r in rows} == {"completed"}
    assert all(r["test_auroc"] and r["best_val_auroc"] for r in rows)
    names = {r["job"] for r in rows}
    for loss in ("bce", "ce"):
        for lr in ("1e-05", "0.0001", "0.001"):
            for epochs in (10, 30, 100):
                for seed in (0, 1):
                    assert f"epochs={epochs},loss={loss},lr={lr},seed={seed}" in names
    # epochs are scaled for the dry run: 10/30/100 -> 1/2/5
    trained = {metrics(study_sweep / r["job"])["config"]["max_epochs"] for r in rows}
    assert trained == {1, 2, 5}
    with open(study_sweep / "sweep_aggregate.csv") as f:
        aggregate = list(csv.DictReader(f))
    assert len(aggregate) == 18 and {r["n"] for r in aggregate} == {"2"}


def test_a_diverging_job_is_recorded_and_fails_the_sweep_after_the_others(workdir):
    proc = run_cli("-m", "debug=tiny", "lr=10,1e-3", "epochs=2", cwd=workdir)
    assert proc.returncode != 0
    assert "1 job(s) failed" in proc.stderr and "lr=10: diverged" in proc.stderr
    (sweep,) = sweep_dirs(workdir)
    status = {r["job"]: (r["status"], r["error"]) for r in sweep_summary(sweep)}
    assert status["lr=0.001"][0] == "completed"  # named by what varies: epochs=2 is held
    assert status["lr=10"][0] == "diverged" and "Training diverged" in status["lr=10"][1]


def test_resume_skips_finished_jobs_and_continues_interrupted_ones(workdir):
    args = ["-m", "debug=tiny", "loss=bce,ce", "seed=0,1", "epochs=3"]
    proc = start_cli(workdir, *args, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        done = [r for r in run_dirs(workdir / "logs") if metrics(r)["status"] == "completed"]
        if len(done) >= 2:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (sweep,) = sweep_dirs(workdir)
    finished = {
        r.name: metrics(r)["finished"]
        for r in run_dirs(sweep)
        if metrics(r)["status"] == "completed"
    }
    assert len(finished) >= 2
    # make one finished job look interrupted after its last epoch: it must resume, not restart
    victim = sorted(finished)[0]
    record = metrics(sweep / victim)
    record["status"] = "running"
    (sweep / victim / "metrics.json").write_text(json.dumps(record))
    del finished[victim]

    assert_ok(run_cli(*args, "resume=true", cwd=workdir))
    assert sweep_dirs(workdir) == [sweep]
    rows = sweep_summary(sweep)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    for name, stamp in finished.items():
        assert metrics(sweep / name)["finished"] == stamp, f"{name} was run again"
    resumed = metrics(sweep / victim)
    assert resumed["resumed_from"].endswith("last.ckpt") and resumed["status"] == "completed"
    # the aggregate groups on the configuration, not the command: one row per head, n = 2
    with open(sweep / "sweep_aggregate.csv") as f:
        aggregate = list(csv.DictReader(f))
    assert sorted((r["loss"], r["n"]) for r in aggregate) == [("bce", "2"), ("ce", "2")]


def test_epoch_budgets_of_one_run_equal_separate_shorter_runs(workdir):
    assert_ok(run_cli("debug=tiny", "epochs=4", "budgets=[2,4]", "lr=3e-3", cwd=workdir))
    assert_ok(run_cli("debug=tiny", "epochs=2", "lr=3e-3", "name=short", cwd=workdir))
    long_run = next(r for r in run_dirs(workdir / "logs") if "budgets" in r.name)
    short_run = next(r for r in run_dirs(workdir / "logs" / "short"))
    budgets = metrics(long_run)["budgets"]
    assert set(budgets) == {"2", "4"}
    short = metrics(short_run)["test"]
    for key, value in short.items():
        assert budgets["2"]["test"][key] == pytest.approx(value, abs=1e-6), key
    assert budgets["4"]["test"] == pytest.approx(metrics(long_run)["test"], abs=1e-6)
    assert (long_run / "test_predictions_epoch002.csv").exists()

    # the report and the aggregate read the budget run as the two runs it stands for: its
    # 2-epoch budget is the same configuration as the separate 2-epoch run, with its numbers
    runs, _ = load_runs([workdir / "logs"])
    assert sorted(r.config["epochs"] for r in runs) == [2, 2, 4]
    short_read = next(r for r in runs if r.path == short_run)
    budget_read = next(r for r in runs if r.path == long_run and r.config["epochs"] == 2)
    assert identity(budget_read.record) == identity(short_read.record)
    assert budget_read.record["best_epoch"] == short_read.record["best_epoch"]
    assert budget_read.probs == pytest.approx(short_read.probs, abs=1e-6)
    budget_curve, short_curve = (dict(r.curves["val/auroc"]) for r in (budget_read, short_read))
    assert budget_curve.keys() == short_curve.keys() == {1, 2}
    assert list(budget_curve.values()) == pytest.approx(list(short_curve.values()))
    cols, rows = summarise([metrics(long_run), metrics(short_run)])
    assert cols == ["epochs"] and [(r["epochs"], r["n"]) for r in rows] == [(2, 2), (4, 1)]
    assert rows[0]["test_auroc_std"] == pytest.approx(0.0, abs=1e-6)


def test_optuna_search_with_sqlite_storage_resumes_its_study(workdir):
    args = [
        "-m",
        "hparams_search=optuna",
        "debug=tiny",
        "epochs=2",
        "hydra.sweeper.n_startup_trials=2",
        "hydra.sweeper.pruner_startup_trials=1",
    ]
    assert_ok(run_cli(*args, "hydra.sweeper.n_trials=3", cwd=workdir))
    (sweep,) = sweep_dirs(workdir)
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    study = optuna.load_study(study_name="xray_loss", storage=storage)
    assert len(study.trials) == 3
    assert_ok(run_cli(*args, "hydra.sweeper.n_trials=5", "resume=true", cwd=workdir))
    assert sweep_dirs(workdir) == [sweep]
    study = optuna.load_study(study_name="xray_loss", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 5
    assert all(
        set(t.params) == {"lr", "batch_size", "optimizer.weight_decay", "loss"} for t in finished
    )
    assert len(sweep_summary(sweep)) == 5 and (sweep / "optuna_best.yaml").exists()
    for t in finished:
        if t.state == optuna.trial.TrialState.COMPLETE:
            record = metrics(sweep / f"trial_{t._trial_id}")
            assert record["best_val_auroc"] == pytest.approx(t.value)
            assert record["config"]["lr"] == pytest.approx(t.params["lr"])


def test_pruning_callback_stops_a_trial_below_the_median():
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )
    good = study.ask()
    for epoch in range(3):
        good.report(0.9, epoch)
    study.tell(good, 0.9)
    bad = study.ask()
    trainer = SimpleNamespace(
        sanity_checking=False,
        current_epoch=0,
        is_global_zero=True,
        callback_metrics={"val/auroc": torch.tensor(0.5)},
        strategy=SimpleNamespace(broadcast=lambda value, src=0: value),
    )
    with pytest.raises(optuna.TrialPruned):
        OptunaPruning(bad).on_validation_end(trainer, None)


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_and_cluster_launchers(workdir, launcher):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = run_cli(
        "-m",
        "debug=tiny",
        "loss=bce,ce",
        "epochs=1",
        f"hydra/launcher={launcher}",
        *extra,
        cwd=workdir,
    )
    assert_ok(proc)
    (sweep,) = sweep_dirs(workdir)
    rows = sweep_summary(sweep)
    assert sorted(r["job"] for r in rows) == ["loss=bce", "loss=ce"]
    assert {r["status"] for r in rows} == {"completed"}


DDP = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def _check_ddp_run(run: Path) -> None:
    record = metrics(run)
    assert record["status"] == "completed" and record["world_size"] == 2
    rank0 = (run / ".hydra" / "resolved_rank0.yaml").read_text()
    rank1 = (run / ".hydra" / "resolved_rank1.yaml").read_text()
    assert rank0 == rank1
    assert list((run / "checkpoints").glob("best-*.ckpt"))


def test_ddp_on_cpu_alone(workdir):
    assert_ok(run_cli("debug=tiny", *DDP, "epochs=2", cwd=workdir))
    (run,) = run_dirs(workdir / "logs")
    _check_ddp_run(run)
    assert len(list((workdir / "logs" / "train" / "runs").iterdir())) == 1


def test_ddp_inside_a_two_job_multirun(workdir):
    assert_ok(run_cli("-m", "debug=tiny", *DDP, "loss=bce,ce", "epochs=1", cwd=workdir))
    assert len(sweep_dirs(workdir)) == 1
    assert not (workdir / "logs" / "train" / "runs").exists()  # no stray single-run dirs
    runs = run_dirs(workdir / "logs")
    assert len(runs) == 2
    for run in runs:
        _check_ddp_run(run)
    losses = {metrics(r)["config"]["loss"] for r in runs}
    assert losses == {"bce", "ce"}


def test_cross_validation_folds_are_aggregated(workdir):
    root = make_kermany(workdir / "cx")
    proc = run_cli(
        "-m",
        "data=kermany",
        f"data.root={root}",
        "data.image_size=32",
        "data.num_workers=0",
        "data.folds=3",
        "data.fold=0,1,2",
        "epochs=1",
        "model.backbone.widths=[8,16]",
        "callbacks.progress_bar.refresh_rate=0",
        "batch_size=16",
        cwd=workdir,
    )
    assert_ok(proc)
    (sweep,) = sweep_dirs(workdir)
    assert len(sweep_summary(sweep)) == 3
    with open(sweep / "sweep_aggregate.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["n"] == "3" and float(row["test_auroc_std"]) >= 0
