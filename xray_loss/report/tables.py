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


def write_summary(
    out: Path,
    cols: list[str],
    rows: list[dict[str, Any]],
    tests: list[dict[str, Any]],
    skipped: list[tuple[Path, str]],
    fixed: dict[str, Any] | None = None,
    note: str = "",
) -> None:
    """Write summary.csv (all numbers) and summary.md (the readable table and tests).

    ``fixed``: the settings every run shares, listed first; ``note`` marks a dry run.
    """
    columns = (
        [*cols, "n"]
        + [f"{m}_{s}" for m in TABLE for s in ("mean", "std")]
        + ["auroc_ci_low", "auroc_ci_high", "auroc_ci_unit", "ece_mean", "val_auroc_mean", "best"]
    )
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k), 6) for k in columns})
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
    lines += [
        f"Test metrics as mean ± std over the n repeats (seeds, folds) of each configuration; "
        f"AUROC with a {_ci_unit_sentence(rows)}. **Bold**: the best configuration by mean "
        "validation AUROC (choosing by test would be optimistic).",
        "",
    ]
    header = [*cols, "n", "accuracy", "AUROC [95% CI]", "F1", "sensitivity", "specificity"]
    header += ["ECE", "val AUROC"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [format_value(row[c]) for c in cols] + [str(row["n"])]
        cells += [
            f"{row['acc_mean']:.3f} ± {row['acc_std']:.3f}",
            f"{row['auroc_mean']:.3f} ± {row['auroc_std']:.3f} "
            f"[{_fmt(row['auroc_ci_low'], 3)}, {_fmt(row['auroc_ci_high'], 3)}]",
        ]
        cells += [
            f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}"
            for m in ("f1", "sensitivity", "specificity")
        ]
        cells += [_fmt(row["ece_mean"], 3), _fmt(row["val_auroc_mean"], 3)]
        if row.get("best"):
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if tests:
        lines += [
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
                f"{t['std_diff']:.4f} | {t['p']:.3f} | {t['verdict']} |"
            )
    if skipped:
        lines += ["", "## Skipped runs (not completed)", ""]
        lines += [f"- `{p}`: {status}" for p, status in skipped]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
