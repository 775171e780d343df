"""The report pools only what belongs together (issue 18, item 5), on hand-written records.

Each test writes small metrics.json records the way ``xray_loss.train`` and ``xray_loss.eval``
write them into run directories under ``tmp_path``; nothing is trained.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import pytest

from xray_loss.report import make_report
from xray_loss.report.runs import load_runs
from xray_loss.report.stats import summarise

STUDY = {"loss": "ce", "lr": 1e-5, "batch_size": 32, "model": "small_cnn", "data": "phantom"}


def training_record(
    seed: int = 0,
    epochs: int = 10,
    auroc: float = 0.8,
    finished: str = "2025-01-01T10:00:00+00:00",
    settings: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A completed training run's metrics.json: ``config`` (every named axis) and the
    resolved ``configuration`` as ``xray_loss.runtime.record`` writes them."""
    config = {
        **STUDY,
        "epochs": epochs,
        "max_epochs": epochs,
        "optimizer": "adam",
        "scheduler": "none",
        "weight_decay": 0.0,
        "image_size": 28,
        "threshold": "0.5",
        "seed": seed,
    }
    configuration = {
        "seed": seed,
        "lr": config["lr"],
        "epochs": epochs,
        "epochs_scale": 1.0,
        "batch_size": 32,
        "budgets": "[]",
        "loss._target_": "xray_loss.heads.CEHead",
        "trainer.max_epochs": epochs,
        **(settings or {}),
    }
    return {
        "status": "completed",
        "started": "2025-01-01T09:00:00+00:00",
        "finished": finished,
        "config": config,
        "configuration": configuration,
        "best_epoch": epochs,
        "best_val_auroc": auroc,
        "epochs_trained": epochs,
        "test": {f"test/{m}": auroc for m in ("auroc", "acc", "f1", "sensitivity", "specificity")},
        "budgets": {},
        **fields,
    }


def write(run_dir: Path, record: dict[str, Any]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps({"run_dir": str(run_dir), **record}))
    return run_dir


def budget(epochs: int, auroc: float) -> dict[str, Any]:
    """One entry of metrics.json ``budgets`` (``xray_loss.callbacks.EpochBudgets.test``)."""
    return {
        "checkpoint": f"checkpoints/budgets/epoch{epochs:03d}.ckpt",
        "epochs_trained": epochs,
        "best_val_auroc": auroc,
        "best_epoch": epochs,
        "test": {"test/auroc": auroc, "test/acc": auroc},
    }


def report(tmp_path: Path) -> tuple[dict[str, Any], str]:
    written = make_report([tmp_path / "logs"], tmp_path / "report", n_boot=20)
    return written, (tmp_path / "report" / "summary.md").read_text()


def test_a_seed_that_ran_twice_counts_once_the_newest(tmp_path, caplog):
    """A sweep rerun without resume, and full_grid beside full_grid_budgets: each (seed, fold)
    of a configuration is counted once, from its newest run; the others are named."""
    logs = tmp_path / "logs" / "full_grid" / "multirun"
    old, new = "2025-01-01T10:00:00+00:00", "2025-01-02T10:00:00+00:00"
    for seed, (before, after) in enumerate([(0.5, 0.6), (0.9, 0.8)]):
        write(logs / "sweep1" / f"seed={seed}", training_record(seed, auroc=before, finished=old))
        write(logs / "sweep2" / f"seed={seed}", training_record(seed, auroc=after, finished=new))
    # experiment=full_grid_budgets later: its 10-epoch budget repeats full_grid's seed 2
    write(logs / "sweep1" / "seed=2", training_record(2, auroc=0.7, finished=old))
    budgets = {"10": budget(10, 0.75), "100": budget(100, 0.85)}
    later = "2025-01-03T10:00:00+00:00"
    long_run = training_record(
        2,
        epochs=100,
        auroc=0.85,
        finished=later,
        budgets=budgets,
        settings={"budgets": "[10, 100]"},
    )
    write(logs / "sweep3" / "seed=2", long_run)
    with caplog.at_level(logging.WARNING, logger="xray_loss.report"):
        written, text = report(tmp_path)
    rows = {r["epochs"]: r for r in written["summary"]}
    assert rows[10]["n"] == 3  # seeds 0, 1 (rerun) and 2 (budget), each once
    assert rows[10]["auroc_mean"] == pytest.approx((0.6 + 0.8 + 0.75) / 3)
    assert rows[10]["auroc_std"] == pytest.approx(0.1040833, abs=1e-6)
    dropped = {str(p) for p, _ in written["duplicates"]}
    assert dropped == {str(logs / "sweep1" / f"seed={s}") for s in (0, 1, 2)}
    assert "**3 duplicate run(s) dropped**" in text
    assert all(f"- `{p}`" in text for p in dropped)
    assert "dropped 3 duplicate run(s)" in caplog.text and "sweep1" in caplog.text


