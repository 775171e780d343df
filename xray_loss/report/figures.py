"""The report's figures, in small multiples (``report.panels`` picks the panels): per-epoch
curves along an axis, and test metrics against an axis (the epoch budget). Each returns its
figure and the data it plotted (what the tests check); ``report.calibration`` draws the
reliability diagram.

Seeds are drawn as thin lines (line style = seed) or dots with their mean thick, so a split
between seeds stays visible; test measures carry the 95% t-interval of the mean over the seeds
(and AUROC its test-sampling interval, a wide pale bar). Each panel has its own y scale: the
columns (learning rates) differ by more than the heads do, and a shared axis hid the heads'
difference. Every title names what it shows, the settings held at a chosen value and why,
confounds and a dry run (settings every run shares are summary.md's).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from xray_loss.metrics import COMPARED_METRICS, CURVES, OBJECTIVE, SCORES
from xray_loss.report.panels import (
    heads_text,
    interval_key,
    label,
    layout,
    seed_styles,
    series_styles,
    title_text,
)
from xray_loss.report.runs import Run, format_value, sort_key, value
from xray_loss.report.stats import t_interval

# a panel's y label: a score's label, or the head's own objective
PANEL_TITLES = {**{n: s.label or n for n, s in SCORES.items()}, OBJECTIVE: "head objective"}
SEED_CI = "mean, 95% t-interval over seeds"
CI_NOTE = "AUROC, pale bar: 95% CI over test sampling (bootstrap; not seeds)"


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
    """One legend in one row under the panels: the series and the seeds' line styles, with
    a short note on how to read them as its title."""
    handles = list(handles)
    handles += [
        Line2D([], [], color="0.25", lw=1.0, ls=style, label=f"seed {s}")
        for s, style in seeds.items()
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=max(1, len(handles)),
        fontsize=8,
        title=" · ".join(notes) or None,
        title_fontsize=8,
        frameon=False,
    )


def recorded(runs: list[Run], tags: tuple[str, ...] = CURVES) -> list[str]:
    """The curves some run recorded (older records have no NLL curves): a row each."""
    return [t for t in tags if any(r.curves.get(t) for r in runs)]


def seed_interval(values: list[float]) -> tuple[float, float]:
    """The 95% t-interval of the mean over the seeds' values (NaN below 2 or with a NaN)."""
    if len(values) < 2 or not all(np.isfinite(values)):
        return np.nan, np.nan
    return t_interval(values, "the seeds' values")


def compare_figure(runs: list[Run], axis: str):
    """Per-epoch curves (rows: train/val accuracy and loss), one colour per value of
    ``axis``, one column per value of the facet (``report.panels.layout``). Thin lines are
    seeds, the thick line their mean. Returns (figure, data)."""
    shown = layout(runs, axis, "curves")
    values = values_of(shown.runs, axis)
    styles, seeds = series_styles(axis, list(values.values())), seed_styles(shown.runs)
    ncols, tags = max(1, len(shown.panels)), recorded(shown.runs) or list(CURVES)
    height = 2.1 * len(tags) + 1.4
    fig, axes = grid(len(tags), ncols, max(6.0, 2.6 * ncols + 1.0), height, sharex=True)
    data: dict[str, Any] = {"columns": [], "panels": {}, "curves": tags}
    handles: dict[str, Line2D] = {}
    for j, (facet_value, members) in enumerate(shown.panels):
        column = shown.panel_label(facet_value)
        data["columns"].append(column)
        data["panels"][column] = {}
        groups = by_value(members, axis)
        for i, tag in enumerate(tags):
            panel, out = axes[i, j], {}
            for key, group in groups.items():
                epochs, curves = seed_curves(group, tag)
                if not epochs:
                    continue
                name, style = label(axis, values[key]), styles[key]
                for seed, s in curves:
                    panel.plot(epochs, s, color=style["color"], lw=0.9, alpha=0.7, ls=seeds[seed])
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
    heads = list(values_of(shown.runs, "loss").values())
    what = heads_text(heads) if axis == "loss" else f"{axis} compared"
    legend(fig, handles.values(), seeds, ["thick: mean over seeds", "thin: each seed"])
    what = f"{what}: per-epoch curves{shown.columns_note}"
    data["title"] = title_text(what, shown, fig.get_figwidth())
    fig.suptitle(data["title"], fontsize=10)
    return fig, {**data, "held": shown.fixed, "reasons": shown.reasons}


# the test measures drawn against an axis: the head-independent NLL first


