"""The report answers "BCE or CE, at which lr and epochs?" (issue 30.3, 27.6): test NLL in the
tables, digits that tell different numbers apart, the effect CE − BCE drawn with paired.py's
numbers, each column on its own scale, intervals on every test measure, titles that name the
heads drawn. On synthetic runs: nothing is trained."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib import pyplot as plt

from xray_loss.metrics import CURVES
from xray_loss.report.effects import difference_figure, effects, forest_figure
from xray_loss.report.figures import compare_figure, sweep_figure
from xray_loss.report.paired import paired_loss_tests
from xray_loss.report.runs import Run
from xray_loss.report.stats import summary_rows, t_interval, t_quantile
from xray_loss.report.tables import write_summary

LRS = (1e-4, 1e-3)


def runs(heads=("bce", "ce"), seeds=(0, 1, 2), nll=True, epochs=(10, 30)) -> list[Run]:
    """loss x lr x epochs x seeds. lr=1e-3 learns (AUROC near 0.99), lr=1e-4 barely (near
    0.6): a shared y axis would flatten the heads' difference at either lr. CE is ahead by a
    seed-dependent amount; the numbers differ in the fourth decimal."""
    rng = np.random.default_rng(1)
    out = []
    for loss, lr, ep, seed in itertools.product(heads, LRS, epochs, seeds):
        base = 0.99 if lr == 1e-3 else 0.6
        shift = {"bce": 0.0, "ce": 0.0003 + 0.0002 * seed, "focal": -0.001}[loss]
        auroc = base + shift + 0.0001 * seed + 0.00001 * ep + rng.normal(0, 2e-5)
        test = {"test/auroc": auroc, "test/acc": auroc - 0.05 - 0.0002 * seed}
        if nll:
            test["test/nll"] = 1.2 - auroc + 0.001 * seed
        config = {"loss": loss, "lr": lr, "epochs": ep, "max_epochs": ep, "seed": seed}
        configuration = {
            "loss._target_": f"xray_loss.heads.{loss.upper()}Head",
            "lr": lr,
            "epochs": ep,
            "seed": seed,
        }
        tags = CURVES if nll else tuple(t for t in CURVES if t.endswith("acc"))
        curves = {
            t: [(e, base - 0.3 / e + shift * e + 0.001 * seed) for e in range(1, ep + 1)]
            for t in (*tags, "val/auroc")
        }
        record = {
            "status": "completed",
            "config": config,
            "configuration": configuration,
            "best_val_auroc": auroc,
            "best_epoch": ep,
            "test": test,
        }
        out.append(Run(Path(f"{loss},{lr},{ep},{seed}"), record, curves))
    return out


def _summary(tmp_path: Path, found_runs: list[Run]) -> str:
    cols, rows = summary_rows(found_runs, n_boot=0)
    write_summary(
        tmp_path, cols, rows, paired_loss_tests(found_runs), [], effects=effects(found_runs)
    )
    return (tmp_path / "summary.md").read_text()


def _cells(text: str, header: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("| setting") or line.startswith("| loss"):
            break
        table.append([c.strip().strip("*") for c in line.strip("|").split(" | ")])
    return [[c.strip() for c in lines[start].strip("|").split(" | ")]] + table


def test_summary_shows_test_nll_and_tells_different_numbers_apart(tmp_path):
    found = runs()
    text = _summary(tmp_path, found)
    header, *rows = _cells(text, "| loss |")
    assert "NLL" in header
    auroc, spread = header.index("AUROC"), header.index("AUROC seed range")
    means = [r[auroc].split(" ± ")[0] for r in rows]
    assert len(set(means)) == len(rows)  # 8 different mean AUROCs print as 8 numbers
    for r in rows:
        assert not r[auroc].endswith("± 0.000")  # every std here is > 0
        low, high = r[spread].split("–")
        assert low != high  # the seeds differ: their range does not read "0.994–0.994"
    # BCE vs CE: CE − BCE of NLL and AUROC per cell, with the interval the forest plot draws
    head, *cells = _cells(text, "| setting |")
    assert "CE − BCE test NLL [95% CI]" in " | ".join(head)
    assert len(cells) == len(LRS) * 2 + 1 and cells[-1][0] == "all settings pooled"
    (first,) = [r for r in effects(found)["rows"] if r["label"] == "lr=0.0001, epochs=10"]
    printed = cells[0][head.index("CE − BCE test NLL [95% CI]")]
    mean, low, high = (float(v) for v in re.findall(r"[-+]\d\.\d+", printed))
    digits = len(printed.split(" ")[0].split(".")[1])
    want = (first["nll"]["mean"], first["nll"]["low"], first["nll"]["high"])
    assert (mean, low, high) == pytest.approx(want, abs=0.6 * 10**-digits)


def test_the_forest_plot_draws_paireds_differences_and_t_intervals():
    found_runs = runs(heads=("bce", "ce", "focal"))
    tests = [t for t in paired_loss_tests(found_runs) if t["n"]]
    fig, data = forest_figure(found_runs)
    rows = data["rows"]
    assert [r["label"] for r in rows][-1] == "all settings pooled"
    assert len(rows) == len(tests)  # a row per cell paired.py tests, and its pooled row
    for row, test in zip(rows, tests, strict=True):
        d = row["auroc"]
        assert d["n"] == test["n"]
        assert d["mean"] == pytest.approx(test["mean_diff"], abs=1e-12)
        assert d["std"] == pytest.approx(test["std_diff"], abs=1e-12)
        half = t_quantile(test["n"]) * test["std_diff"] / math.sqrt(test["n"])
        assert (d["low"], d["high"]) == pytest.approx(
            (test["mean_diff"] - half, test["mean_diff"] + half), abs=1e-12
        )
        assert (d["low"], d["high"]) == pytest.approx(t_interval(d["diffs"], "cell"))
    # what is drawn is those numbers: a square (diamond: pooled) at each mean, per column
    assert data["metrics"] == ["nll", "auroc", "acc"]
    panel = fig.axes[data["metrics"].index("auroc")]
    drawn = [float(line.get_xdata()[0]) for line in panel.lines if line.get_marker() in "sD"]
    assert drawn == pytest.approx([r["auroc"]["mean"] for r in rows])
    plt.close(fig)


def test_each_column_has_its_own_y_scale():
    found_runs = runs()
    for fig, _ in (sweep_figure(found_runs, "epochs"), compare_figure(found_runs, "loss")):
        ncols = 2
        top = fig.axes[:ncols]  # the first row: a panel per lr
        (a_low, a_high), (b_low, b_high) = (ax.get_ylim() for ax in top)
        # lr=1e-3's numbers (AUROC near 0.99) are not drawn on lr=1e-4's scale (near 0.6):
        # the two columns' y ranges do not overlap (shared, they would be one range)
        assert min(a_high, b_high) < max(a_low, b_low)
        plt.close(fig)


def test_every_test_measure_has_its_seed_interval():
    found_runs = runs(seeds=(0, 1, 2))
    fig, data = sweep_figure(found_runs, "epochs")
    plt.close(fig)
    assert data["metrics"] == ["nll", "auroc", "acc"]
    panel = data["panels"]["lr=0.001"]
    for metric in ("nll", "auroc", "acc"):
        values = panel["test"][metric]["CE"][30]
        assert len(values) == 3  # a dot per seed
        assert panel["seed_ci"][metric]["CE"][30] == pytest.approx(t_interval(values, "x"))


def test_a_third_head_is_named_in_the_titles():
    found_runs = runs(heads=("bce", "ce", "focal"))
    for fig, data in (compare_figure(found_runs, "loss"), sweep_figure(found_runs, "epochs")):
        plt.close(fig)
        assert data["title"].startswith("BCE, CE and FOCAL: ")
        assert "BCE vs CE" not in data["title"]
    fig, data = compare_figure(runs(), "loss")
    plt.close(fig)
    assert data["title"].startswith("BCE vs CE: ")


def test_titles_say_what_was_chosen_not_what_every_run_shares():
    found_runs = runs()
    for r in found_runs:
        r.record["config"].update(batch_size=32, model="small_cnn")
    fig, data = compare_figure(found_runs, "loss")
    plt.close(fig)
    assert "batch_size" not in data["title"] and "model" not in data["title"]
    assert "epochs=30 (longest; runs of fewer epochs are its first epochs)" in data["title"]


def test_curves_not_recorded_get_no_empty_row():
    """Older records have no NLL curves: the figure draws the accuracy rows only."""
    fig, data = compare_figure(runs(nll=False), "loss")
    plt.close(fig)
    assert data["curves"] == ["train/acc", "val/acc"]
    assert len(fig.axes) == 2 * len(LRS)


def test_the_difference_curves_are_ce_minus_bce_per_seed_with_their_interval():
    found_runs = runs(seeds=(0, 1, 2))
    fig, data = difference_figure(found_runs)
    plt.close(fig)
    assert data["columns"] == ["lr=0.0001", "lr=0.001"]
    d = data["panels"]["lr=0.001"]["val/nll"]
    assert d["epochs"] == list(range(1, 31)) and d["n"] == 3
    by = {(r.config["loss"], r.seed): dict(r.curves["val/nll"]) for r in found_runs
          if r.config["lr"] == 1e-3 and r.config["epochs"] == 30}  # fmt: skip
    at5 = [by[("ce", s)][5] - by[("bce", s)][5] for s in (0, 1, 2)]
    assert [s[4] for s in d["seeds"]] == pytest.approx(at5)
    assert (d["low"][4], d["high"][4]) == pytest.approx(t_interval(at5, "x"))
