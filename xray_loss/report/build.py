"""``make_report``: every figure and the summary of a set of runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from xray_loss.report.figures import (
    STUDY_FIGURES,
    budget_figure,
    calibration_figure,
    compare_figure,
    dry_run_note,
    held,
    save,
)
from xray_loss.report.runs import (
    budget_name,
    columns,
    confounds,
    drop_duplicates,
    load_runs,
    slice_for,
)
from xray_loss.report.stats import paired_loss_tests, summary_rows
from xray_loss.report.tables import write_summary

log = logging.getLogger("xray_loss.report")


def make_report(
    paths: list[Path], out: Path, compare: list[str] | None = None, n_boot: int = 1000
) -> dict[str, Any]:
    """Write every figure and the summary; return what was written and the figures' data.

    Each (seed, fold) of a configuration counts once: older duplicates are dropped, named in
    summary.md and logged as a warning."""
    runs, skipped = load_runs(paths)
    for run_dir, status in skipped:
        print(f"skipped {run_dir}: {status}")
    if not runs:
        raise SystemExit(f"No completed runs under {', '.join(map(str, paths))}.")
    runs, dropped = drop_duplicates(runs)
    duplicates = [(r.path, budget_name(r)) for r in dropped]
    if duplicates:
        log.warning(
            "dropped %d duplicate run(s), each the same configuration, seed and fold as a newer "
            "run: %s",
            len(duplicates),
            ", ".join(f"{p}{what}" for p, what in duplicates),
        )
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {
        "figures": {},
        "skipped": skipped,
        "duplicates": duplicates,
        "runs": len(runs),
    }
    jobs = dict(STUDY_FIGURES)
    for axis in compare or []:
        jobs[f"compare_{axis}"] = (axis, {}, "curves")
    present = columns([r.record for r in runs])
    for name, (axis, prefer, kind) in jobs.items():
        if kind == "budgets" and axis in present:
            fig, data = budget_figure(runs, prefer)
        elif kind == "curves" and axis in present:
            fig, data = compare_figure(runs, axis, prefer)
        else:
            continue
        written["figures"][name] = {"files": save(fig, out, name), "data": data}
    loss_runs, _ = slice_for(runs, "loss", STUDY_FIGURES["fig1_loss_compare"][1])
    fig, data = calibration_figure(loss_runs)
    written["figures"]["calibration"] = {"files": save(fig, out, "calibration"), "data": data}
    cols, rows = summary_rows(runs, n_boot)
    tests = paired_loss_tests(runs)
    write_summary(
        out,
        cols,
        rows,
        tests,
        skipped,
        fixed=held(runs, ""),
        note=dry_run_note(runs),
        confounded=confounds([r.record for r in runs]),
        duplicates=duplicates,
    )
    written.update(summary=rows, tests=tests, columns=cols)
    print(
        f"{len(runs)} run(s); wrote {len(written['figures'])} figure(s), summary.md and "
        f"summary.csv to {out}"
    )
    return written