def sweep_figure(runs: list[Run], axis: str, ci: tuple[list[str], dict] | None = None):
    """Test NLL, AUROC and accuracy of the best checkpoint (those recorded) against ``axis``
    (x), one series per head, one column per value of the facet (``lr`` for the epochs). Each
    seed is a dot beside its configuration's mean, which carries the 95% t-interval over the
    seeds; ``ci`` (the summary's columns and :func:`report.panels.intervals`) adds AUROC's
    test-sampling interval as a pale bar behind it. Along ``epochs`` a last row shows the
    longest runs' val AUROC per head, a dashed line where each budget stops and a dot at its
    best checkpoint (runs of 10/30/100 epochs at a constant lr are prefixes of one another)."""
    shown = layout(runs, axis, "sweep")
    xs = values_of(shown.runs, axis)
    heads = values_of(shown.runs, "loss") if axis != "loss" else {"": ""}
    styles, seeds = series_styles("loss", list(heads.values())), seed_styles(shown.runs)
    metrics = [m for m in COMPARED_METRICS if any(np.isfinite(r.test(m)) for r in shown.runs)]
    metrics = metrics or ["auroc"]
    nrows, ncols = len(metrics) + (axis == "epochs"), max(1, len(shown.panels))
    width = max(6.0, 2.9 * ncols + 1.0)
    fig, axes = grid(nrows, ncols, width, 2.3 * nrows + 1.4)
    offsets = np.linspace(-0.2, 0.2, len(heads)) if len(heads) > 1 else [0.0]
    data: dict[str, Any] = {"columns": [], "panels": {}, "values": list(xs.values())}
    data["metrics"] = metrics
    handles = []
    for j, (facet_value, members) in enumerate(shown.panels):
        column = shown.panel_label(facet_value)
        data["columns"].append(column)
        out: dict[str, Any] = {"test": {m: {} for m in metrics}, "ci": {}}
        out["seed_ci"] = {m: {} for m in metrics}
        data["panels"][column] = out
        groups = by_value(members, "loss") if axis != "loss" else {"": members}
        for (key, head), off in zip(heads.items(), offsets, strict=True):
            style, name = styles.get(key, {"color": "k", "ls": "-"}), label("loss", head) or "all"
            at = by_value(groups.get(key, []), axis)
            for i, metric in enumerate(metrics):
                panel, per = axes[i, j], [[r.test(metric) for r in at.get(x, [])] for x in xs]
                if metric == "auroc" and ci:
                    out["ci"][name] = _ci_bars(panel, ci, at, xs, off, style["color"])
                bounds = [seed_interval(v) for v in per]
                for k, vals in enumerate(per):
                    dots = [k + off - 0.06] * len(vals)
                    panel.scatter(dots, vals, color=style["color"], s=14, alpha=0.85, lw=0)
                means = np.array([float(np.nanmean(v)) if v else np.nan for v in per])
                low, high = (np.array(b) for b in zip(*bounds, strict=True))
                panel.errorbar(
                    np.arange(len(xs)) + off,
                    means,
                    yerr=[means - low, high - means],
                    color=style["color"],
                    ls=style["ls"],
                    lw=1.8,
                    marker="o",
                    ms=4,
                    capsize=3,
                )
                if i == 0 and j == 0:
                    handles.append(Line2D([], [], **style, lw=1.8, marker="o", label=name))
                out["test"][metric][name] = dict(zip(xs.values(), per, strict=True))
                out["seed_ci"][metric][name] = dict(zip(xs.values(), bounds, strict=True))
            if axis == "epochs":
                first = key == next(iter(heads))
                out.setdefault("val_auroc", {})[name], out.setdefault("budgets", {})[name] = (
                    _budget_row(axes[-1, j], at, style, seeds, first)
                )
        for i, metric in enumerate(metrics):
            if metric != "nll":  # a share: an interval past 1 is cut at the axis, as at 1
                low, high = axes[i, j].get_ylim()
                axes[i, j].set_ylim(max(low, 0.0), min(high, 1.0 + 0.02 * (high - low)))
            axes[i, j].set_xticks(range(len(xs)), [format_value(v) for v in xs.values()])
            axes[i, j].set_xlim(-0.5, len(xs) - 0.5)
            axes[i, j].grid(alpha=0.3)
            if j == 0:
                better = "lower" if SCORES[metric].lower else "higher"
                axes[i, j].set_ylabel(f"test {PANEL_TITLES[metric]}\n({better} is better)")
        axes[0, j].set_title(column or "all runs", fontsize=10)
        if axis == "epochs" and j == 0:
            axes[-1, j].set_ylabel("val AUROC,\nlongest runs")
        axes[len(metrics) - 1, j].set_xlabel("epoch budget (nominal)" if axis == "epochs" else axis)
    handles.append(Line2D([], [], color="0.25", ls="", marker="o", ms=4, label="each seed"))
    bars = [b for p in data["panels"].values() for h in p["ci"].values() for b in h.values()]
    notes = [SEED_CI] + ([CI_NOTE] if any(np.isfinite(b).all() for b in bars) else [])
    if axis == "epochs":
        notes += ["bottom: dashed where each budget ends, ● its best checkpoint"]
    legend(fig, handles, seeds if axis == "epochs" else {}, notes)
    per = "epoch budget" if axis == "epochs" else axis
    what = f"{heads_text(list(heads.values()))}: best-checkpoint test measures per {per}"
    data["title"] = title_text(what + shown.columns_note, shown, width)
    fig.suptitle(data["title"], fontsize=10)
    return fig, {**data, "held": shown.fixed, "reasons": shown.reasons}


def _ci_bars(panel, ci, at: dict[str, list[Run]], xs: dict, off: float, color) -> dict:
    """AUROC's test-sampling interval per configuration: a wide pale bar behind the mean."""
    cols, table = ci
    out = {}
    for k, x in enumerate(xs):
        if not at.get(x):
            continue
        low, high = table.get(interval_key(cols, at[x][0].record), (np.nan, np.nan))
        out[xs[x]] = (low, high)
        if np.isfinite(low) and np.isfinite(high):
            panel.vlines(k + off, low, high, color=color, lw=7, alpha=0.25, zorder=0)
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
        panel.plot(epochs, s, color=style["color"], lw=0.9, alpha=0.7, ls=seeds[seed])
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
