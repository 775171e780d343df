"""The report's figures, in small multiples (``report.panels`` picks the panels): per-epoch
curves along an axis, and test metrics against an axis (the epoch budget). Each returns its
figure and the data it plotted (what the tests check); ``report.calibration`` draws the
reliability diagram.

Seeds are drawn as thin lines (line style = seed) or dots with their mean thick, so a split
between seeds stays visible; the test-sampling interval, where drawn, is a bar labelled as
such. Every title names the settings held and why, confounds, and a dry run.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from xray_loss.metrics import CURVES, OBJECTIVE, SCORES
from xray_loss.report.panels import (
    interval_key,
    label,
    layout,
    seed_styles,
    series_styles,
    title_text,
)
from xray_loss.report.runs import Run, format_value, sort_key, value

# a panel's y label: a score's label, or the head's own objective
PANEL_TITLES = {**{n: s.label or n for n, s in SCORES.items()}, OBJECTIVE: "head objective"}
CI_NOTE = "bar: 95% CI of the mean over test sampling (bootstrap, models fixed; not seeds)"


def seed_curves(runs: list[Run], tag: str) -> tuple[list[int], list[tuple[int, list[float]]]]:
    """Epochs every run has, and each run's (seed, values there)."""
    series = [(r.seed, dict(r.curves.get(tag, []))) for r in runs]
    series = [(seed, s) for seed, s in series if s]
    if not series:
        return [], []
    epochs = sorted(set.intersection(*(set(s) for _, s in series)))
    return epochs, [(seed, [s[e] for e in epochs]) for seed, s in series]


def by_value(runs: list[Run], axis: str) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[str(value(r.record, axis))].append(r)
    return dict(sorted(groups.items(), key=lambda kv: sort_key(kv[0])))


def values_of(runs: list[Run], axis: str) -> dict[str, Any]:
    """``str(value) -> value`` of an axis in these runs, in numeric order."""
    found = {str(value(r.record, axis)): value(r.record, axis) for r in runs}
    return dict(sorted(found.items(), key=lambda kv: sort_key(kv[1])))


def grid(rows: int, cols: int, width: float, height: float, **kw):
    """A figure of rows x cols axes (matplotlib's Figure API: no pyplot, no backend switch)."""
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def legend(fig, handles: list, seeds: dict[int, str], notes: list[str] = ()) -> None:
    """One legend under the panels: the series and the seeds' line styles, with the notes
    on how to read them as its title (wrapped to the figure's width)."""
    handles = list(handles)
    handles += [
        Line2D([], [], color="grey", lw=0.9, ls=style, label=f"seed {s}")
        for s, style in seeds.items()
    ]
    title = textwrap.fill(" · ".join(notes), int(fig.get_figwidth() * 14)) if notes else None
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=max(1, min(len(handles), 8)),
        fontsize=8,
        title=title,
        title_fontsize=8,
    )