def test_the_older_budget_is_the_duplicate_named_as_a_budget(tmp_path):
    """Without record times the directory's time stamp (metrics.json's mtime) decides."""
    logs = tmp_path / "logs"
    budgets = {"10": budget(10, 0.75), "100": budget(100, 0.85)}
    long_run = training_record(0, 100, 0.85, budgets=budgets, settings={"budgets": "[10, 100]"})
    shorter = training_record(0, 10, 0.7)
    for record in (long_run, shorter):
        del record["started"], record["finished"]
    older = write(logs / "a_budgets", long_run) / "metrics.json"
    newer = write(logs / "b_short", shorter) / "metrics.json"
    stamp = newer.stat().st_mtime
    os.utime(older, (stamp - 60, stamp - 60))
    written, text = report(tmp_path)
    assert written["duplicates"] == [(logs / "a_budgets", " (its 10-epoch budget)")]
    assert f"- `{logs / 'a_budgets'}` (its 10-epoch budget)" in text
    assert {r["epochs"]: r["n"] for r in written["summary"]} == {10: 1, 100: 1}


def test_settings_that_vary_with_an_axis_are_shown_and_named(tmp_path):
    """scheduler and trainer.max_time changed together with epochs: no configuration differs
    in them alone, yet every setting that differs between runs must be visible."""
    for seed in (0, 1):
        for epochs, scheduler, max_time in ((10, "none", None), (100, "cosine", "00:02:00:00")):
            record = training_record(
                seed,
                epochs,
                settings={
                    "scheduler._target_": scheduler,
                    "trainer.max_time": max_time,
                },
            )
            record["config"]["scheduler"] = scheduler
            write(tmp_path / "logs" / f"e{epochs}_s{seed}", record)
    written, text = report(tmp_path)
    header = text.split("| epochs |")[0]
    assert "**Confounded**" in header
    assert "`scheduler` and `trainer.max_time` differ between configurations only" in header
    assert "together with `epochs`" in header
    # shown as columns, each row with its value
    assert "| epochs | scheduler | trainer.max_time | n |" in text
    assert "| 100 | cosine | 00:02:00:00 | 2 |" in text
    assert "scheduler=" not in text.split("\n\n")[1]  # not claimed as fixed
    # restatements of a column are no confound: trainer.max_epochs follows epochs
    assert "trainer.max_epochs" not in text and "scheduler._target_" not in header
    with open(tmp_path / "report" / "summary.csv") as f:
        assert list(csv.DictReader(f))[0]["scheduler"] == "none"
    title = written["figures"]["fig2_epochs"]["data"]["title"]
    assert "confounded: scheduler, trainer.max_time vary with epochs" in title


