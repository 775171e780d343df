"""The report's figures. What each study figure shows is data (:data:`STUDY_FIGURES`); three
functions draw them: curves along an axis, test metrics against the epoch budget, and the
reliability diagram. Each returns its figure and the data it plotted (what the tests check).

Seeds are drawn as thin lines (or dots) with their mean thick, so a split between seeds stays
visible; every title names the settings held fixed, those that vary only together with the
compared axis (``report.runs.confounds``), and a dry run (``epochs_scale``) says so.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from xray_loss.metrics import AXES, CURVES  # noqa: E402
from xray_loss.report.runs import (  # noqa: E402
    Run,
    confounds,
    format_value,
    slice_for,
    sort_key,
    value,
)
from xray_loss.report.stats import ECE_BINS, expected_calibration_error  # noqa: E402

# name -> (the axis compared, the other axes held at the original study's values, the kind)
STUDY_FIGURES: dict[str, tuple[str, dict[str, Any], str]] = {
    "fig1_loss_compare": ("loss", {"lr": 1e-5, "epochs": 100}, "curves"),
    "fig2_epochs": ("epochs", {"loss": "ce", "lr": 1e-5}, "budgets"),
    "fig2_lr": ("lr", {"loss": "bce", "epochs": 100}, "curves"),
}
PANEL_TITLES = {"acc": "accuracy", "loss": "loss", "auroc": "AUROC"}
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def label(axis: str, v: Any) -> str:
    if axis == "lr":
        return f"lr={float(v):g}"
    return str(v).upper() if axis == "loss" else f"{axis}={format_value(v)}"


def held(runs: list[Run], axis: str) -> dict[str, Any]:
    """The named settings every one of these runs shares (what a title must state)."""
    out = {}
    for a in AXES:
        if a in (axis, "seed", "max_epochs"):
            continue
        values = {str(value(r.record, a)) for r in runs}
        if len(values) == 1:
            out[a] = value(runs[0].record, a)
    return out


def dry_run_note(runs: list[Run]) -> str:
    """``dry run: epochs x 0.05 (10/30/100 nominal, 1/2/5 trained)``, or nothing."""
    pairs = sorted(
        {
            (int(r.config["epochs"]), int(r.config["max_epochs"]))
            for r in runs
            if "max_epochs" in r.config
        }
    )
    if all(e == m for e, m in pairs):
        return ""
    nominal = "/".join(str(e) for e, _ in pairs)
    trained = "/".join(str(m) for _, m in pairs)
    return f"dry run: {nominal} epochs nominal, {trained} trained"


def confound_note(runs: list[Run]) -> str:
    """``confounded: scheduler, trainer.max_time vary with epochs``, or nothing."""
    by_columns: dict[str, list[str]] = defaultdict(list)
    for key, follows in confounds([r.record for r in runs]).items():
        by_columns[", ".join(follows)].append(key)
    return "; ".join(f"confounded: {', '.join(k)} vary with {c}" for c, k in by_columns.items())


def suptitle(fig, what: str, runs: list[Run], axis: str) -> str:
    settings = " · ".join(f"{k}={format_value(v)}" for k, v in held(runs, axis).items())
    notes = [n for n in (confound_note(runs), dry_run_note(runs)) if n]
    text = "\n".join([what, settings, *notes])
    fig.suptitle(text, fontsize=10)
    return text


def seed_curves(runs: list[Run], tag: str) -> tuple[list[int], list[list[float]]]:
    """Epochs every run has, and each run's values there (one list per seed)."""
    series = [dict(r.curves.get(tag, [])) for r in runs]
    series = [s for s in series if s]
    if not series:
        return [], []
    epochs = sorted(set.intersection(*(set(s) for s in series)))
    return epochs, [[s[e] for e in epochs] for s in series]


