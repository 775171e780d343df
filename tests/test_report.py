"""From runs to report: the figures (checked on their data), summary.md, the command line."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_ok, run_cli
from xray_loss.report import auroc, expected_calibration_error, make_report, sign_flip_test
from xray_loss.report.runs import identity, load_runs

pytestmark = pytest.mark.slow
NAMES = ["objective", "nll", "brier", "acc", "auroc", "f1", "sensitivity", "specificity"]


def test_report_writes_the_study_figures_and_summary(study_sweep, tmp_path):
    out = tmp_path / "report"
    written = make_report([study_sweep], out, n_boot=100)
    figures = written["figures"]
    assert set(figures) == {
        "fig1_loss_compare",
        "fig1_difference",
        "fig2_epochs",
        "fig2_lr",
        "fig3_forest",
        "calibration",
    }
    for fig in figures.values():
        assert all(Path(p).stat().st_size > 5000 for p in fig["files"])
        assert {Path(p).suffix for p in fig["files"]} == {".png", ".pdf"}
    # the data behind the figures: BCE vs CE at every lr (a column each), 4 curves, seeds kept
    lrs = ["lr=1e-05", "lr=0.0001", "lr=0.001"]
    fig1 = figures["fig1_loss_compare"]["data"]
    assert fig1["columns"] == lrs
    for column in lrs:
        assert list(fig1["panels"][column]) == ["train/nll", "val/nll", "train/acc", "val/acc"]
        assert all(set(series) == {"BCE", "CE"} for series in fig1["panels"][column].values())
    ce = fig1["panels"]["lr=1e-05"]["val/nll"]["CE"]
    assert ce["epochs"] == [1, 2, 3, 4, 5]  # epochs=100 scaled to 5
    assert len(ce["seeds"]) == 2 and ce["mean"] == pytest.approx(
        [sum(v) / 2 for v in zip(*ce["seeds"], strict=True)]
    )
    # titles name what is held fixed, and why, and mark the dry run
    title = fig1["title"].replace("\n", " ")
    assert "one column per lr" in title and "batch_size" not in title  # summary.md's line
    assert "epochs=100 (longest; runs of fewer epochs are its first epochs)" in title
    assert "dry run: 100 epochs nominal, 5 trained" in title
    assert "loss=" not in title and "lr=" not in title  # compared or a column: not "held"
    # epochs: what the budget changes, per head and lr, not overlapping prefixes of one curve
    budget = figures["fig2_epochs"]["data"]
    assert budget["values"] == [10, 30, 100] and budget["columns"] == lrs
    for column in lrs:
        panel = budget["panels"][column]
        assert set(panel["test"]["auroc"]) == {"BCE", "CE"}
        assert all(len(panel["test"]["auroc"]["CE"][b]) == 2 for b in (10, 30, 100))
        assert all(b[0] <= b[1] for b in panel["ci"]["BCE"].values())  # test-sampling bars
        for head in ("BCE", "CE"):
            stops = panel["budgets"][head]
            assert {b: v["trained"] for b, v in stops.items()} == {
                10: [1, 1],
                30: [2, 2],
                100: [5, 5],
            }
            assert all(1 <= e <= max(v["trained"]) for v in stops.values() for e in v["best_epoch"])
            assert panel["val_auroc"][head]["epochs"] == [1, 2, 3, 4, 5]
    title = budget["title"].replace("\n", " ")
    assert "one column per lr" in title and "lr=1e-05" not in title
    assert "dry run: 10/30/100 epochs nominal, 1/2/5 trained" in title
    fig2_lr = figures["fig2_lr"]["data"]
    assert fig2_lr["columns"] == ["BCE", "CE"]  # both heads
    assert all(set(fig2_lr["panels"][h]["train/nll"]) == set(lrs) for h in ("BCE", "CE"))
    calibration = figures["calibration"]["data"]
    assert calibration["columns"] == lrs and calibration["bins"] == 10
    title = calibration["title"].replace("\n", " ")
    assert "10 equal-width bins" in title and "epochs=100" in title
    # summary: 18 configurations x 2 seeds, CIs, one best row, paired BCE vs CE tests
    rows = written["summary"]
    assert len(rows) == 18 and all(r["n"] == 2 for r in rows)
    # the calibration figure's ECE is the table's (mean over runs of each run's ECE)
    for column, lr in zip(lrs, (1e-5, 1e-4, 1e-3), strict=True):
        for head in ("bce", "ce"):
            (row,) = [r for r in rows if (r["loss"], r["lr"], r["epochs"]) == (head, lr, 100)]
            drawn = calibration["panels"][column][head.upper()]
            assert drawn["ece"] == pytest.approx(row["ece_mean"]) and drawn["runs"] == 2
    assert sum(r["best"] for r in rows) == 1
    assert all(r["auroc_ci_low"] <= r["auroc_mean"] + 0.2 for r in rows)
    tests = written["tests"]
    assert len(tests) == 9 + 1 and all(t["n"] == 2 for t in tests)
    assert tests[-1]["pairs"] == "18 pairs from 2 seed(s)"  # pooled over seed-level means
    assert "undecidable with 2 seed(s)" in tests[0]["verdict"]
    text = (out / "summary.md").read_text()
    assert "**" in text and "BCE vs CE" in text and "Skipped runs" in text
    assert "Fixed in every run: " in text and "batch_size=32" in text.split("\n\n")[2]
    assert "Dry run" in text and "18 pairs from 2 seed(s)" in text
    images = rows[0]["test_images"]
    assert f"Test set: {images} images (" in text and "normal) in every run." in text
    assert "| AUROC | AUROC seed range | AUROC 95% CI, test sampling |" in text
    # numbers in numeric order: 1e-05 before 0.0001 before 0.001, 10 before 30 before 100
    table = [line for line in text.splitlines() if line.startswith("| ")][1:19]
    assert text.split("| loss | lr | epochs | n |")[1]  # the columns: loss, lr, epochs
    lrs = [line.split(" | ")[1] for line in table[:6]]
    assert lrs == ["1e-05", "1e-05", "1e-05", "0.0001", "0.0001", "0.0001"]
    assert [line.split(" | ")[2] for line in table[:3]] == ["10", "30", "100"]
    assert "lr=0.1,seed=0" in text  # the unfinished run is named
    with open(out / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 18


def test_report_command_line(study_sweep, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xray_loss.report",
            str(study_sweep),
            "--out",
            str(tmp_path / "r"),
            "--compare",
            "lr",
            "--compare",
            "epochs",
            "--bootstrap",
            "50",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stdout and (tmp_path / "r" / "compare_lr.png").exists()
    # fig2_epochs already draws the metrics against the epochs: no duplicate
    assert "--compare epochs: drawn as fig2_epochs" in proc.stdout
    assert not (tmp_path / "r" / "compare_epochs.png").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "xray_loss.report", str(study_sweep), "--compare", "colour"],
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


def test_full_grid_budgets_computes_the_full_grid(study_sweep, tmp_path):
    """experiment=full_grid_budgets (one 100-epoch run per cell, tested within 10/30/100
    epochs) reads as the same runs, with the same numbers, as experiment=full_grid."""
    args = ["-m", "experiment=full_grid_budgets", "debug=sweep", "seeds=1"]
    assert_ok(run_cli(*args, cwd=tmp_path))
    budget_runs, _ = load_runs([tmp_path / "logs"])
    assert len({r.path for r in budget_runs}) == 6 and len(budget_runs) == 18
    grid = {(identity(r.record), r.seed): r for r in load_runs([study_sweep])[0]}
    for run in budget_runs:
        twin = grid[(identity(run.record), run.seed)]
        assert run.record["best_epoch"] == twin.record["best_epoch"], run.config
        assert run.record["test"] == pytest.approx(twin.record["test"], abs=1e-6), run.config
        assert run.probs == pytest.approx(twin.probs, abs=1e-6)
