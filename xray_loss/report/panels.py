"""What each figure shows: which runs go in which panel, what is held and how titles say it,
and the colours.

A figure compares one axis (its series) in small multiples: one column per value of another
varying setting (the *facet*), so BCE and CE are compared at every learning rate, not at the
first one, and every figure shows both heads where both ran. A setting that is neither compared
nor a facet is held: ``epochs`` at its longest where curves are drawn (runs of fewer epochs at a
constant lr are its first epochs), any other at the value of the configuration that is best on
validation (mean best val AUROC, as summary.md's bold row). Titles say which, and why.

Colours: the heads in a colour-blind-safe (Okabe-Ito) set, BCE blue and CE vermillion, the
matched controls dashed in a lighter hue of their family so the head they train like shows
through; values of any other axis along a sequential map (viridis), which never repeats; seeds
by line style, not by colour.
"""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps

from xray_loss.identity import axis_names
from xray_loss.report.runs import (
    Run,
    configurations,
    confounds,
    format_value,
    same,
    sort_key,
    value,
)

# name -> (the axis compared, the kind of figure)
STUDY_FIGURES: dict[str, tuple[str, str]] = {
    "fig1_loss_compare": ("loss", "curves"),
    "fig2_epochs": ("epochs", "sweep"),
    "fig2_lr": ("lr", "curves"),
}
HEAD_COLORS = {
    "bce": "#0072B2",  # blue
    "ce": "#D55E00",  # vermillion
    "focal": "#009E73",  # bluish green
    "bce_matched": "#56B4E9",  # sky blue: trains like CE
    "ce_matched": "#E69F00",  # orange: trains like BCE
}
OTHER_COLORS = ("#CC79A7", "#000000", "#F0E442")  # the rest of Okabe-Ito
SEED_STYLES = ("-", "--", ":", "-.")


def label(axis: str, v: Any) -> str:
    if axis == "lr":
        return f"lr={float(v):g}"
    if axis == "loss":
        return str(v).upper()
    return f"{axis}={format_value(v)}" if axis else ""


def series_styles(axis: str, values: list[Any]) -> dict[str, dict[str, Any]]:
    """Colour and line style per value of the compared axis (keys: ``str(value)``)."""
    if axis == "loss":
        out, spare = {}, iter(OTHER_COLORS * (1 + len(values)))
        for v in values:
            color = HEAD_COLORS.get(str(v)) or next(spare)
            out[str(v)] = {"color": color, "ls": "--" if str(v).endswith("_matched") else "-"}
        return out
    cmap = colormaps["viridis"]  # stops short of its pale yellow end, which white swallows
    stops = np.linspace(0.0, 0.7, len(values)) if len(values) > 1 else [0.0]
    pairs = zip(values, stops, strict=True)
    return {str(v): {"color": cmap(float(s)), "ls": "-"} for v, s in pairs}


def seed_styles(runs: list[Run]) -> dict[int, str]:
    """A line style per seed (the seeds' colour is their series')."""
    seeds = sorted({r.seed for r in runs})
    return {s: SEED_STYLES[i % len(SEED_STYLES)] for i, s in enumerate(seeds)}


def best_on_validation(runs: list[Run]) -> dict[str, Any]:
    """The column values of the configuration with the highest mean best val AUROC."""
    _, groups = configurations(runs, record_of=lambda r: r.record)
    best, score = {}, -math.inf
    for head, members in groups:
        vals = [float(r.record.get("best_val_auroc") or math.nan) for r in members]
        vals = [v for v in vals if not math.isnan(v)]
        if vals and float(np.mean(vals)) > score:
            best, score = head, float(np.mean(vals))
    return best or (groups[0][0] if groups else {})


@dataclass
class Layout:
    """What a figure shows: series along ``axis``, one panel per value of ``facet``."""

    axis: str
    facet: str | None
    panels: list[tuple[Any, list[Run]]]  # (facet value, its runs), in numeric order
    fixed: dict[str, Any]  # settings held, and at what
    reasons: dict[str, str]  # why each is held where it is

    @property
    def runs(self) -> list[Run]:
        return [r for _, members in self.panels for r in members]

    def panel_label(self, v: Any) -> str:
        return label(self.facet or "", v)

    @property
    def columns_note(self) -> str:
        """``, one column per lr``: what the panels split on ("" for one panel)."""
        if not self.facet:
            return ""
        name = {"loss": "head", "lr": "lr"}.get(self.facet, f"value of {self.facet}")
        return f", one column per {name}"


