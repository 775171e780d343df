"""summary.csv and summary.md: one row per configuration, then BCE vs CE at equal settings."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from xray_loss.metrics import SCORES
from xray_loss.report.runs import format_value

UNDEFINED = "-"  # summary.md's mark for a number that is undefined (one repeat's std) or absent


LEAST, MOST = 3, 6  # summary.md's decimals: at least 3, more where numbers need them
# numbers closer than this are one number: the runs log float32 metrics, so the same share of
# images can come back as 0.97131383 and 0.97131381
RESOLUTION = 1e-6


def _csv(v: Any) -> str:
    """A CSV cell: a float in full (its shortest exact form); NaN and None empty."""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return "" if v is None else str(v)


def _fmt(v: Any, digits: int = LEAST) -> str:
    """A number at ``digits`` decimals; NaN and None are empty."""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return "" if v is None else str(v)


def _md(v: Any, digits: int = LEAST) -> str:
    """A summary.md cell: NaN and None are :data:`UNDEFINED`."""
    return _fmt(v, digits) or UNDEFINED


def decimals(
    values: list[float], pairs: list[tuple[float, float]] = (), spreads: list[float] = ()
) -> int:
    """The decimals a column needs (at least :data:`LEAST`, at most :data:`MOST`): the
    fewest at which different ``values`` never print equal, nor the two ends of a range or
    interval in ``pairs``, and no nonzero value or spread (a std) prints as zero; numbers
    within :data:`RESOLUTION` count as equal. AUROCs of 0.9941 and 0.9944 printed at 3
    decimals read "0.994–0.994" and "± 0.000"."""
    finite = sorted(float(v) for v in values if v is not None and math.isfinite(v))
    apart = [*zip(finite, finite[1:], strict=False), *pairs]
    apart = [(a, b) for a, b in apart if math.isfinite(a - b) and abs(a - b) > RESOLUTION]
    small = [v for v in [*finite, *spreads] if math.isfinite(v) and abs(v) > RESOLUTION]
    for d in range(LEAST, MOST):
        distinct = all(f"{a:.{d}f}" != f"{b:.{d}f}" for a, b in apart)
        if distinct and all(round(v, d) for v in small):
            return d
    return MOST


def _ci_unit(rows: list[dict[str, Any]]) -> str:
    units = {r.get("auroc_ci_unit") for r in rows} - {""}
    if units == {"patients"}:
        return "test patients (all images of a patient together)"
    if units == {"images"}:
        return "test images (the data source names no patients)"
    return "test patients where known, test images elsewhere"


def _pm(mean: float, std: float, digits: int = LEAST) -> str:
    """``0.912 ± 0.034``; ``0.912 ± -`` for one repeat (its std is undefined); "-" for none."""
    if math.isnan(mean):
        return UNDEFINED
    return f"{mean:.{digits}f} ± {_md(std, digits)}"


def _range(row: dict[str, Any], digits: int = LEAST) -> str:
    """``0.412–0.640``: the lowest and highest AUROC of the repeats ("-" for one repeat)."""
    low, high = row.get("auroc_seed_min", math.nan), row.get("auroc_seed_max", math.nan)
    if row.get("n", 0) < 2 or math.isnan(low):
        return UNDEFINED
    return f"{low:.{digits}f}–{high:.{digits}f}"


def _column_decimals(rows: list[dict[str, Any]], name: str) -> int:
    """The decimals of a score's column (:func:`decimals`): its means, stds, and for AUROC
    the seed ranges and the test-sampling intervals."""
    pairs = []
    if name == "auroc":
        for r in rows:
            pairs += [(r.get("auroc_seed_min", math.nan), r.get("auroc_seed_max", math.nan))]
            pairs += [(r.get("auroc_ci_low", math.nan), r.get("auroc_ci_high", math.nan))]
    means = [r.get(f"{name}_mean", math.nan) for r in rows]
    return decimals(means, pairs, [r.get(f"{name}_std", math.nan) for r in rows])


def _test_size(images: Any, pneumonia: Any, patients: Any) -> str:
    """``500 images (365 pneumonia, 135 normal)``, ``782 images of 624 patients (...)``."""
    if images is None:
        return UNDEFINED
    of = f" of {patients} patients" if patients is not None else ""
    if pneumonia is None:
        return f"{images} images{of}"
    return f"{images} images{of} ({pneumonia} pneumonia, {images - pneumonia} normal)"


def _test_sentence(rows: list[dict[str, Any]]) -> tuple[str, bool]:
    """What summary.md says of the test set, and whether rows differ (a column then)."""
    sizes = {(r.get("test_images"), r.get("test_pneumonia"), r.get("test_patients")) for r in rows}
    if len(sizes) == 1:
        size = _test_size(*sizes.pop())
        if size == UNDEFINED:
            return "Test set: no test predictions were found.", False
        return f"Test set: {size} in every run.", False
    return "Test sets differ between configurations: see the column test n.", True


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
    sentence, _ = _test_sentence(rows)
    lines += [
        f"{sentence} How to read the numbers:",
        "",
        "- **mean ± std**: over the n repeats (seeds, folds) of a configuration: how much "
        f"training randomness moves the result. `{UNDEFINED}`: undefined or absent (one "
        "repeat has no std). Each column has the decimals its numbers need to tell them "
        "apart (summary.csv has them in full).",
        "- **NLL** and **Brier**: of P(pneumonia), the same measures for every head (lower "
        "is better): compare heads on them, never on each head's own training objective.",
        "- **AUROC seed range**: the lowest and highest test AUROC among the n repeats.",
        "- **AUROC 95% CI, test sampling**: bootstrap percentile interval of the mean test "
        f"AUROC, resampling {_ci_unit(rows)}, with every run's model fixed: how much another "
        "test sample of the same size would move it. It leaves seeds out, so it can be "
        "narrower than the seed range: the two answer different questions.",
        "- **ECE**: expected calibration error of each run over 10 equal-width bins of "
        "P(pneumonia), then mean ± std over the repeats; the calibration figure shows the "
        "same numbers.",
        "- **Bold**: the best configuration by mean validation AUROC (choosing by test would "
        "be optimistic).",
        "",
    ]
    return lines


def _table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    """One line per configuration; the test set's size where it differs between rows; a
    column of time-stopped runs, with its footnote, where the trainer's ``max_time`` stopped
    any."""
    stopped = any(row.get("stopped_by_max_time") for row in rows)
    _, sizes_differ = _test_sentence(rows)
    header = [*cols, "n"] + (["test n"] if sizes_differ else [])
    for name, score in SCORES.items():  # AUROC with its seed range and test-sampling CI
        header += [score.label or name]
        header += ["AUROC seed range", "AUROC 95% CI, test sampling"] * (name == "auroc")
    header += ["ECE", "val AUROC"]
    header += ["stopped by max_time †"] if stopped else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    digits = {name: _column_decimals(rows, name) for name in (*SCORES, "ece")}
    digits["val"] = decimals([r["val_auroc_mean"] for r in rows])
    for row in rows:
        cells = [format_value(row.get(c)) for c in cols] + [str(row["n"])]
        if sizes_differ:
            cells.append(_test_size(row.get("test_images"), None, row.get("test_patients")))
        d = digits["auroc"]
        ci = f"[{_md(row['auroc_ci_low'], d)}, {_md(row['auroc_ci_high'], d)}]"
        for name in SCORES:
            cells.append(_pm(row[f"{name}_mean"], row[f"{name}_std"], digits[name]))
            if name == "auroc":
                cells += [_range(row, d), UNDEFINED if math.isnan(row["auroc_ci_low"]) else ci]
        ece = _pm(row["ece_mean"], row.get("ece_std", math.nan), digits["ece"])
        cells += [ece, _md(row["val_auroc_mean"], digits["val"])]
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


def _interval(d: dict[str, Any] | None, digits: int) -> str:
    """``-0.0127 [-0.0310, +0.0056]``: a mean CE − BCE difference and its 95% t-interval."""
    if d is None:
        return UNDEFINED
    if math.isnan(d["low"]):
        return f"{d['mean']:+.{digits}f} (1 seed: no interval)"
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def _tests(tests: list[dict[str, Any]], found: dict[str, Any] | None = None) -> list[str]:
    """BCE vs CE per cell: the CE − BCE difference of each test measure with its interval
    (``report.effects``, the forest plot's numbers), then the sign-flip test of the AUROC
    difference (``report.paired``)."""
    if not tests:
        return []
    found = found or {"metrics": [], "rows": []}
    by_label = {r["label"]: r for r in found["rows"]}
    metrics = found["metrics"]
    digits = {}
    for m in metrics:
        shown = [r[m] for r in found["rows"] if r.get(m)]
        means = [d["mean"] for d in shown]
        ends = [(d["low"], d["high"]) for d in shown]
        digits[m] = max(4, decimals(means, ends, [v for lo_hi in ends for v in lo_hi]))
    heads = " | ".join(f"CE − BCE test {SCORES[m].label or m} [95% CI]" for m in metrics)
    lines = [
        "",
        "## BCE vs CE at equal settings",
        "",
        "CE − BCE on the test set, paired by seed (and fold) at otherwise equal settings: the "
        "mean difference over the seeds and its 95% t-interval (fig3_forest draws them, with "
        "each seed). An interval that excludes 0 favours one head at that setting: CE where "
        "an AUROC or accuracy difference is above 0 or an NLL difference below 0. p: two-sided "
        "sign-flip permutation test of the AUROC difference; the verdict uses it "
        "Holm-adjusted over the settings. The pooled row first averages each seed's "
        "differences over the settings (differences sharing a seed are not independent).",
        "",
        f"| setting | pairs | {heads} | p (AUROC) | verdict |".replace("|  |", "|"),
        "|" + "---|" * (4 + len(metrics)),
    ]
    for t in tests:
        name = ", ".join(
            f"{k}={format_value(v)}" if v != "" else k for k, v in t["setting"].items()
        )
        row = by_label.get(name or "the one setting", {})
        if not t["n"]:
            empty = " | ".join(UNDEFINED for _ in metrics)
            lines.append(f"| {name or '-'} | 0 | {empty} | - | {t['verdict']} |")
            continue
        diffs = " | ".join(_interval(row.get(m), digits[m]) for m in metrics)
        lines.append(f"| {name or '-'} | {t['pairs']} | {diffs} | {t['p']:.3f} | {t['verdict']} |")
    return [line.replace("|  |", "|") for line in lines]


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
    effects: dict[str, Any] | None = None,
) -> None:
    """Write summary.csv (all numbers, in full) and summary.md (the readable table and tests).

    ``fixed``: the settings every run shares, listed first; ``note`` marks a dry run;
    ``confounded``: settings that vary only together with the columns ``cols``
    (``report.runs.confounds``), shown as columns after them and named; ``duplicates``: the
    runs dropped as repeats of newer ones (``report.runs.drop_duplicates``), as (directory,
    which budget of it or ""); ``effects``: CE − BCE per cell (``report.effects.effects``).
    """
    confounded = confounded or {}
    duplicates = duplicates or []
    shown = [*cols, *confounded]
    columns = (
        [*shown, "n"]
        + [f"{m}_{s}" for m in SCORES for s in ("mean", "std")]
        + ["auroc_seed_min", "auroc_seed_max", "auroc_ci_low", "auroc_ci_high", "auroc_ci_unit"]
        + ["ece_mean", "ece_std", "val_auroc_mean", "best", "stopped_by_max_time"]
        + ["test_images", "test_pneumonia", "test_patients"]
    )
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv(row.get(k)) for k in columns})
    lines = _header(rows, fixed or {}, note, confounded, duplicates)
    lines += _table(rows, shown) + _tests(tests, effects)
    if skipped:
        lines += ["", "## Skipped runs (not completed)", ""]
        lines += [f"- `{p}`: {status}" for p, status in skipped]
    if duplicates:
        lines += ["", "## Duplicates dropped (a newer run of their configuration is counted)", ""]
        lines += [f"- `{p}`{what}" for p, what in duplicates]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
