"""From runs to report: figures, summary, eval, predict, the notebook and the dashboard."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import assert_ok, metrics, run_cli
from xray_loss.data.phantom import generate_phantoms
from xray_loss.report import auroc, expected_calibration_error, make_report, sign_flip_test

pytestmark = pytest.mark.slow
NAMES = ["loss", "acc", "auroc", "f1", "sensitivity", "specificity"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A debug-size full grid with 2 seeds (36 tiny jobs) plus one unfinished run."""
    work = tmp_path_factory.mktemp("sweep")
    assert_ok(run_cli("-m", "experiment=full_grid", "debug=sweep", "seeds=2", cwd=work))
    (sweep_dir,) = list((work / "logs" / "full_grid" / "multirun").iterdir())
    unfinished = sweep_dir / "epochs=10,loss=ce,lr=0.1,seed=0"
    unfinished.mkdir()
    (unfinished / "metrics.json").write_text(json.dumps({"status": "running"}))
    return sweep_dir


def test_report_writes_the_study_figures_and_summary(sweep, tmp_path):
    out = tmp_path / "report"
    written = make_report([sweep], out, n_boot=100)
    figures = written["figures"]
    assert set(figures) == {"fig1_loss_compare", "fig2_epochs", "fig2_lr", "calibration"}
    for fig in figures.values():
        assert all(Path(p).stat().st_size > 5000 for p in fig["files"])
        assert {Path(p).suffix for p in fig["files"]} == {".png", ".pdf"}
    # the data behind the figures: 4 panels, series per compared value, epoch ranges
    fig1 = figures["fig1_loss_compare"]["data"]
    assert list(fig1) == ["train/acc", "val/acc", "train/loss", "val/loss"]
    assert all(set(series) == {"BCE", "CE"} for series in fig1.values())
    assert fig1["val/loss"]["CE"][0] == [1, 2, 3, 4, 5]  # epochs=100 scaled to 5
    fig2e = figures["fig2_epochs"]["data"]["val/acc"]
    assert {k: v[0][-1] for k, v in fig2e.items()} == {
        "epochs=10": 1,
        "epochs=30": 2,
        "epochs=100": 5,
    }
    assert set(figures["fig2_lr"]["data"]["train/loss"]) == {
        "lr=1e-05",
        "lr=0.0001",
        "lr=0.001",
    }
    assert set(figures["calibration"]["data"]) == {"bce", "ce"}
    # summary: 18 configurations x 2 seeds, CIs, one best row, paired BCE vs CE tests
    rows = written["summary"]
    assert len(rows) == 18 and all(r["n"] == 2 for r in rows)
    assert sum(r["best"] for r in rows) == 1
    assert all(r["auroc_ci_low"] <= r["auroc_mean"] + 0.2 for r in rows)
    tests = written["tests"]
    assert len(tests) == 9 + 1 and all(t["n"] == 2 for t in tests)
    assert tests[-1]["pairs"] == "18 pairs from 2 seed(s)"  # pooled over seed-level means
    assert "undecidable with 2 seed(s)" in tests[0]["verdict"]
    text = (out / "summary.md").read_text()
    assert "**" in text and "BCE vs CE" in text and "Skipped runs" in text
    assert "lr=0.1,seed=0" in text  # the unfinished run is named
    with open(out / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 18


def test_report_command_line(sweep, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xray_loss.report",
            str(sweep),
            "--out",
            str(tmp_path / "r"),
            "--compare",
            "lr",
            "--bootstrap",
            "50",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stdout and (tmp_path / "r" / "compare_lr.png").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "xray_loss.report", str(sweep), "--compare", "colour"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "unknown --compare axis" in bad.stderr


def test_statistics_helpers():
    labels = torch.tensor([0, 0, 1, 1, 1]).numpy()
    assert auroc(labels, torch.tensor([0.1, 0.4, 0.35, 0.8, 0.9]).numpy()) == pytest.approx(5 / 6)
    assert auroc(labels, torch.tensor([0.5] * 5).numpy()) == pytest.approx(0.5)
    perfect = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]).numpy()
    assert expected_calibration_error(labels, perfect) == pytest.approx(0.0)
    assert sign_flip_test([0.1, 0.12, 0.09, 0.11, 0.1, 0.13, 0.1, 0.12]) < 0.01
    assert sign_flip_test([0.1, -0.1, 0.05, -0.04]) > 0.5


def _best_checkpoint(sweep: Path) -> tuple[Path, Path]:
    run = sweep / "epochs=100,loss=ce,lr=0.001,seed=1"
    return run, next((run / "checkpoints").glob("best-*.ckpt"))


def test_eval_reproduces_the_recorded_test_metrics(sweep, tmp_path):
    run, ckpt = _best_checkpoint(sweep)
    proc = run_cli(f"ckpt_path={ckpt}", module="xray_loss.eval", cwd=tmp_path)
    assert_ok(proc)
    (out,) = [p.parent for p in (tmp_path / "logs" / "eval").rglob("metrics.json")]
    assert "ckpt_path" not in out.name  # run names leave long paths out
    recorded, again = metrics(run)["test"], metrics(out)["test"]
    for name in NAMES:
        assert again[f"test/{name}"] == pytest.approx(recorded[f"test/{name}"], abs=1e-5), name
    for name in ("confusion_matrix.png", "roc.png", "test_predictions.csv"):
        assert (out / name).exists()
    assert metrics(run)["threshold"] == metrics(out)["threshold"]


