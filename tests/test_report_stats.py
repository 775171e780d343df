"""The report's grouping and statistics on synthetic runs: right unit, right pairs, no p = 0."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib import pyplot as plt
from scipy import stats as scipy_stats

from xray_loss.report import __main__ as report_cli
from xray_loss.report.calibration import calibration_figure
from xray_loss.report.paired import paired_loss_tests, sign_flip_test
from xray_loss.report.runs import Run, columns
from xray_loss.report.stats import (
    ECE_BINS,
    StatsError,
    bootstrap_auroc_ci,
    expected_calibration_error,
    holm,
    summarise,
    summary_rows,
    t_interval,
    tost,
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


def test_the_interval_over_seeds_uses_students_t_at_n_minus_1_degrees_of_freedom():
    # scipy's quantiles against a printed table (two-sided 95%: df 2 4.303, df 10 2.228,
    # df 30 2.042; e.g. any Student t table): what the hand-typed table rounded (4.30 for
    # 4.3027) or left out (df 10-29 read 2.05, df 30 and up 1.96)
    for df, printed in ((2, 4.303), (10, 2.228), (30, 2.042)):
        assert scipy_stats.t.ppf(0.975, df) == pytest.approx(printed, abs=5e-4)
    rng = np.random.default_rng(0)
    for n in range(3, 32):
        diffs = list(0.01 + 0.02 * rng.standard_normal(n))
        low, high = t_interval(diffs, "a cell")
        half = scipy_stats.t.ppf(0.975, n - 1) * np.std(diffs, ddof=1) / np.sqrt(n)
        assert low == pytest.approx(np.mean(diffs) - half, rel=1e-9, abs=1e-12), n
        assert high == pytest.approx(np.mean(diffs) + half, rel=1e-9, abs=1e-12), n
    assert t_interval([0.1], "one seed") == (pytest.approx(math.nan, nan_ok=True),) * 2


def test_a_nan_difference_is_refused_naming_its_cell():
    with pytest.raises(StatsError, match="the differences: 1 of 3 paired"):
        sign_flip_test([0.1, math.nan, 0.2])  # was p = 0
    with pytest.raises(StatsError, match=r"CE minus BCE at lr=0.001: 1 of 3 paired"):
        t_interval([0.01, math.nan, 0.03], "CE minus BCE at lr=0.001")  # was of the other two
    runs = [_run(record(h, s, 0.8 + 0.01 * (h == "ce"), lr=1e-3)) for h in ("bce", "ce")
            for s in range(4)]  # fmt: skip
    runs[5] = _run(record("ce", 1, math.nan, lr=1e-3))
    with pytest.raises(StatsError) as err:
        paired_loss_tests(runs)
    said = str(err.value)
    assert said.startswith("BCE vs CE test AUROC at the one setting (seed 1): 1 of 4 paired")
    assert said.endswith("too-narrow interval.") and "\n" not in said


def test_the_report_command_says_a_stats_refusal_in_one_line(monkeypatch, tmp_path, capsys):
    def refuse(*args, **kwargs):
        raise StatsError("BCE vs CE test AUROC at lr=0.001 (seed 1): 1 of 4 NaN.")

    monkeypatch.setattr(report_cli, "make_report", refuse)
    with pytest.raises(SystemExit) as exit_:
        report_cli.main([str(tmp_path)])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip().endswith("(seed 1): 1 of 4 NaN.")


def test_holm_adjusted_p_values_match_worked_examples():
    # Wikipedia, "Holm-Bonferroni method", Example: p = 0.01, 0.04, 0.03, 0.005 at alpha 0.05
    # reject H4 and H1 only. By hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02,
    # 0.03, 0.06, 0.04, running maximum 0.02, 0.03, 0.06, 0.06, back in the given order:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # pingouin.holm's documented example: .50, .003, .32, .054, .0003 -> .64, .012, .64,
    # .162, .0015 (x5 .0015, x4 .012, x3 .162, x2 .64, x1 .50 -> running max .64)
    adjusted = holm([0.50, 0.003, 0.32, 0.054, 0.0003])
    assert adjusted == pytest.approx([0.64, 0.012, 0.64, 0.162, 0.0015])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1 (0.6 x 2)


def test_bce_ce_verdicts_use_p_values_adjusted_across_the_cells():
    # 3 cells, each 6 seeds with CE ahead every time: exact sign-flip p = 2/64 = 0.031 per
    # cell, below 0.05 alone; Holm over 3 cells: 0.094, so no cell is called a difference
    runs = [
        _run(record(h, s, 0.8 + 0.01 * s + (0.02 + 0.001 * s) * (h == "ce"), lr=lr))
        for lr in (1e-4, 1e-3, 1e-2)
        for s in range(6)
        for h in ("bce", "ce")
    ]
    tests = paired_loss_tests(runs)
    cells, pooled = tests[:-1], tests[-1]
    assert [t["p"] for t in cells] == pytest.approx([2 / 64] * 3)
    assert [t["p_holm"] for t in cells] == pytest.approx([6 / 64] * 3)
    assert all(t["verdict"].startswith("within seed noise (Holm-adjusted over 3") for t in cells)
    assert pooled["verdict"].startswith("larger than seed noise")  # one test of its own


def test_equivalence_within_a_margin_is_tested_by_two_one_sided_t_tests():
    close = [0.001, -0.002, 0.0015, 0.0, -0.001, 0.0005]  # mean 0, sd 0.0013
    spread = [0.02, -0.015, 0.01, -0.012, 0.018, -0.02]  # mean 0, sd 0.017: noise, no proof
    near_margin = [0.009, 0.011, 0.0095, 0.0105, 0.01, 0.0098]  # at the margin: not inside
    assert tost(close, 0.01, "c") < 0.001
    assert tost(spread, 0.01, "c") > 0.05 and sign_flip_test(spread) > 0.05
    assert tost(near_margin, 0.01, "c") > 0.4
    # the same decision as the 90% t-interval lying inside the margin
    for d in (close, spread, near_margin, [0.004, 0.006, 0.002, 0.007, 0.005]):
        low, high = t_interval(d, "c", level=0.90)
        assert (tost(d, 0.01, "c") < 0.05) == (low > -0.01 and high < 0.01), d
    # in the report: a cell within seed noise is called equivalent only when TOST says so
    runs = [
        _run(record(h, s, 0.8 + 0.01 * s + (close[s] if h == "ce" else 0), lr=1e-3))
        for s in range(6)
        for h in ("bce", "ce")
    ]
    (row,) = paired_loss_tests(runs, margin=0.01)
    assert row["p_tost"] < 0.05 and row["verdict"].startswith("equivalent within ±0.01")
    (row,) = paired_loss_tests(runs, margin=0.0005)
    assert (
        row["verdict"].startswith("within seed noise") and "not shown equivalent" in row["verdict"]
    )
    with pytest.raises(StatsError, match="margin must be positive"):
        tost(close, 0.0, "c")
