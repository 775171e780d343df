"""What each figure of the report holds (issue 22): BCE vs CE at every lr, both heads in
every figure, held settings said in the title, one ECE in figure and table, colours that
stay apart. On synthetic runs: nothing is trained."""

from __future__ import annotations

import colorsys
import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib import pyplot as plt
from matplotlib.colors import to_rgb

from xray_loss.metrics import CURVES
from xray_loss.report.build import figure_jobs
from xray_loss.report.calibration import calibration_figure
from xray_loss.report.figures import compare_figure, sweep_figure
from xray_loss.report.panels import intervals, layout, series_styles
from xray_loss.report.runs import Run
from xray_loss.report.stats import expected_calibration_error, reliability, summary_rows

LRS = (1e-5, 1e-4, 1e-3)
LR_COLUMNS = ["lr=1e-05", "lr=0.0001", "lr=0.001"]


def grid(seeds=(0, 1, 2), batch_sizes=(32,)) -> list[Run]:
    """loss x lr x epochs (x batch size) x seeds, the dry-run grid's shape: 10/30/100
    epochs trained as 1/3/10; only lr=1e-3 learns, a batch of 64 learns more on val."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    runs = []
    for loss, lr, epochs, bs, seed in itertools.product(
        ("bce", "ce"), LRS, (10, 30, 100), batch_sizes, seeds
    ):
        skill = 0.3 * (lr == 1e-3) + 0.05 * (loss == "ce") + 0.1 * (bs == 64)
        val = 0.5 + skill + 0.01 * seed
        trained = epochs // 10
        config = {"loss": loss, "lr": lr, "epochs": epochs, "max_epochs": trained}
        config.update(batch_size=bs, model="small_cnn", seed=seed)
        configuration = {
            "loss._target_": f"xray_loss.heads.{loss.upper()}Head",
            "lr": lr,
            "epochs": epochs,
            "batch_size": bs,
            "seed": seed,
        }
        curves = {
            tag: [(e, val + 0.01 * e) for e in range(1, trained + 1)]
            for tag in (*CURVES, "val/auroc")
        }
        probs = np.clip(labels * skill + rng.random(len(labels)) * (1 - skill), 0, 0.999)
        record = {
            "status": "completed",
            "config": config,
            "configuration": configuration,
            "best_val_auroc": val,
            "best_epoch": trained,
            "test": {"test/auroc": val - 0.02, "test/acc": val - 0.1},
        }
        name = f"loss={loss},lr={lr},epochs={epochs},bs={bs},seed={seed}"
        runs.append(Run(Path(name), record, curves, labels, probs))
    return runs


def test_the_heads_are_compared_at_every_lr_in_one_panel_each():
    runs = grid()
    shown = layout(runs, "loss", "curves")
    assert shown.facet == "lr" and [v for v, _ in shown.panels] == list(LRS)
    for _, members in shown.panels:
        assert {r.config["loss"] for r in members} == {"bce", "ce"}
        assert {r.config["epochs"] for r in members} == {100}  # the longest: others its prefix
        assert sorted(r.seed for r in members) == [0, 0, 1, 1, 2, 2]
    assert shown.fixed == {"epochs": 100}
    fig, data = compare_figure(runs, "loss")
    plt.close(fig)
    assert data["columns"] == LR_COLUMNS
    for column in LR_COLUMNS:
        assert list(data["panels"][column]) == list(CURVES)
        assert all(set(s) == {"BCE", "CE"} for s in data["panels"][column].values())
        assert data["panels"][column]["val/nll"]["CE"]["epochs"] == list(range(1, 11))
    assert data["title"].startswith("BCE vs CE: per-epoch curves, one column per lr")
    assert "epochs=100 (longest; runs of fewer epochs are its first epochs)" in data["title"]
    assert "lr=1e-05 ·" not in data["title"]  # lr is no held setting: every value is shown


def test_the_lr_curves_have_a_column_per_head():
    fig, data = compare_figure(grid(), "lr")
    plt.close(fig)
    assert data["columns"] == ["BCE", "CE"]
    for column in ("BCE", "CE"):
        assert set(data["panels"][column]["train/nll"]) == set(LR_COLUMNS)


def test_the_epoch_budgets_show_both_heads_at_every_lr_with_both_intervals():
    runs = grid()
    cols, rows = summary_rows(runs, n_boot=30)
    fig, data = sweep_figure(runs, "epochs", (cols, intervals(cols, rows)))
    plt.close(fig)
    assert data["columns"] == LR_COLUMNS and data["values"] == [10, 30, 100]
    for column, lr in zip(LR_COLUMNS, LRS, strict=True):
        panel = data["panels"][column]
        assert set(panel["test"]["auroc"]) == {"BCE", "CE"}
        assert all(len(v) == 3 for v in panel["test"]["auroc"]["CE"].values())  # a dot per seed
        row = next(r for r in rows if r["loss"] == "ce" and r["lr"] == lr and r["epochs"] == 30)
        assert panel["ci"]["CE"][30] == (row["auroc_ci_low"], row["auroc_ci_high"])
        assert panel["budgets"]["BCE"][30]["trained"] == [3, 3, 3]
        assert panel["val_auroc"]["CE"]["epochs"] == list(range(1, 11))
    legend = fig.legends[0].get_title().get_text()
    assert "95% CI over test sampling" in legend and "95% t-interval over seeds" in legend


def test_settings_neither_compared_nor_paneled_are_held_at_the_best_on_validation():
    runs = grid(seeds=(0, 1), batch_sizes=(32, 64))
    shown = layout(runs, "loss", "curves")
    assert shown.fixed == {"epochs": 100, "batch_size": 64}
    assert shown.reasons["batch_size"] == "best on validation"
    fig, data = compare_figure(runs, "loss")
    plt.close(fig)
    assert "batch_size=64 (best on validation)" in data["title"].replace("\n", " ")


def test_the_calibration_figure_shows_the_tables_ece_and_the_bin_counts():
    runs = grid()
    _, rows = summary_rows(runs, n_boot=10)
    fig, data = calibration_figure(runs)
    assert data["columns"] == LR_COLUMNS
    bars = [len(ax.patches) for ax in fig.axes if ax.get_yscale() == "log"]
    assert bars == [2 * 10] * 3  # a bar per bin and head under each diagram
    plt.close(fig)
    for column, lr in zip(LR_COLUMNS, LRS, strict=True):
        for head in ("bce", "ce"):
            drawn = data["panels"][column][head.upper()]
            row = next(r for r in rows if (r["loss"], r["lr"], r["epochs"]) == (head, lr, 100))
            assert drawn["ece"] == pytest.approx(row["ece_mean"])
            assert drawn["ece_std"] == pytest.approx(row["ece_std"])
            assert sum(drawn["counts"]) == pytest.approx(80) and drawn["runs"] == 3
    assert "80 test images per run" in data["title"]


def test_the_ece_is_torchmetrics_on_the_diagrams_bins():
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    probs = np.clip(labels * 0.4 + rng.random(400) * 0.6, 0, 0.999)
    reference = binary_calibration_error(
        torch.tensor(probs).float(), torch.tensor(labels), n_bins=10
    )
    assert expected_calibration_error(labels, probs) == pytest.approx(float(reference), abs=1e-5)
    bins = reliability(labels, probs)
    assert bins["count"].sum() == 400 and len(bins["count"]) == 10


def _hue(color) -> float:
    return colorsys.rgb_to_hsv(*to_rgb(color))[0]


def test_colours_keep_heads_and_values_apart():
    styles = series_styles("loss", ["bce", "ce", "ce_matched", "bce_matched", "focal"])
    colours = [s["color"] for s in styles.values()]
    assert len(set(colours)) == 5
    gap = abs(_hue(styles["bce"]["color"]) - _hue(styles["ce"]["color"]))
    assert min(gap, 1 - gap) > 0.3  # blue against vermillion, not two greens
    assert styles["ce_matched"]["ls"] == "--" and styles["bce"]["ls"] == "-"
    many = series_styles("lr", [10.0**-k for k in range(12)])
    assert len({tuple(s["color"]) for s in many.values()}) == 12  # no colour repeats


def test_compare_draws_metrics_against_the_axis_never_a_study_figure_twice(capsys):
    present = ["loss", "lr", "epochs"]
    jobs = figure_jobs(["lr", "epochs", "batch_size"], present)
    assert jobs["fig2_lr"] == ("lr", "curves") and jobs["compare_lr"] == ("lr", "sweep")
    assert "compare_epochs" not in jobs and "compare_batch_size" not in jobs
    printed = capsys.readouterr().out
    assert "--compare epochs: drawn as fig2_epochs" in printed
    assert "--compare batch_size: batch_size does not vary" in printed
    assert "fig2_epochs" not in figure_jobs([], ["loss", "lr"])  # no axis, no figure