def compare_figure(runs: list[Run], axis: str):
    """Per-epoch curves (rows: train/val accuracy and loss), one colour per value of
    ``axis``, one column per value of the facet (``report.panels.layout``). Thin lines are
    seeds, the thick line their mean. Returns (figure, data)."""
    shown = layout(runs, axis, "curves")
    values = values_of(shown.runs, axis)
    styles, seeds = series_styles(axis, list(values.values())), seed_styles(shown.runs)
    ncols = max(1, len(shown.panels))
    fig, axes = grid(len(CURVES), ncols, max(6.0, 2.6 * ncols + 1.0), 9.0, sharex=True)
    for row in axes:  # share y within a row: the columns are compared on one scale
        for panel in row[1:]:
            panel.sharey(row[0])
    data: dict[str, Any] = {"columns": [], "panels": {}}
    handles: dict[str, Line2D] = {}
    for j, (facet_value, members) in enumerate(shown.panels):
        column = shown.panel_label(facet_value)
        data["columns"].append(column)
        data["panels"][column] = {}
        groups = by_value(members, axis)
        for i, tag in enumerate(CURVES):
            panel, out = axes[i, j], {}
            for key, group in groups.items():
                epochs, curves = seed_curves(group, tag)
                if not epochs:
                    continue
                name, style = label(axis, values[key]), styles[key]
                for seed, s in curves:
                    panel.plot(epochs, s, color=style["color"], lw=0.8, alpha=0.5, ls=seeds[seed])
                mean = np.mean([s for _, s in curves], axis=0)
                marker = "o" if len(epochs) < 3 else None  # a one-epoch series is a point
                (line,) = panel.plot(epochs, mean, lw=2.2, marker=marker, **style, label=name)
                handles.setdefault(name, line)
                out[name] = {
                    "epochs": epochs,
                    "mean": mean.tolist(),
                    "seeds": [s for _, s in curves],
                    "n": len(curves),
                }
            data["panels"][column][tag] = out
            split, metric = tag.split("/")
            if i == 0:
                panel.set_title(column or "all runs", fontsize=10)
            if j == 0:
                panel.set_ylabel(f"{split} {PANEL_TITLES[metric]}")
            panel.grid(alpha=0.3)
            panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[-1, j].set_xlabel("epoch")
    what = "BCE vs CE" if axis == "loss" else f"{axis} compared"
    notes = ["thick: mean over seeds", "thin: each seed (line style)"]
    legend(fig, handles.values(), seeds, notes)
    what = f"{what}: per-epoch curves{shown.columns_note}"
    data["title"] = title_text(what, shown, fig.get_figwidth())
    fig.suptitle(data["title"], fontsize=10)
    return fig, {**data, "held": shown.fixed, "reasons": shown.reasons}


def sweep_figure(runs: list[Run], axis: str, ci: tuple[list[str], dict] | None = None):
    """Test AUROC and accuracy of the best checkpoint against ``axis`` (x), one line per head,
    one column per value of the facet (``lr`` for the epochs). Dots are seeds; ``ci`` (the
    summary's columns and :func:`report.panels.intervals`) adds each configuration's
    test-sampling interval as a bar. Along ``epochs`` a last row shows the longest runs' val
    AUROC per head, a dashed line where each budget stops and a dot at its best checkpoint
    (runs of 10/30/100 epochs at a constant lr are prefixes of one another)."""
    shown = layout(runs, axis, "sweep")
    xs = values_of(shown.runs, axis)
    heads = values_of(shown.runs, "loss") if axis != "loss" else {"": ""}
    styles, seeds = series_styles("loss", list(heads.values())), seed_styles(shown.runs)
    metrics = ("auroc", "acc")
    nrows, ncols = len(metrics) + (axis == "epochs"), max(1, len(shown.panels))
    fig, axes = grid(nrows, ncols, max(6.0, 2.9 * ncols + 1.0), 2.5 * nrows + 1.6)
    for row in axes:
        for panel in row[1:]:
            panel.sharey(row[0])
    offsets = np.linspace(-0.1, 0.1, len(heads)) if len(heads) > 1 else [0.0]
    data: dict[str, Any] = {"columns": [], "panels": {}, "values": list(xs.values())}
    handles = []
    for j, (facet_value, members) in enumerate(shown.panels):
        column = shown.panel_label(facet_value)
        data["columns"].append(column)
        out: dict[str, Any] = {"test": {m: {} for m in metrics}, "ci": {}}
        data["panels"][column] = out
        groups = by_value(members, "loss") if axis != "loss" else {"": members}
        for (key, head), off in zip(heads.items(), offsets, strict=True):
            style, name = styles.get(key, {"color": "k", "ls": "-"}), label("loss", head) or "all"
            at = by_value(groups.get(key, []), axis)
            for i, metric in enumerate(metrics):
                panel, per = axes[i, j], [[r.test(metric) for r in at.get(x, [])] for x in xs]
                for k, vals in enumerate(per):
                    dots = [k + off] * len(vals)
                    panel.scatter(dots, vals, color=style["color"], s=12, alpha=0.6)
                means = [float(np.nanmean(v)) if v else np.nan for v in per]
                line = panel.plot(np.arange(len(xs)) + off, means, lw=2, marker="o", ms=4, **style)
                if i == 0 and j == 0:
                    handles.append(Line2D([], [], **style, lw=2, marker="o", label=name))
                out["test"][metric][name] = dict(zip(xs.values(), per, strict=True))
                if metric == "auroc" and ci:
                    out["ci"][name] = _ci_bars(panel, ci, at, xs, off, line[0].get_color())
            if axis == "epochs":
                first = key == next(iter(heads))
                out.setdefault("val_auroc", {})[name], out.setdefault("budgets", {})[name] = (
                    _budget_row(axes[-1, j], at, style, seeds, first)
                )
        for i, metric in enumerate(metrics):
            axes[i, j].set_xticks(range(len(xs)), [format_value(v) for v in xs.values()])
            axes[i, j].grid(alpha=0.3)
            if j == 0:
                axes[i, j].set_ylabel(f"test {PANEL_TITLES[metric]}")
        axes[0, j].set_title(column or "all runs", fontsize=10)
        if axis == "epochs" and j == 0:
            axes[-1, j].set_ylabel("val AUROC")
        axes[len(metrics) - 1, j].set_xlabel("epoch budget (nominal)" if axis == "epochs" else axis)
    notes = ["dots: each seed", "thick: mean over seeds"] + ([CI_NOTE] if ci else [])
    if axis == "epochs":
        notes += [
            "bottom row: the longest runs; dashed: where each budget ends, ●: its best checkpoint"
        ]
    legend(fig, handles, seeds if axis == "epochs" else {}, notes)
    per = "epoch budget" if axis == "epochs" else axis
    what = f"BCE vs CE: best-checkpoint test metrics per {per}{shown.columns_note}"
    data["title"] = title_text(what, shown, fig.get_figwidth())
    fig.suptitle(data["title"], fontsize=10)
    return fig, {**data, "held": shown.fixed, "reasons": shown.reasons}


