"""TensorBoard as a user sees it: a small sweep served by the real TensorBoard, asserted through
its HTTP API (what the tabs will show), and the other loggers, offline."""

from __future__ import annotations

import csv
import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import metrics, run_cli, run_dirs

pytestmark = pytest.mark.slow
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory) -> Path:
    """BCE and CE at a good and a diverging learning rate: 4 jobs, 2 of them diverged."""
    work = tmp_path_factory.mktemp("dash")
    proc = run_cli("-m", "debug=tiny", "loss=bce,ce", "lr=1e-3,10", "epochs=2", cwd=work)
    assert proc.returncode == 1 and "2 job(s) failed" in proc.stderr  # the diverged jobs
    (sweep,) = [p for p in (work / "logs" / "train" / "multirun").iterdir() if p.is_dir()]
    return sweep


@pytest.fixture(scope="module")
def tensorboard(small_sweep):
    """The real TensorBoard on the sweep, as `make tensorboard SWEEP=<dir>` serves it."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(small_sweep)]
        + ["--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if len(_get(f"{base}/data/runs")) >= 4:
                break
        except OSError:
            pass
        time.sleep(1)
    yield base
    server.terminate()
    server.wait(timeout=30)


# named by what the sweep varies (loss, lr), not by what it holds (epochs=2)
JOBS = {"loss=bce,lr=0.001", "loss=ce,lr=0.001"}
DIVERGED = {"loss=bce,lr=10", "loss=ce,lr=10"}


def _session_groups(base: str, **request) -> list[dict]:
    body = {"experimentName": "", "colParams": [], "startIndex": 0, "sliceSize": 100}
    body.update(allowedStatuses=STATUSES, **request)
    return _get(f"{base}/data/plugin/hparams/session_groups", body)["sessionGroups"]


def test_runs_are_named_by_their_swept_values_and_curves_are_per_epoch(tensorboard):
    # the sweep directory itself is no run (".")
    assert set(_get(f"{tensorboard}/data/runs")) == JOBS | DIVERGED
    tags = _get(f"{tensorboard}/data/plugin/scalars/tags")
    for run in JOBS:
        assert {"train/objective", "train/acc", "val/auroc", "val/acc", "val/objective"} <= set(
            tags[run]
        )
        assert "epoch" not in tags[run]  # no step counter: the step is the epoch
        for tag in ("train/objective", "val/auroc"):
            points = _get(f"{tensorboard}/data/plugin/scalars/scalars?run={run}&tag={tag}")
            assert [step for _, step, _ in points] == [1, 2]  # x = epochs completed


def test_hparams_table_shows_what_the_sweep_varies_as_numbers_and_every_status(tensorboard):
    experiment = _get(f"{tensorboard}/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = {h["name"]: h for h in experiment["hparamInfos"]}
    # the sweep's axes, then the runs' status and why their training stopped (both vary here);
    # nothing held constant (epochs, batch_size, ...), which TensorBoard would tick
    assert [h["name"] for h in experiment["hparamInfos"]] == ["loss", "lr", "status", "stopped_by"]
    assert all(h["differs"] for h in experiment["hparamInfos"])
    assert infos["lr"]["type"] == "DATA_TYPE_FLOAT64" and infos["lr"]["domainDiscrete"] == [
        0.001,
        10.0,
    ]
    assert infos["loss"]["domainDiscrete"] == ["bce", "ce"]
    metric_tags = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metric_tags[:3] == ["val/auroc_best", "test/auroc", "test/acc"]
    rows = {g["name"]: g for g in _session_groups(tensorboard)}
    assert set(rows) == JOBS | DIVERGED  # diverged runs keep their row
    for name, row in rows.items():
        session = row["sessions"][0]
        assert row["hparams"]["status"] == ("diverged" if name in DIVERGED else "completed")
        assert session["status"] == ("STATUS_FAILURE" if name in DIVERGED else "STATUS_SUCCESS")
        assert row["hparams"]["batch_size"] == 64  # a number (shown, filtered, sorted as one)
    completed = rows["loss=ce,lr=0.001"]["metricValues"]
    assert {m["name"]["tag"] for m in completed} >= {"val/auroc_best", "test/auroc", "test/acc"}
    # the table sorts by lr as numbers, both ways
    for order, reverse in (("ORDER_ASC", False), ("ORDER_DESC", True)):
        groups = _session_groups(tensorboard, colParams=[{"hparam": "lr", "order": order}])
        lrs = [g["hparams"]["lr"] for g in groups]
        assert lrs == sorted(lrs, reverse=reverse) and {type(lr) for lr in lrs} <= {int, float}


def test_custom_scalars_chart_one_metric_per_chart_and_samples_come_once(tensorboard):
    layout = _get(f"{tensorboard}/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c for cat in layout["category"] for c in cat["chart"]}
    assert {"val auroc", "val acc", "val loss", "train acc", "train loss"} <= set(charts)
    assert charts["val auroc"]["multiline"]["tag"] == ["^val/auroc$"]
    images = _get(f"{tensorboard}/data/plugin/images/tags")
    with_samples = [run for run, tags in images.items() if "viz/samples_normal" in tags]
    assert len(with_samples) == 1  # the sweep's first job, not every job
    (run,) = with_samples
    shown = _get(f"{tensorboard}/data/plugin/images/images?run={run}&tag=viz/samples_normal")
    assert [image["step"] for image in shown] == [0]  # before the first epoch


def test_test_figures_sit_at_the_epoch_after_the_curves(tensorboard):
    images = _get(f"{tensorboard}/data/plugin/images/tags")
    for run in JOBS:
        figures = [tag for tag in images[run] if "confusion_matrix" in tag or "roc" in tag]
        assert figures and all(tag.startswith("viz/") for tag in figures)
        for tag in figures:
            shown = _get(f"{tensorboard}/data/plugin/images/images?run={run}&tag={tag}")
            assert [image["step"] for image in shown] == [2]  # epochs trained, like test/*


def test_every_logger_writes_offline(workdir):
    """TensorBoard, CSV, MLflow (SQLite) and W&B (offline) together, no network."""
    proc = run_cli(
        "debug=tiny",
        "epochs=2",
        "logger=[tensorboard,csv,mlflow,wandb]",
        cwd=workdir,
        env={"WANDB_SILENT": "true", "WANDB_DISABLE_CODE": "true"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(workdir / "logs")
    assert metrics(run)["status"] == "completed"
    assert list(run.glob("events.out.tfevents.*"))
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["step"] for r in rows if r.get("val/auroc")} == {"1", "2"}  # per epoch
    with sqlite3.connect(workdir / "logs" / "mlflow.db") as db:
        keys = {k for (k,) in db.execute("select distinct key from metrics")}
        names = {n for (n,) in db.execute("select name from experiments")}
    assert {"train/objective", "val/auroc", "test/auroc"} <= keys and "train" in names
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))