def test_eval_and_recalibrate_records_are_not_training_runs(tmp_path):
    logs = tmp_path / "logs"
    for seed in (0, 1):
        write(logs / "train" / "runs" / f"s{seed}", training_record(seed, auroc=0.8 + 0.1 * seed))
    common = {"status": "completed", "started": "2025-01-01T10:00:00+00:00"}
    write(
        logs / "eval" / "runs" / "test",
        {
            **common,
            "ckpt_path": "/x/best-epoch010.ckpt",
            "split": "test",
            "data": "PhantomDataModule",
            "threshold": 0.5,
            "test": {"test/auroc": 0.5, "test/acc": 0.5},
        },
    )
    write(
        logs / "eval" / "runs" / "recalibrate",
        {**common, "ckpt_path": "/x/best.ckpt", "recalibrate": "/site", "sample": {}},
    )
    runs, skipped = load_runs([logs])
    assert sorted(r.seed for r in runs) == [0, 1] and skipped == []
    written, text = report(tmp_path)
    assert [r["n"] for r in written["summary"]] == [2]
    assert "None" not in text


def test_one_repeat_has_no_std(tmp_path):
    """summary.md marks an undefined number "-" (one repeat's std, its range), never 0."""
    write(tmp_path / "logs" / "only", training_record(0, auroc=0.912))
    written, text = report(tmp_path)
    assert math.isnan(written["summary"][0]["auroc_std"])
    assert "0.912 ± -" in text and "± 0.000" not in text and "n/a" not in text
    (row,) = [line for line in text.splitlines() if line.startswith("| **1** |")]
    assert "| **0.912 ± -** | **-** |" in row  # AUROC, then its seed range: undefined
    with open(tmp_path / "report" / "summary.csv") as f:
        assert list(csv.DictReader(f))[0]["auroc_std"] == ""