def test_checkpoint_errors_are_clear(sweep, tmp_path):
    _, ckpt = _best_checkpoint(sweep)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, foreign)
    for path in (truncated, foreign, tmp_path / "missing.ckpt"):
        proc = run_cli(f"ckpt_path={path}", module="xray_loss.eval", cwd=tmp_path)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert str(path) in proc.stderr and "xray_loss" in proc.stderr


def test_predict_classifies_a_folder_of_mixed_images(sweep, tmp_path):
    _, ckpt = _best_checkpoint(sweep)
    folder = tmp_path / "scans"
    folder.mkdir()
    images, _ = generate_phantoms(4, 96, seed=5)
    for i, image in enumerate(images[:, 0].numpy()):
        pil = Image.fromarray(image).resize((80 + 40 * i, 100 + 10 * i))
        if i % 2:
            pil = pil.convert("RGB")
        pil.save(folder / f"scan{i}.{'png' if i == 3 else 'jpeg'}")
    (folder / "notes.txt").write_text("not an image")
    proc = run_cli(
        f"ckpt_path={ckpt}",
        f"inputs={folder}",
        "cam=true",
        "threshold=youden",
        module="xray_loss.predict",
        cwd=tmp_path,
    )
    assert_ok(proc)
    assert "notes.txt" in proc.stderr + proc.stdout
    (out,) = [p.parent for p in (tmp_path / "logs" / "predict").rglob("predictions.csv")]
    with open(out / "predictions.csv") as f:
        listed = list(csv.DictReader(f))
    rows = [r for r in listed if r["status"] == "ok"]
    assert [r["status"] for r in listed if Path(r["file"]).name == "notes.txt"][0].startswith(
        "skipped"
    )
    assert sorted(Path(r["file"]).name for r in rows) == [
        "scan0.jpeg",
        "scan1.jpeg",
        "scan2.jpeg",
        "scan3.png",
    ]
    for row in rows:
        prob, threshold = float(row["prob_pneumonia"]), float(row["threshold"])
        assert 0 <= prob <= 1
        assert row["label"] == ("PNEUMONIA" if prob >= threshold else "NORMAL")
    youden = torch.load(ckpt, weights_only=True)["state_dict"]["youden_threshold"].item()
    assert float(rows[0]["threshold"]) == pytest.approx(youden, abs=1e-6)
    cams = sorted((out / "cam").glob("*.png"))
    assert len(cams) == 4 and all(p.stat().st_size > 2000 for p in cams)


def test_notebook_runs_top_to_bottom(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(Path(__file__).parents[1] / "notebooks" / "study.ipynb", as_version=4)
    env_before = os.environ.pop("XRAY_LOSS_SWEEP", None)
    try:
        NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path)}},
        ).execute()
    finally:
        if env_before is not None:
            os.environ["XRAY_LOSS_SWEEP"] = env_before
    outputs = "".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "CE vs BCE matched" in outputs
    images = sum(
        "image/png" in o.get("data", {})
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert images >= 2
    assert (tmp_path / "notebook_logs").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_tensorboard_serves_every_run_metric_and_hyperparameter(sweep):
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(sweep),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        runs = []
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                runs = _get(f"{base}/data/runs")
                if len(runs) >= 36:
                    break
            except OSError:
                pass
            time.sleep(1)
        expected = {
            p.parent.name
            for p in sweep.glob("*/metrics.json")
            if metrics(p.parent)["status"] == "completed"
        }
        assert expected <= set(runs)
        tags = _get(f"{base}/data/plugin/scalars/tags")
        contract = {"train/loss", "train/acc"} | {
            f"{s}/{m}" for s in ("val", "test") for m in NAMES
        }
        for run in expected:
            assert contract <= set(tags[run]), run
        experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        hparams = {h["name"] for h in experiment["hparamInfos"]}
        assert {"loss", "lr", "epochs", "seed", "batch_size", "model", "data"} <= hparams
        metric_tags = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"val/auroc_best", "test/acc", "test/auroc"} <= metric_tags
        # the HParams table: one session per run, with its swept values and metrics
        groups = _get(
            f"{base}/data/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "colParams": [],
                "startIndex": 0,
                "sliceSize": 1000,
                "allowedStatuses": [
                    "STATUS_UNKNOWN",
                    "STATUS_SUCCESS",
                    "STATUS_FAILURE",
                    "STATUS_RUNNING",
                ],
            },
        )["sessionGroups"]
        assert {g["name"] for g in groups} == expected
        assert {g["hparams"]["loss"] for g in groups} == {"bce", "ce"}
        assert {g["hparams"]["lr"] for g in groups} == {1e-5, 1e-4, 1e-3}
        assert {g["hparams"]["epochs"] for g in groups} == {10, 30, 100}
        for g in groups:
            assert {"test/acc", "test/auroc", "val/auroc_best"} <= {
                m["name"]["tag"] for m in g["metricValues"]
            }
        layout = _get(f"{base}/data/plugin/custom_scalars/layout")
        charts = {c["title"] for cat in layout["category"] for c in cat["chart"]}
        assert {"loss", "accuracy", "AUROC"} <= charts
    finally:
        server.terminate()
        server.wait(timeout=30)
