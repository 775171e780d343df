"""CE − BCE, the effect itself: per cell of the other settings (the forest plot,
``fig3_forest``, and summary.md's BCE vs CE table) and per epoch (``fig1_difference``).

Runs pair as ``report.paired`` pairs them: ``loss=bce`` with ``loss=ce`` of the same seed and
fold at otherwise equal settings (its cells). A cell's interval is the 95% t-interval of the
mean difference over its seeds (``report.stats.t_interval``); the pooled row averages each
seed's differences over the cells first, as ``report.paired`` does (differences sharing a seed
are not independent). For test AUROC the means are ``paired_loss_tests``' (a test checks it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from xray_loss.metrics import COMPARED_METRICS, CURVES, SCORES
from xray_loss.report.figures import PANEL_TITLES, grid, legend
from xray_loss.report.paired import _cell as cell_of  # the cells paired_loss_tests tests
from xray_loss.report.panels import layout, seed_styles, title_text
from xray_loss.report.runs import Run, columns, format_value, sort_key, value
from xray_loss.report.stats import mean_std, t_interval

# the test measures whose CE − BCE difference the forest plot and summary.md show: the
# head-independent NLL, the ranking (AUROC) and the decisions at the threshold (accuracy)
POOLED = "all settings pooled"
DIFF_COLOR = "#CC79A7"  # Okabe-Ito reddish purple: neither head's colour


def _heads(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.config.get("loss") in ("bce", "ce")]


def pairs(runs: list[Run]) -> tuple[list[str], list[tuple[dict[str, Any], list[tuple]]]]:
    """The columns naming a cell, and per cell (in numeric order) its settings and its
    (BCE run, CE run) pairs by (seed, fold). A cell where one head ran twice on a seed and
    fold (a swept ``loss.pos_weight``) is no pair: left out, as ``report.paired`` does."""
    plain = _heads(runs)
    cols = [c for c in columns([r.record for r in plain]) if c != "loss" and c[:5] != "loss."]
    found: dict[tuple, dict[tuple, dict[str, list[Run]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in plain:
        found[cell_of(r)][(r.seed, str(r.fold))][r.config["loss"]].append(r)
    out = []
    for slots in found.values():
        both = {k: s for k, s in sorted(slots.items()) if s["bce"] and s["ce"]}
        if not both or any(len(s["bce"]) > 1 or len(s["ce"]) > 1 for s in both.values()):
            continue
        first = next(iter(both.values()))["bce"][0]
        setting = {c: value(first.record, c) for c in cols}
        out.append((setting, [(s["bce"][0], s["ce"][0]) for s in both.values()]))
    out.sort(key=lambda cell: [sort_key(cell[0][c]) for c in cols])
    return cols, out


def _summary(diffs: list[float], where: str) -> dict[str, Any]:
    low, high = t_interval(diffs, where)
    mean, std = mean_std(diffs)
    return {"diffs": diffs, "n": len(diffs), "mean": mean, "std": std, "low": low, "high": high}


def effects(runs: list[Run], metrics: tuple[str, ...] = COMPARED_METRICS) -> dict[str, Any]:
    """CE − BCE per cell and metric: each (seed, fold)'s difference, their mean, std and 95%
    t-interval; then the pooled row where there are several cells. ``metrics``: those of
    ``metrics`` that some paired run recorded (older records have no NLL); a cell where a run
    lacks one has None there. Returns columns, metrics and rows."""
    cols, cells = pairs(runs)
    paired_runs = [r for _, ps in cells for p in ps for r in p]
    present = [m for m in metrics if any(math.isfinite(r.test(m)) for r in paired_runs)]
    rows: list[dict[str, Any]] = []
    by_repeat: dict[str, dict[tuple, list[float]]] = {m: defaultdict(list) for m in present}
    complete = dict.fromkeys(present, True)
    for setting, ps in cells:
        name = ", ".join(f"{c}={format_value(setting[c])}" for c in cols) or "the one setting"
        row: dict[str, Any] = {"setting": setting, "label": name, "pairs": len(ps)}
        for m in present:
            diffs = [ce.test(m) - bce.test(m) for bce, ce in ps]
            if not all(math.isfinite(d) for d in diffs):
                row[m], complete[m] = None, False
                continue
            row[m] = _summary(diffs, f"CE − BCE test {m} at {name}")
            for (bce, _), d in zip(ps, diffs, strict=True):
                by_repeat[m][(bce.seed, str(bce.fold))].append(d)
        rows.append(row)
    if len(rows) > 1:
        pooled: dict[str, Any] = {"setting": {POOLED: ""}, "label": POOLED, "pooled": True}
        pooled["pairs"] = sum(r["pairs"] for r in rows)
        for m in present:
            means = [float(np.mean(v)) for v in by_repeat[m].values()]
            pooled[m] = _summary(means, f"CE − BCE test {m}, pooled") if complete[m] else None
        rows.append(pooled)
    return {"columns": cols, "metrics": present, "rows": rows}


def favours(metric: str, vertical: bool = False) -> str:
    """Which side of 0 is better for CE: ``← BCE better · CE better →`` for AUROC (``above
    0: CE better`` on a y axis); the other way round for NLL, where lower is better."""
    lower = SCORES[metric].lower
    if vertical:
        return f"{'below' if lower else 'above'} 0: CE better"
    return "← CE better · BCE better →" if lower else "← BCE better · CE better →"


def forest_figure(runs: list[Run], found: dict[str, Any] | None = None):
    """A forest plot of CE − BCE on the test set: a row per cell of the other settings (and
    the pooled row, a diamond), a column per test measure; each seed's difference a dot, the
    mean a square with its 95% t-interval over the seeds. Returns (figure, data)."""
    found = found or effects(runs)
    rows, metrics = found["rows"], found["metrics"]
    width = max(6.0, 2.6 * len(metrics) + 2.4)
    fig, axes = grid(1, len(metrics), width, 1.9 + 0.34 * len(rows), sharey=True)
    ys = np.arange(len(rows))[::-1].astype(float)
    for j, metric in enumerate(metrics):
        panel = axes[0, j]
        panel.axvline(0, color="0.35", lw=0.9, zorder=0)
        for y, row in zip(ys, rows, strict=True):
            d = row[metric]
            if d is None:
                panel.text(0, y, "not recorded", ha="center", va="center", fontsize=7)
                continue
            spread = np.linspace(-0.12, 0.12, d["n"]) if d["n"] > 1 else [0.0]
            panel.scatter(d["diffs"], y + spread, s=12, color=DIFF_COLOR, alpha=0.9, zorder=2)
            if math.isfinite(d["low"]):
                panel.hlines(y, d["low"], d["high"], color="k", lw=1.6, zorder=3)
            marker, size = ("D", 7) if row.get("pooled") else ("s", 5)
            panel.plot(d["mean"], y, marker=marker, ms=size, color="k", zorder=4)
        if rows and rows[-1].get("pooled"):
            panel.axhline(0.5, color="0.6", lw=0.6)
        panel.set_xlabel(f"CE − BCE, test {PANEL_TITLES[metric]}\n{favours(metric)}", fontsize=9)
        panel.grid(alpha=0.3, axis="x")
        panel.xaxis.set_major_locator(MaxNLocator(nbins=5))
        panel.set_ylim(-0.6, len(rows) - 0.4)
    axes[0, 0].set_yticks(ys, [r["label"] for r in rows], fontsize=8)
    handles = [
        Line2D([], [], ls="", marker="o", ms=4, color=DIFF_COLOR, label="each seed"),
        Line2D([], [], color="k", marker="s", ms=5, lw=1.6, label="mean, 95% t-interval"),
    ]
    if rows and rows[-1].get("pooled"):
        handles.append(Line2D([], [], ls="", marker="D", color="k", label="pooled over cells"))
    legend(fig, handles, {})
    what = "CE − BCE on the test set, paired by seed at equal settings"
    data = {**found, "title": title_text(what, runs, width)}
    fig.suptitle(data["title"], fontsize=10)
    return fig, data


def _fit(panel, values: list[float]) -> None:
    """Y limits around the seeds' differences, their mean and 0, with a margin: a first
    epoch's t-band over two seeds (12.7 standard errors) would flatten every later epoch;
    where the band runs past the limits it is cut, not hidden."""
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    pad = 0.08 * (high - low) or 0.01
    panel.set_ylim(low - pad, high + pad)


def _slots(members: list[Run]) -> list[tuple[Run, Run]]:
    """(BCE, CE) pairs by seed and fold among one panel's runs (duplicates: no pair)."""
    slots: dict[tuple, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in members:
        slots[(r.seed, str(r.fold))][r.config["loss"]].append(r)
    return [
        (s["bce"][0], s["ce"][0])
        for _, s in sorted(slots.items())
        if len(s["bce"]) == 1 and len(s["ce"]) == 1
    ]


def difference_curves(ps: list[tuple[Run, Run]], tag: str) -> dict[str, Any]:
    """CE − BCE of one curve per epoch over the pairs: the epochs every pair has, each pair's
    differences, their mean and 95% t-interval per epoch."""
    series = []
    for bce, ce in ps:
        b, c = dict(bce.curves.get(tag, [])), dict(ce.curves.get(tag, []))
        series.append({e: c[e] - b[e] for e in set(b) & set(c) if math.isfinite(c[e] - b[e])})
    series = [s for s in series if s]
    if not series:
        return {}
    epochs = sorted(set.intersection(*(set(s) for s in series)))
    per = [[s[e] for s in series] for e in epochs]
    bounds = [
        t_interval(v, f"CE − BCE {tag} at epoch {e}") for v, e in zip(per, epochs, strict=True)
    ]
    return {
        "epochs": epochs,
        "seeds": [[s[e] for e in epochs] for s in series],
        "mean": [float(np.mean(v)) for v in per],
        "low": [lo for lo, _ in bounds],
        "high": [hi for _, hi in bounds],
        "n": len(series),
    }


def difference_figure(runs: list[Run]):
    """CE − BCE per epoch, paired by seed: a row per curve (train/val NLL and accuracy, those
    recorded), a column per lr (``report.panels.layout``); each seed's difference thin (line
    style = seed), the mean thick with its 95% t-interval over the seeds as a band. Each
    panel has its own y scale, centred on nothing but its data and 0. Returns (figure, data)."""
    shown = layout(_heads(runs), "loss", "curves")
    tags = [t for t in CURVES if any(r.curves.get(t) for r in shown.runs)]
    seeds, ncols = seed_styles(shown.runs), max(1, len(shown.panels))
    width = max(6.0, 2.6 * ncols + 1.0)
    fig, axes = grid(max(1, len(tags)), ncols, width, 1.9 * max(1, len(tags)) + 1.6, sharex=True)
    data: dict[str, Any] = {"columns": [], "panels": {}, "curves": tags}
    for j, (facet_value, members) in enumerate(shown.panels):
        column = shown.panel_label(facet_value)
        data["columns"].append(column)
        data["panels"][column] = {}
        ps = _slots(members)
        for i, tag in enumerate(tags):
            panel, d = axes[i, j], difference_curves(ps, tag)
            data["panels"][column][tag] = d
            panel.axhline(0, color="0.35", lw=0.9)
            if d:
                for (bce, _), s in zip(ps, d["seeds"], strict=False):
                    panel.plot(d["epochs"], s, color=DIFF_COLOR, lw=1.0, ls=seeds[bce.seed])
                panel.fill_between(d["epochs"], d["low"], d["high"], color="0.5", alpha=0.3, lw=0)
                marker = "o" if len(d["epochs"]) < 3 else None
                panel.plot(d["epochs"], d["mean"], color="k", lw=2.0, marker=marker)
                _fit(panel, [0.0, *d["mean"], *(v for s in d["seeds"] for v in s)])
            split, metric = tag.split("/")
            if i == 0:
                panel.set_title(column or "all runs", fontsize=10)
            if j == 0:
                what = f"Δ {split} {PANEL_TITLES[metric]}\n({favours(metric, vertical=True)})"
                panel.set_ylabel(what, fontsize=9)
            panel.grid(alpha=0.3)
            panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[-1, j].set_xlabel("epoch")
    handles = [
        Line2D([], [], color="k", lw=2.0, label="mean CE − BCE"),
        Line2D([], [], color="0.5", alpha=0.5, lw=6, label="95% t-interval over seeds"),
    ]
    legend(fig, handles, seeds)
    for seed_handle in fig.legends[0].legend_handles[len(handles) :]:
        seed_handle.set_color(DIFF_COLOR)
    what = f"CE − BCE per epoch, paired by seed{shown.columns_note}"
    data["title"] = title_text(what, shown, width)
    fig.suptitle(data["title"], fontsize=10)
    return fig, {**data, "held": shown.fixed, "reasons": shown.reasons}