def prefixes(runs: list[Run]) -> bool:
    """Whether runs of fewer epochs are the first epochs of the longer ones: no scheduler,
    and nothing else changes with the epochs (``report.runs.confounds``)."""
    scheduled = any(str(r.config.get("scheduler", "none")) != "none" for r in runs)
    confounded = any("epochs" in f for f in confounds([r.record for r in runs]).values())
    return not scheduled and not confounded


def layout(runs: list[Run], axis: str, kind: str) -> Layout:
    """Pick a figure's panels. ``kind``: ``curves`` (per-epoch curves, colour = ``axis``),
    ``sweep`` (metrics against ``axis``, colour = the head) or ``calibration`` (colour = the
    head). The facet is ``loss`` for curves of another axis, else the first other varying
    column (``lr`` on the study's grid); ``epochs`` is held at its longest where curves are
    drawn, other settings at the configuration best on validation."""
    cols = configurations(runs, record_of=lambda r: r.record)[0]
    series = {axis, "loss"} if kind != "curves" else {axis}
    if kind == "curves" and axis != "loss" and "loss" in cols:
        facet = "loss"
    else:
        skip = series | ({"epochs"} if kind != "sweep" else set())
        facet = next((c for c in cols if c not in skip), None)
    best = best_on_validation(runs)
    fixed, reasons = {}, {}
    for c in cols:
        if c in series or c == facet:
            continue
        if c == "epochs" and kind != "sweep":
            fixed[c] = max((value(r.record, c) for r in runs), key=sort_key)
            reasons[c] = "longest" + (
                "; runs of fewer epochs are its first epochs" * prefixes(runs)
            )
        else:
            fixed[c], reasons[c] = best.get(c), "best on validation"
    kept = [r for r in runs if all(same(value(r.record, k), v) for k, v in fixed.items())]
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in kept:
        groups[str(value(r.record, facet)) if facet else ""].append(r)
    panels = [(value(m[0].record, facet) if facet else "", m) for m in groups.values()]
    panels.sort(key=lambda p: sort_key(p[0]))
    return Layout(axis, facet, panels, fixed, reasons)


def held(runs: list[Run], axis: str) -> dict[str, Any]:
    """The named settings every one of these runs shares (what a title must state)."""
    out = {}
    for a in axis_names():
        if a in (axis, "seed", "max_epochs"):
            continue
        values = {str(value(r.record, a)) for r in runs}
        if len(values) == 1:
            out[a] = value(runs[0].record, a)
    return out


def dry_run_note(runs: list[Run]) -> str:
    """``dry run: 10/30/100 epochs nominal, 1/2/5 trained``, or nothing."""
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


def heads_text(heads: list[Any]) -> str:
    """``BCE vs CE``; ``BCE, CE and FOCAL`` where a third head ran: a title names every head
    its figure draws, not two of them."""
    names = [label("loss", h) for h in heads]
    if len(names) <= 2:
        return " vs ".join(names) or "all runs"
    return ", ".join(names[:-1]) + " and " + names[-1]


def title_text(what: str, shown: Layout | list[Run], width_in: float) -> str:
    """The figure's title: what it shows, then only what a reader could not guess: the
    settings held at a value the report chose (with the reason), confounds and a dry run,
    wrapped to the figure's width. Settings every run shares are summary.md's "Fixed in every
    run" line: repeated in each title they buried what the figure shows."""
    runs = shown.runs if isinstance(shown, Layout) else shown
    reasons = shown.reasons if isinstance(shown, Layout) else {}
    parts = [f"{k}={format_value(value(runs[0].record, k))} ({why})" for k, why in reasons.items()]
    notes = [n for n in (confound_note(runs), dry_run_note(runs)) if n]
    chars = max(40, int(width_in * 13))
    lines = [what, "held: " + " · ".join(parts) if parts else "", *notes]
    return "\n".join(textwrap.fill(line, chars) for line in lines if line)


def interval_key(cols: list[str], record: dict[str, Any]) -> tuple:
    """A configuration's key in summary rows' columns (to look up its bootstrap CI)."""
    return tuple(format_value(value(record, c)) for c in cols)


def intervals(cols: list[str], rows: list[dict[str, Any]]) -> dict[tuple, tuple[float, float]]:
    """Each configuration's test-sampling AUROC interval, by :func:`interval_key`."""
    return {
        tuple(format_value(row.get(c)) for c in cols): (row["auroc_ci_low"], row["auroc_ci_high"])
        for row in rows
    }
