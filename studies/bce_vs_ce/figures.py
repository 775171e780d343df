"""The study's own figure: CE minus BCE per epoch, paired by seed, with a 95% t-band over the
seeds (train and val NLL and accuracy), one row per learning rate. The package report draws
the curves themselves; this shows their difference, which those axes make too small to see."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from studies.bce_vs_ce.measures import LRS, StudyRun, cell
from xray_loss.identity import format_value
from xray_loss.report.stats import t_quantile

PANELS = (
    ("train/nll", "train NLL"),
    ("val/nll", "val NLL"),
    ("train/acc", "train accuracy"),
    ("val/acc", "val accuracy"),
)


def band(runs_a: dict[int, StudyRun], runs_b: dict[int, StudyRun], tag: str):
    """Per epoch that every pair has: the mean CE - BCE difference and its 95% t-interval
    (NaN where fewer than 2 pairs)."""
    seeds = sorted(set(runs_a) & set(runs_b))
    curves = [(runs_a[s].curve(tag), runs_b[s].curve(tag)) for s in seeds]
    epochs = sorted(set.intersection(*(set(a) & set(b) for a, b in curves))) if curves else []
    d = np.array([[b[e] - a[e] for e in epochs] for a, b in curves]).reshape(len(curves), -1)
    mean = d.mean(0) if len(d) else np.array([])
    if len(d) < 2:
        return np.array(epochs), mean, mean * math.nan, mean * math.nan
    half = t_quantile(len(d)) * d.std(0, ddof=1) / math.sqrt(len(d))
    return np.array(epochs), mean, mean - half, mean + half


def curve_differences(runs: list[StudyRun], path: Path) -> Path:
    """Draw the figure into ``path`` (PNG without a software stamp: the bytes depend only on
    the records)."""
    lrs = [lr for lr in LRS if cell(runs, "bce", lr) and cell(runs, "ce", lr)] or list(LRS[:1])
    fig = Figure(figsize=(4 * len(PANELS), 2.8 * len(lrs)), layout="tight")
    axes = fig.subplots(len(lrs), len(PANELS), squeeze=False)
    for row, lr in zip(axes, lrs, strict=True):
        bce, ce = cell(runs, "bce", lr), cell(runs, "ce", lr)
        n = len(set(bce) & set(ce))
        for ax, (tag, label) in zip(row, PANELS, strict=True):
            epochs, mean, low, high = band(bce, ce, tag)
            ax.axhline(0, color="black", lw=0.8)
            if len(epochs):
                ax.fill_between(epochs, low, high, color="tab:blue", alpha=0.25, lw=0)
                ax.plot(epochs, mean, color="tab:blue", lw=1.2)
            ax.set_title(f"{label}, lr {format_value(lr)} ({n} seed pairs)", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("CE − BCE")
    fig.savefig(path, metadata={"Software": None})
    return path
