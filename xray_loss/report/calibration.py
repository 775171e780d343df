"""The reliability diagram: per head, on the test split, one column per value of the facet
(``lr`` on the study's grid, ``report.panels.layout``), with the images in each bin drawn
below it.

Its ECE is the table's (``report.stats.ece_over_runs``: the mean over the runs of each run's
ECE), computed on the same bins as the diagram (``report.stats.reliability``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xray_loss.report.figures import by_value, grid, legend, values_of
from xray_loss.report.panels import label, layout, seed_styles, series_styles, title_text
from xray_loss.report.runs import Run
from xray_loss.report.stats import ECE_BINS, ece_over_runs, reliability


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± " + ("-" if np.isnan(std) else f"{std:.3f}")


def calibration_figure(runs: list[Run], bins: int = ECE_BINS):
    """Top: observed pneumonia rate against mean P(pneumonia) per bin, each run thin (line
    style = seed), the runs' predictions pooled thick (point area: the bin's share of the
    images); the legend has each head's ECE as mean
    ± std over its runs. Bottom: images per bin, mean per run (log scale). Returns (figure,
    data): per column and head the pooled bins, their counts and the ECE."""
    runs = [r for r in runs if r.labels is not None]
    shown = layout(runs, "loss", "calibration")
    heads = values_of(shown.runs, "loss")
    styles, seeds = series_styles("loss", list(heads.values())), seed_styles(shown.runs)
    ncols = max(1, len(shown.panels))
    fig, axes = grid(2, ncols, max(5.6, 3.0 * ncols + 0.8), 6.4, height_ratios=[3, 1.3])
    for row in axes:
        for panel in row[1:]:
            panel.sharey(row[0])
    centers = (np.arange(bins) + 0.5) / bins
    width = 0.8 / bins / max(1, len(heads))
    data: dict[str, Any] = {"columns": [], "panels": {}, "bins": bins}
    for j, (facet_value, members) in enumerate(shown.panels):
        column = shown.panel_label(facet_value)
        data["columns"].append(column)
        top, bottom = axes[0, j], axes[1, j]
        top.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        out = {}
        groups = by_value(members, "loss")
        for k, (key, head) in enumerate(heads.items()):
            group, style = groups.get(key, []), styles[key]
            if not group:
                continue
            for r in group:
                per_run = reliability(r.labels, r.probs, bins)
                full = per_run["count"] > 0
                top.plot(
                    per_run["confidence"][full],
                    per_run["frequency"][full],
                    color=style["color"],
                    lw=0.7,
                    alpha=0.45,
                    ls=seeds[r.seed],
                )
            pooled = reliability(
                np.concatenate([r.labels for r in group]),
                np.concatenate([r.probs for r in group]),
                bins,
            )
            full = pooled["count"] > 0
            ece, ece_std, n = ece_over_runs(group, bins)
            counts = pooled["count"] / len(group)
            x, y = pooled["confidence"][full], pooled["frequency"][full]
            top.plot(x, y, lw=1.8, **style, label=f"{label('loss', head)}: ECE {_pm(ece, ece_std)}")
            share = counts[full] / max(1.0, counts.sum())  # a point's area: its share of images
            top.scatter(x, y, s=6 + 120 * share, color=style["color"], zorder=3)
            shift = (k - (len(heads) - 1) / 2) * width
            bottom.bar(centers + shift, counts, width=width, color=style["color"], alpha=0.85)
            out[label("loss", head)] = {
                "confidence": pooled["confidence"][full].tolist(),
                "frequency": pooled["frequency"][full].tolist(),
                "counts": counts.tolist(),
                "ece": ece,
                "ece_std": ece_std,
                "runs": n,
                "images": int(np.mean([len(r.labels) for r in group])),
            }
        data["panels"][column] = out
        top.legend(  # above the diagram, which it would hide
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            fontsize=7,
            title=f"{column or 'all runs'}\nECE, mean ± std over runs",
            title_fontsize=8,
            frameon=False,
            alignment="center",
        )
        top.set(xlim=(0, 1), ylim=(-0.02, 1.02))
        top.grid(alpha=0.3)
        bottom.set_yscale("log")
        bottom.set_xlim(0, 1)
        bottom.set_xlabel("predicted P(pneumonia)")
        bottom.grid(alpha=0.3, axis="y")
        if j == 0:
            top.set_ylabel("observed pneumonia rate")
            bottom.set_ylabel("images per bin\n(mean per run)")
    notes = [
        "thick: the runs' predictions pooled, point area = share of images",
        "thin: each run (line style = seed)",
    ]
    legend(fig, [], seeds, notes)
    images = {v["images"] for p in data["panels"].values() for v in p.values()}
    size = f"{images.pop()} test images per run, " if len(images) == 1 else ""
    what = f"Reliability on the test split ({size}{bins} equal-width bins)"
    data["title"] = title_text(what, shown, fig.get_figwidth())
    fig.suptitle(data["title"], fontsize=10)
    return fig, data
