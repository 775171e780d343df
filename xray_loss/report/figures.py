"""The report's figures. What each study figure shows is data (:data:`STUDY_FIGURES`); one
function draws any axis comparison, another the reliability diagram."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from xray_loss.metrics import CURVES  # noqa: E402
from xray_loss.report.runs import Run, slice_for, sort_key, value  # noqa: E402
from xray_loss.report.stats import ECE_BINS, expected_calibration_error  # noqa: E402

# name -> (the axis compared, the other axes held at the original study's values)
STUDY_FIGURES: dict[str, tuple[str, dict[str, Any]]] = {
    "fig1_loss_compare": ("loss", {"lr": 1e-5, "epochs": 100}),
    "fig2_epochs": ("epochs", {"loss": "ce", "lr": 1e-5}),
    "fig2_lr": ("lr", {"loss": "bce", "epochs": 100}),
}


def label(axis: str, v: Any) -> str:
    if axis == "lr":
        return f"lr={float(v):g}"
    return str(v).upper() if axis == "loss" else f"{axis}={v}"


def mean_band(runs: list[Run], tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean, min and max over runs (seeds) of one curve, on the epochs all runs have."""
    series = [dict(r.curves.get(tag, [])) for r in runs]
    series = [s for s in series if s]
    if not series:
        return (np.array([]),) * 4
    epochs = sorted(set.intersection(*(set(s) for s in series)))
    values = np.array([[s[e] for e in epochs] for s in series])
    return np.array(epochs), values.mean(0), values.min(0), values.max(0)


def compare_figure(
    runs: list[Run], axis: str, prefer: dict[str, Any] | None = None, title: str | None = None
):
    """2 x 2 panels (accuracy / loss x train / val), one mean line + seed band per value of
    ``axis``. Returns (figure, data) where data maps panel -> label -> (epochs, mean)."""
    chosen, fixed = slice_for(runs, axis, prefer or {})
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in chosen:
        groups[str(value(r.record, axis))].append(r)
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), dpi=110, sharex="col")
    data: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for panel, tag in zip(axes.flat, CURVES, strict=True):
        data[tag] = {}
        for i, v in enumerate(sorted(groups, key=sort_key)):
            epochs, mean, low, high = mean_band(groups[v], tag)
            if not len(epochs):
                continue
            name = label(axis, v)
            n = len(groups[v])
            # dashes keep curves visible where they coincide (an epoch budget is a prefix)
            panel.plot(
                epochs,
                mean,
                color=colors[i % len(colors)],
                label=f"{name} (n={n})",
                lw=1.6,
                ls=("-", "--", ":", "-.")[i % 4],
            )
            if n > 1:
                panel.fill_between(epochs, low, high, color=colors[i % len(colors)], alpha=0.2)
            data[tag][name] = (epochs.tolist(), mean.tolist())
        split, metric = tag.split("/")
        panel.set_title(f"{split} {'accuracy' if metric == 'acc' else 'loss'}")
        panel.grid(alpha=0.3)
        panel.set_xlabel("epoch")
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].legend(fontsize=8)
    held = ", ".join(f"{k}={v}" for k, v in fixed.items())
    fig.suptitle(title or f"{axis} compared" + (f" ({held})" if held else ""), fontsize=11)
    fig.tight_layout()
    return fig, data


def calibration_figure(runs: list[Run], bins: int = ECE_BINS):
    """Reliability diagram per head, test predictions pooled over the given runs; the ECE in
    the legend uses the same bins."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=110)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    by_head: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if r.labels is not None:
            by_head[str(r.config.get("loss"))].append(r)
    data = {}
    edges = np.linspace(0, 1, bins + 1)
    for head, members in sorted(by_head.items()):
        labels = np.concatenate([r.labels for r in members])
        probs = np.concatenate([r.probs for r in members])
        which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
        xs, ys = [], []
        for b in range(bins):
            mask = which == b
            if mask.any():
                xs.append(float(probs[mask].mean()))
                ys.append(float(labels[mask].mean()))
        ece = expected_calibration_error(labels, probs, bins)
        ax.plot(xs, ys, marker="o", lw=1.4, label=f"{head.upper()} (ECE {ece:.3f})")
        data[head] = {"confidence": xs, "frequency": ys, "ece": ece, "bins": bins}
    ax.set_xlabel("predicted P(pneumonia)")
    ax.set_ylabel("observed pneumonia rate")
    ax.set_title(f"Reliability on the test split ({bins} bins)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, data


def save(fig, out: Path, name: str) -> list[Path]:
    """PNG and PDF of a figure, then closed."""
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return paths
