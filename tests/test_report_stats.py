"""The report's grouping and statistics on synthetic runs: right unit, right pairs, no p = 0."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib import pyplot as plt

from xray_loss.report.calibration import calibration_figure
from xray_loss.report.paired import paired_loss_tests, sign_flip_test
from xray_loss.report.runs import Run, columns
from xray_loss.report.stats import (
    ECE_BINS,
    bootstrap_auroc_ci,
    expected_calibration_error,
    summarise,
    summary_rows,
)


def record(loss="bce", seed=0, auroc=0.8, status="completed", **settings) -> dict:
    overrides = settings.pop("overrides", [])
    config = {"loss": loss, "lr": settings.get("lr", 1e-3), "seed": seed}
    configuration = {
        "seed": seed,
        "lr": config["lr"],
        "loss._target_": f"xray_loss.heads.{loss.upper()}Head",
        **settings,
    }
    return {
        "status": status,
        "config": config,
        "configuration": configuration,
        "overrides": [f"loss={loss}", f"seed={seed}", *overrides],
        "best_val_auroc": auroc,
        "test": {"test/auroc": auroc, "test/acc": auroc - 0.1},
    }


def test_repeats_of_a_configuration_form_one_row_whatever_the_command_said():
    records = [
        record(seed=0, auroc=0.80),
        record(seed=1, auroc=0.90, overrides=["resume=true", "threads=1", "name=x"]),
        record(loss="ce", seed=0, auroc=0.70),
        record(loss="ce", seed=1, auroc=0.75, status="failed"),
    ]
    cols, rows = summarise(records)
    assert cols == ["loss"]
    assert [(r["loss"], r["n"]) for r in rows] == [("bce", 2), ("ce", 1)]
    assert rows[0]["test_auroc_mean"] == pytest.approx(0.85)
    assert rows[0]["test_auroc_std"] == pytest.approx(math.sqrt(0.005))


def test_every_setting_that_differs_is_a_column_and_folds_are_repeats():
    records = [
        record(seed=s, **{"loss.label_smoothing": ls, "data.fold": f})
        for s in (0, 1)
        for ls in (0.0, 0.1)
        for f in (0, 1, 2)
    ]
    assert columns(records) == ["loss.label_smoothing"]
    _, rows = summarise(records)
    assert [(r["loss.label_smoothing"], r["n"]) for r in rows] == [(0.0, 6), (0.1, 6)]
    # a setting that follows a named axis is not a second column
    both = [record(loss="bce"), record(loss="ce")]
    assert columns(both) == ["loss"]


def _run(rec: dict, labels=None, probs=None, patients=None) -> Run:
    return Run(Path("."), rec, labels=labels, probs=probs, patients=patients)


def test_bce_ce_pairs_are_made_per_seed_and_fold_and_pooled_by_seed():
    runs = []
    for lr in (1e-4, 1e-3):
        for seed in (0, 1, 2):
            for fold in (0, 1):
                base = 0.8 + 0.01 * seed + 0.001 * fold
                runs.append(_run(record("bce", seed, base, lr=lr, **{"data.fold": fold})))
                runs.append(_run(record("ce", seed, base + 0.02, lr=lr, **{"data.fold": fold})))
    tests = paired_loss_tests(runs)
    assert [t["n"] for t in tests] == [6, 6, 6]  # 3 seeds x 2 folds per lr, then pooled
    assert tests[0]["setting"] == {"lr": 1e-4} and tests[1]["setting"] == {"lr": 1e-3}
    assert all(t["mean_diff"] == pytest.approx(0.02) for t in tests)
    assert tests[-1]["pairs"] == "12 pairs from 6 seed(s)"


def test_bootstrap_resamples_patients_when_known_and_keeps_every_test_set():
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i}" for i in range(40)], 5)  # 5 near-identical images per child
    labels = np.repeat(rng.integers(0, 2, 40), 5)
    probs = np.clip(np.repeat(rng.random(40), 5) * 0.6 + labels * 0.3, 0, 1)
    rec = record()
    by_patient = bootstrap_auroc_ci([_run(rec, labels, probs, patients)], n_boot=300)
    by_image = bootstrap_auroc_ci([_run(rec, labels, probs)], n_boot=300)
    assert by_patient[2] == "patients" and by_image[2] == "images"
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(by_patient) > 1.5 * width(by_image)  # images of one child are not independent
    # two runs on different test sets: both count (the CI is not the first run's alone)
    other_labels = labels[::-1].copy()
    other = _run(rec, other_labels, np.clip(other_labels * 0.9 + 0.05, 0, 1))
    first_only = bootstrap_auroc_ci([_run(rec, labels, probs)], n_boot=300)
    both = bootstrap_auroc_ci([_run(rec, labels, probs), other], n_boot=300)
    assert both[0] > first_only[1]  # the perfect second run lifts the mean above the first's CI


def test_sign_flip_p_values():
    assert sign_flip_test([0.1, 0.12, 0.09, 0.11, 0.1, 0.13, 0.1, 0.12]) == pytest.approx(2 / 256)
    assert sign_flip_test([0.1, -0.1, 0.05, -0.04]) > 0.5
    p = sign_flip_test([0.1] * 20, n_random=999)
    assert p == pytest.approx(1 / 1000)  # Monte Carlo: (k + 1) / (N + 1), never 0


def test_reliability_diagram_and_its_ece_use_the_same_bins():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    probs = np.clip(labels * 0.5 + rng.random(500) * 0.5, 0, 1)
    fig, data = calibration_figure([_run(record(), labels, probs)])
    plt.close(fig)
    drawn = data["panels"][""]["BCE"]  # one run: one panel, no columns
    assert data["bins"] == ECE_BINS and len(drawn["counts"]) == ECE_BINS
    assert drawn["ece"] == pytest.approx(expected_calibration_error(labels, probs, ECE_BINS))
    assert len(drawn["confidence"]) <= ECE_BINS and sum(drawn["counts"]) == 500


def test_summary_rows_name_the_bootstrap_unit():
    labels = np.array([0, 1] * 20)
    probs = np.linspace(0.1, 0.9, 40)
    runs = [_run(record(seed=s), labels, probs) for s in (0, 1)]
    _, rows = summary_rows(runs, n_boot=50)
    assert rows[0]["n"] == 2 and rows[0]["auroc_ci_unit"] == "images" and rows[0]["best"]