def _ci_bars(panel, ci, at: dict[str, list[Run]], xs: dict, off: float, color) -> dict:
    cols, table = ci
    out = {}
    for k, x in enumerate(xs):
        if not at.get(x):
            continue
        low, high = table.get(interval_key(cols, at[x][0].record), (np.nan, np.nan))
        out[xs[x]] = (low, high)
        if np.isfinite(low) and np.isfinite(high):
            mid, half = (low + high) / 2, (high - low) / 2
            panel.errorbar(k + off, mid, yerr=half, fmt="none", ecolor=color, capsize=3, lw=1)
    return out


def _budget_row(panel, at: dict[str, list[Run]], style: dict, seeds: dict[int, str], first: bool):
    """The longest runs' val AUROC per epoch; where each budget stops (drawn with the
    ``first`` head); the budget's best checkpoint on the mean curve."""
    if not at:
        return {}, {}
    longest = list(at)[-1]
    epochs, curves = seed_curves(at[longest], "val/auroc")
    budgets: dict[str, Any] = {}
    if not epochs:
        return {}, budgets
    for seed, s in curves:
        panel.plot(epochs, s, color=style["color"], lw=0.8, alpha=0.5, ls=seeds[seed])
    mean = np.mean([s for _, s in curves], axis=0)
    panel.plot(epochs, mean, lw=2, **style)
    for budget, group in at.items():
        stops = [int(r.config.get("max_epochs") or budget) for r in group]
        best = [int(r.record["best_epoch"]) for r in group if r.record.get("best_epoch")]
        budgets[int(float(budget))] = {"trained": stops, "best_epoch": best}
        if first:
            panel.axvline(max(stops), color="grey", ls="--", lw=0.8)
            where = (max(stops), 0.02)
            panel.annotate(f" {budget}", where, xycoords=("data", "axes fraction"), fontsize=7)
        for e in best:
            if e in epochs:
                panel.plot(e, mean[epochs.index(e)], "o", color=style["color"], ms=5, mec="k")
    panel.set_xlabel("epoch (longest runs)")
    panel.grid(alpha=0.3)
    panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    return {"epochs": epochs, "mean": mean.tolist(), "n": len(curves)}, budgets


def save(fig, out: Path, name: str) -> list[Path]:
    """PNG and PDF of a figure."""
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, bbox_inches="tight")
    return paths
