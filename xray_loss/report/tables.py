"""summary.csv and summary.md: one row per configuration, then BCE vs CE at equal settings."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from xray_loss.metrics import METRICS
from xray_loss.report.runs import format_value

TABLE = [m for m in METRICS if m != "loss"]


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return "" if v is None else str(v)


def _ci_unit_sentence(rows: list[dict[str, Any]]) -> str:
    units = {r.get("auroc_ci_unit") for r in rows} - {""}
    if units == {"patients"}:
        return "95% bootstrap CI resampling test patients (several images per patient)"
    if units == {"images"}:
        return "95% bootstrap CI resampling test images (the data source names no patients)"
    return "95% bootstrap CI resampling patients where known, images elsewhere (column unit)"


def _pm(mean: float, std: float) -> str:
    """``0.912 ± 0.034``; ``0.912 ± n/a`` for one repeat (its std is undefined); "" for none."""
    if math.isnan(mean):
        return ""
    return f"{mean:.3f} ± " + ("n/a" if math.isnan(std) else f"{std:.3f}")


def _names(keys: list[str]) -> str:
    keys = [f"`{k}`" for k in keys]
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


def _time_stopped(row: dict[str, Any]) -> str:
    """``1 (57 epochs)``: how many repeats ``max_time`` stopped, and the epochs they trained."""
    if not row.get("stopped_by_max_time"):
        return ""
    trained = sorted(set(row.get("max_time_epochs") or []))
    span = f"{trained[0]}–{trained[-1]}" if len(trained) > 1 else "".join(map(str, trained))
    return f"{row['stopped_by_max_time']}" + (f" ({span} epochs)" if span else "")


def _header(
    rows: list[dict[str, Any]],
    fixed: dict[str, Any],
    note: str,
    confounded: dict[str, list[str]],
    duplicates: list[tuple[Path, str]],
) -> list[str]:
    """What the reader must know before the table: dry run, fixed settings, confounds,
    duplicates dropped, then what the numbers are."""
    lines = ["# Summary", ""]
    if note:
        lines += [
            f"**{note[0].upper() + note[1:]}**: epochs were scaled down, so these numbers "
            "check the plumbing, not the science.",
            "",
        ]
    if fixed:
        lines += [
            "Fixed in every run: "
            + ", ".join(f"{k}={format_value(v)}" for k, v in fixed.items())
            + ".",
            "",
        ]
    by_columns: dict[tuple, list[str]] = {}
    for key, follows in confounded.items():
        by_columns.setdefault(tuple(follows), []).append(key)
    for follows, keys in by_columns.items():
        lines += [
            f"**Confounded**: {_names(keys)} differ between configurations only together with "
            f"{_names(list(follows))} (shown as columns): a difference between those rows is "
            f"not due to {_names(list(follows))} alone.",
            "",
        ]
    if duplicates:
        lines += [
            f"**{len(duplicates)} duplicate run(s) dropped**: each repeats the configuration, "
            "seed and fold of a newer run, which alone is counted (listed at the end).",
            "",
        ]
    lines += [
        f"Test metrics as mean ± std over the n repeats (seeds, folds) of each configuration "
        f"(n/a: one repeat, no std); AUROC with a {_ci_unit_sentence(rows)}. **Bold**: the best "
        "configuration by mean validation AUROC (choosing by test would be optimistic).",
        "",
    ]
    return lines


def _table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    """One line per configuration; a column of time-stopped runs, with its footnote, where
    the trainer's ``max_time`` stopped any."""
    stopped = any(row.get("stopped_by_max_time") for row in rows)
    header = [*cols, "n", "accuracy", "AUROC [95% CI]", "F1", "sensitivity", "specificity"]
    header += ["ECE", "val AUROC"] + (["stopped by max_time †"] if stopped else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [format_value(row.get(c)) for c in cols] + [str(row["n"])]
        cells += [
            _pm(row["acc_mean"], row["acc_std"]),
            f"{_pm(row['auroc_mean'], row['auroc_std'])} "
            f"[{_fmt(row['auroc_ci_low'], 3)}, {_fmt(row['auroc_ci_high'], 3)}]",
        ]
        cells += [
            _pm(row[f"{m}_mean"], row[f"{m}_std"]) for m in ("f1", "sensitivity", "specificity")
        ]
        cells += [_fmt(row["ece_mean"], 3), _fmt(row["val_auroc_mean"], 3)]
        cells += [_time_stopped(row)] if stopped else []
        if row.get("best"):
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if stopped:
        lines += [
            "",
            "† Repeats that the trainer's `max_time` stopped before their nominal epochs, with "
            "the epochs they trained: their numbers are of shorter training than the epochs "
            "column says.",
        ]
    return lines


def _tests(tests: list[dict[str, Any]]) -> list[str]:
    if not tests:
        return []
    lines = [
        "",
        "## BCE vs CE at equal settings",
        "",
        "Test AUROC difference CE − BCE, paired by seed (and fold) at otherwise equal "
        "settings; two-sided sign-flip permutation test: is the difference larger than seed "
        "noise? The pooled row first averages each seed's differences over the settings "
        "(differences sharing a seed are not independent).",
        "",
        "| setting | pairs | mean diff | std | p | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for t in tests:
        setting = ", ".join(
            f"{k}={format_value(v)}" if v != "" else k for k, v in t["setting"].items()
        )
        if not t["n"]:
            lines.append(f"| {setting or '-'} | 0 | | | | {t['verdict']} |")
            continue
        lines.append(
            f"| {setting or '-'} | {t['pairs']} | {t['mean_diff']:+.4f} | "
            f"{_fmt(t['std_diff'], 4) or 'n/a'} | {t['p']:.3f} | {t['verdict']} |"
        )
    return lines


def write_summary(
    out: Path,
    cols: list[str],
    rows: list[dict[str, Any]],
    tests: list[dict[str, Any]],
    skipped: list[tuple[Path, str]],
    *,
    fixed: dict[str, Any] | None = None,
    note: str = "",
    confounded: dict[str, list[str]] | None = None,
    duplicates: list[tuple[Path, str]] | None = None,
) -> None:
    """Write summary.csv (all numbers) and summary.md (the readable table and tests).

    ``fixed``: the settings every run shares, listed first; ``note`` marks a dry run;
    ``confounded``: settings that vary only together with the columns ``cols``
    (``report.runs.confounds``), shown as columns after them and named; ``duplicates``: the
    runs dropped as repeats of newer ones (``report.runs.drop_duplicates``), as (directory,
    which budget of it or "").
    """
    confounded = confounded or {}
    duplicates = duplicates or []
    shown = [*cols, *confounded]
    columns = (
        [*shown, "n"]
        + [f"{m}_{s}" for m in TABLE for s in ("mean", "std")]
        + ["auroc_ci_low", "auroc_ci_high", "auroc_ci_unit", "ece_mean", "val_auroc_mean", "best"]
        + ["stopped_by_max_time"]
    )
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k), 6) for k in columns})
    lines = _header(rows, fixed or {}, note, confounded, duplicates)
    lines += _table(rows, shown) + _tests(tests)
    if skipped:
        lines += ["", "## Skipped runs (not completed)", ""]
        lines += [f"- `{p}`: {status}" for p, status in skipped]
    if duplicates:
        lines += ["", "## Duplicates dropped (a newer run of their configuration is counted)", ""]
        lines += [f"- `{p}`{what}" for p, what in duplicates]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