def predictions(run_dir: Path, probs: list[float], patients: bool) -> None:
    """test_predictions.csv as the test report writes it: 2 images per patient."""
    labels = [0, 1] * (len(probs) // 2)
    header = "label,prob" + (",patient" if patients else "")
    lines = [
        f"{y},{p}" + (f",p{i // 2}" if patients else "")
        for i, (y, p) in enumerate(zip(labels, probs, strict=True))
    ]
    (run_dir / "test_predictions.csv").write_text("\n".join([header, *lines]) + "\n")


def test_summary_says_what_each_interval_covers_and_the_test_size(tmp_path):
    """Seeds' spread (mean ± std, range) and the test-sampling bootstrap interval are
    separate, labelled columns; the test set's images and patients are stated; the ECE is
    the mean over runs of each run's ECE."""
    logs = tmp_path / "logs"
    for seed, skill in enumerate((0.2, 0.6)):
        probs = [
            round(0.5 + (skill / 2 if i % 2 else -skill / 2) + 0.01 * (i % 7), 3) for i in range(40)
        ]
        predictions(
            write(logs / f"seed={seed}", training_record(seed, auroc=0.6 + seed / 5)), probs, True
        )
    written, text = report(tmp_path)
    assert "Test set: 40 images of 20 patients (20 pneumonia, 20 normal) in every run." in text
    header = next(line for line in text.splitlines() if line.startswith("| n |"))
    for column in ("AUROC", "AUROC seed range", "AUROC 95% CI, test sampling", "ECE"):
        assert f"| {column} |" in header
    assert "**AUROC seed range**: the lowest and highest test AUROC among the n repeats" in text
    assert "resampling test patients (all images of a patient together)" in text
    assert "It leaves seeds out, so it can be narrower than the seed range" in text
    assert "then mean ± std over the repeats; the calibration figure shows the same" in text
    row = written["summary"][0]
    assert (row["auroc_seed_min"], row["auroc_seed_max"]) == (
        pytest.approx(0.6),
        pytest.approx(0.8),
    )
    assert "0.600–0.800" in text
    assert (row["test_images"], row["test_patients"]) == (40, 20)
    calibration = written["figures"]["calibration"]["data"]["panels"][""]["CE"]
    assert calibration["ece"] == pytest.approx(row["ece_mean"])
    with open(tmp_path / "report" / "summary.csv") as f:
        saved = list(csv.DictReader(f))[0]
    assert saved["auroc_ci_unit"] == "patients" and saved["test_patients"] == "20"


def test_a_diverged_budget_run_keeps_the_budgets_it_tested(tmp_path):
    """budgets=[10,100] diverging at epoch 60: its 10-epoch result is what a separate 10-epoch
    run would have reported, and is pooled with the separate runs."""
    logs = tmp_path / "logs"
    diverged = {
        "status": "diverged",
        "error": "Training diverged: the loss became NaN or infinite in epoch 60",
        "stopped_by": "diverged",
        "epochs_trained": 60,
        "budgets": {"10": budget(10, 0.7)},
    }
    record = training_record(0, 100, settings={"budgets": "[10, 100]"})
    for key in ("test", "best_epoch", "best_val_auroc"):
        del record[key]
    write(logs / "budgets_seed0", {**record, **diverged})
    write(logs / "short_seed1", training_record(1, 10, auroc=0.8))
    runs, skipped = load_runs([logs])
    assert sorted((r.config["epochs"], r.seed) for r in runs) == [(10, 0), (10, 1)]
    assert skipped == [
        (logs / "budgets_seed0", "diverged; its budgets [10] are read as the shorter runs")
    ]
    from_budget = next(r for r in runs if r.seed == 0)
    assert from_budget.record["status"] == "completed"
    assert from_budget.record["stopped_by"] == "max_epochs"  # the 10 epochs were all trained
    # the sweep's aggregate counts it too
    records = [json.loads(p.read_text()) for p in sorted(logs.rglob("metrics.json"))]
    _, rows = summarise(records)
    assert [(r["n"], r["test_auroc_mean"]) for r in rows] == [(2, pytest.approx(0.75))]


def test_time_stopped_runs_are_marked(tmp_path):
    """stopped_by == max_time: a column and a footnote say those runs trained fewer epochs;
    records without the key (older runs) and completed budgets are not marked."""
    logs = tmp_path / "logs"
    write(
        logs / "e100_s0",
        training_record(0, 100, stopped_by="max_time", epochs_trained=57, best_epoch=50),
    )
    write(logs / "e100_s1", training_record(1, 100, stopped_by="max_epochs"))
    write(logs / "e10_s0", training_record(0, 10))  # an older record: no stopped_by
    budgets = {"10": budget(10, 0.75)}  # reached before max_time stopped it at 31 epochs
    timed = training_record(
        1, 100, settings={"budgets": "[10, 100]"}, budgets=budgets, stopped_by="max_time"
    )
    write(logs / "budgets_s1", {**timed, "epochs_trained": 31})
    written, text = report(tmp_path)
    counts = {r["epochs"]: (r["n"], r["stopped_by_max_time"]) for r in written["summary"]}
    assert counts == {10: (2, 0), 100: (2, 1)}
    assert "| stopped by max_time † |" in text
    table = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    row_100 = next(cells for cells in table if cells[0].strip("|* ") == "100")
    assert row_100[-1].strip("|* ") == "1 (57 epochs)"
    assert "† Repeats that the trainer's `max_time` stopped before their nominal epochs" in text
    with open(tmp_path / "report" / "summary.csv") as f:
        assert [r["stopped_by_max_time"] for r in csv.DictReader(f)] == ["0", "1"]


def test_an_output_folder_that_cannot_be_written_is_one_sentence(tmp_path, capsys):
    from tests.fixtures import tmpfs
    from xray_loss.report.__main__ import main

    write(tmp_path / "logs" / "seed=0", training_record(seed=0))
    with tmpfs(tmp_path / "ro", read_only=True) as disk, pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "logs"), "--out", str(disk / "report")])
    assert stop.value.code == 1
    message = capsys.readouterr().err
    assert f"cannot write {disk / 'report'}" in message and "--out DIR" in message


def test_bookkeeping_in_an_older_record_is_no_setting():
    """A record written before a key was listed as bookkeeping (trainer.plugins: how
    checkpoints are written) neither splits a configuration nor shows as a confound."""
    from xray_loss.identity import Role, key_of
    from xray_loss.report.runs import settings

    record = {"configuration": {"lr": 0.001, "trainer.plugins": "[{'_target_': 'old.Path'}]"}}
    assert key_of("trainer.plugins").role == Role.BOOKKEEPING
    assert settings(record) == {"lr": 0.001}