def compare_figure(runs: list[Run], axis: str, prefer: dict[str, Any] | None = None):
    """2 x 2 panels (train/val x accuracy/loss) per epoch, one colour per value of ``axis``:
    thin lines are seeds, the thick line their mean. Returns (figure, data)."""
    chosen, _ = slice_for(runs, axis, prefer or {})
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in chosen:
        groups[str(value(r.record, axis))].append(r)
    fig, axes = plt.subplots(2, 2, figsize=(9.5, 7), dpi=110, sharex=True)
    panels: dict[str, dict[str, dict]] = {}
    for panel, tag in zip(axes.flat, CURVES, strict=True):
        panels[tag] = {}
        for i, v in enumerate(sorted(groups, key=sort_key)):
            epochs, seeds = seed_curves(groups[v], tag)
            if not epochs:
                continue
            color, name = COLORS[i % len(COLORS)], label(axis, v)
            for s in seeds:
                panel.plot(epochs, s, color=color, lw=0.7, alpha=0.35)
            mean = np.mean(seeds, axis=0)
            marker = "o" if len(epochs) < 3 else None  # a one-epoch series is a point
            panel.plot(
                epochs, mean, color=color, lw=2, marker=marker, label=f"{name} (n={len(seeds)})"
            )
            panels[tag][name] = {"epochs": epochs, "mean": mean.tolist(), "seeds": seeds}
        split, metric = tag.split("/")
        panel.set_title(f"{split} {PANEL_TITLES[metric]}", fontsize=10)
        panel.set_ylabel(PANEL_TITLES[metric])
        panel.grid(alpha=0.3)
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    for panel in axes[1]:
        panel.set_xlabel("epoch")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=9)
    title = suptitle(
        fig, f"{axis} compared: thick = mean over seeds, thin = each seed", chosen, axis
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig, {"title": title, "panels": panels, "held": held(chosen, axis)}


def budget_points(runs: list[Run]) -> dict[int, list[dict[str, Any]]]:
    """Per nominal epoch budget, the best-checkpoint test results of each run of that many
    epochs (a run with ``budgets=[...]`` was read as its shorter runs, report.records)."""
    points: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        points[int(r.config.get("epochs", 0))].append(
            {
                "seed": r.seed,
                "run": r,
                "test": r.record.get("test", {}),
                "best_epoch": r.record.get("best_epoch"),
                "epochs_trained": r.config.get("max_epochs"),
            }
        )
    return dict(sorted(points.items()))


def budget_figure(runs: list[Run], prefer: dict[str, Any] | None = None):
    """What the epoch budget changes. Runs of 10/30/100 epochs at a constant lr are prefixes
    of one another, so their curves coincide; this shows instead (left) the test metrics of
    the best checkpoint within each budget and (right) the longest runs' val AUROC with a line
    where each budget stops and a dot at the epoch its best checkpoint came from."""
    chosen, _ = slice_for(runs, "epochs", prefer or {})
    points = budget_points(chosen)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4), dpi=110)
    budgets = list(points)
    data: dict[str, Any] = {"budgets": budgets, "test": {}, "best_epoch": {}, "trained": {}}
    for color, metric in zip(COLORS, ("auroc", "acc"), strict=False):
        per = [[float(p["test"].get(f"test/{metric}", np.nan)) for p in points[b]] for b in budgets]
        for x, values in enumerate(per):
            left.scatter([x] * len(values), values, color=color, s=14, alpha=0.45)
        means = [float(np.nanmean(v)) for v in per]
        left.plot(
            range(len(budgets)),
            means,
            color=color,
            lw=2,
            marker="o",
            label=f"test {PANEL_TITLES[metric]}",
        )
        data["test"][metric] = dict(zip(budgets, per, strict=True))
    left.set_xticks(range(len(budgets)), [str(b) for b in budgets])
    left.set_xlabel("epoch budget (nominal)")
    left.set_ylabel("test metric, best checkpoint in budget")
    left.legend(fontsize=8, loc="lower right")
    left.grid(alpha=0.3)
    longest = budgets[-1] if budgets else None
    runs_long = [p["run"] for p in points.get(longest, [])]
    epochs, seeds = seed_curves(runs_long, "val/auroc")
    if epochs:
        for s in seeds:
            right.plot(epochs, s, color=COLORS[0], lw=0.7, alpha=0.35)
        mean = np.mean(seeds, axis=0)
        right.plot(epochs, mean, color=COLORS[0], lw=2, label=f"val AUROC (n={len(seeds)})")
        for i, b in enumerate(budgets):
            stops = [int(p.get("epochs_trained") or b) for p in points[b]]
            best = [int(p["best_epoch"]) for p in points[b] if p.get("best_epoch")]
            data["trained"][b], data["best_epoch"][b] = stops, best
            right.axvline(max(stops), color="grey", ls="--", lw=0.8)
            right.text(max(stops), right.get_ylim()[0], f" {b}", fontsize=8, va="bottom")
            for e in best:
                if e in epochs:
                    right.plot(
                        e, mean[epochs.index(e)], "o", color=COLORS[(i + 2) % len(COLORS)], ms=5
                    )
        right.set_xlabel("epoch")
        right.set_ylabel("val AUROC")
        right.legend(fontsize=8, loc="lower right")
        right.grid(alpha=0.3)
        right.xaxis.set_major_locator(MaxNLocator(integer=True))
        data["val_auroc"] = {"epochs": epochs, "mean": mean.tolist()}
    title = suptitle(
        fig,
        "epoch budget: dots are seeds, lines their mean; dashed = budget end, "
        "dot on the curve = best checkpoint",
        chosen,
        "epochs",
    )
    fig.tight_layout()
    return fig, {**data, "title": title}


def calibration_figure(runs: list[Run], bins: int = ECE_BINS):
    """Reliability diagram per head, test predictions pooled over the given runs; the ECE in
    the legend uses the same bins. The title names the slice and the bins."""
    fig, ax = plt.subplots(figsize=(5.2, 5), dpi=110)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    by_head: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if r.labels is not None:
            by_head[str(r.config.get("loss"))].append(r)
    data: dict[str, Any] = {}
    edges = np.linspace(0, 1, bins + 1)
    for head, members in sorted(by_head.items()):
        labels = np.concatenate([r.labels for r in members])
        probs = np.concatenate([r.probs for r in members])
        which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
        xs, ys, counts = [], [], []
        for b in range(bins):
            mask = which == b
            if mask.any():
                xs.append(float(probs[mask].mean()))
                ys.append(float(labels[mask].mean()))
                counts.append(int(mask.sum()))
        ece = expected_calibration_error(labels, probs, bins)
        ax.plot(
            xs, ys, marker="o", lw=1.4, label=f"{head.upper()} ({len(members)} runs, ECE {ece:.3f})"
        )
        data[head] = {
            "confidence": xs,
            "frequency": ys,
            "counts": counts,
            "ece": ece,
            "bins": bins,
            "runs": len(members),
        }
    ax.set_xlabel("predicted P(pneumonia), bin mean")
    ax.set_ylabel("observed pneumonia rate")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    title = suptitle(fig, f"Reliability on the test split ({bins} equal-width bins)", runs, "loss")
    fig.tight_layout()
    return fig, {**data, "title": title}


def save(fig, out: Path, name: str) -> list[Path]:
    """PNG and PDF of a figure, then closed."""
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return paths
