"""``make_report``: every figure and the summary of a set of runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from xray_loss.report.calibration import calibration_figure
from xray_loss.report.effects import difference_figure, effects, forest_figure
from xray_loss.report.figures import compare_figure, save, sweep_figure
from xray_loss.report.paired import paired_loss_tests
from xray_loss.report.panels import STUDY_FIGURES, dry_run_note, held, intervals
from xray_loss.report.runs import budget_name, columns, confounds, drop_duplicates, load_runs
from xray_loss.report.stats import summary_rows
from xray_loss.report.tables import write_summary

log = logging.getLogger("xray_loss.report")


def figure_jobs(compare: list[str], present: list[str]) -> dict[str, tuple[str, str]]:
    """The figures to draw: the study's, where their axis varies, and per ``--compare AXIS``
    the best-checkpoint test metrics against it (``compare_AXIS``), unless a study figure
    already draws that (``fig2_epochs`` for epochs)."""
    jobs = {name: job for name, job in STUDY_FIGURES.items() if job[0] in present}
    drawn = {axis for axis, kind in jobs.values() if kind == "sweep"}
    for axis in compare:
        if axis in present and axis not in drawn:
            jobs[f"compare_{axis}"] = (axis, "sweep")
        elif axis in drawn:
            print(f"--compare {axis}: drawn as fig2_{axis}")
        else:
            print(f"--compare {axis}: {axis} does not vary between these runs")
    return jobs


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
    cols, rows = summary_rows(runs, n_boot)
    ci = (cols, intervals(cols, rows))
    for name, (axis, kind) in figure_jobs(compare or [], columns([r.record for r in runs])).items():
        fig, data = sweep_figure(runs, axis, ci) if kind == "sweep" else compare_figure(runs, axis)
        written["figures"][name] = {"files": save(fig, out, name), "data": data}
    tests = paired_loss_tests(runs)  # first: it names a cell with a NaN difference
    found = effects(runs)
    if found["rows"]:  # the effect itself: CE − BCE per epoch, and per cell on the test set
        drawn = {
            "fig1_difference": difference_figure(runs),
            "fig3_forest": forest_figure(runs, found),
        }
        for name, (fig, data) in drawn.items():
            written["figures"][name] = {"files": save(fig, out, name), "data": data}
    if any(r.labels is not None for r in runs):
        fig, data = calibration_figure(runs)
        written["figures"]["calibration"] = {"files": save(fig, out, "calibration"), "data": data}
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
        effects=found,
    )
    written.update(summary=rows, tests=tests, effects=found, columns=cols)
    print(
        f"{len(runs)} run(s); wrote {len(written['figures'])} figure(s), summary.md and "
        f"summary.csv to {out}"
    )
    return written
