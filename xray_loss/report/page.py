"""The study's results page, written from its runs and report: ``docs/results/<date>-full-grid.md``.

Every number on the page is computed here from the run records (metrics.json, the per-epoch
curves) and the report's summary.csv / summary.md, which are copied beside the page with the
figures and each run's metrics.json; so a rerun of ``make study`` rewrites the page from its own
runs, and ``tests/test_study.py`` checks that the page's table is summary.csv's. The sentences
that judge (differ or not, overfits or not) are chosen by the numbers, never written by hand.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from xray_loss.identity import code_commit
from xray_loss.report.discussion import discussion
from xray_loss.report.findings import cells_of
from xray_loss.report.records import CURVES_CSV, read_curves, write_curves
from xray_loss.report.runs import Run, drop_duplicates, load_runs

FIGURES = ("fig1_loss_compare", "fig2_lr", "fig2_epochs", "calibration")


def provenance(runs: list[Run]) -> dict[str, Any]:
    """When, where and on what the runs ran (from their records and this machine)."""
    records = [r.record for r in runs]
    started = min(r["started"] for r in records)
    finished = max(r.get("finished", r["started"]) for r in records)
    walls = {str(r.path): float(r.record.get("wall_time_s", 0)) for r in runs}  # once per run
    split = _split_sizes(runs[0].path / "split.csv")
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo") if "model name" in line),
        platform.processor() or platform.machine(),
    )
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "started": started,
        "finished": finished,
        "compute_h": sum(walls.values()) / 3600,
        "elapsed_h": (_time(finished) - _time(started)).total_seconds() / 3600,
        "hardware": f"{cpu}, {os.cpu_count()} cores, GPU: {gpu}, torch {torch.__version__}",
        "commit": code_commit() or "unknown (not a git checkout)",
        "run_commits": _commits(runs),
        "split": split,
    }


def _read(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _time(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def _commits(runs: list[Run]) -> str:
    """``7e0ccff (6 runs), not recorded (18 runs)``: the code each run's record names."""
    count: dict[str, int] = defaultdict(int)
    for record in {r.path: r.record for r in runs}.values():
        count[record.get("commit") or "not recorded (older records)"] += 1
    return ", ".join(f"{c} ({n} runs)" for c, n in sorted(count.items()))


def _split_sizes(path: Path) -> dict[str, dict[str, int]]:
    """split -> images, pneumonia, patients, from a run's split.csv."""
    sizes: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"images": 0, "pneumonia": 0, "p": set()}
    )
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            s = sizes[row["split"]]
            s["images"] += 1
            s["pneumonia"] += row["label"] == "PNEUMONIA"
            s["p"].add(row["patient"])
    return {k: {"images": v["images"], "pneumonia": v["pneumonia"], "patients": len(v["p"])}
            for k, v in sizes.items()}  # fmt: skip


def _copy_artefacts(study: Path, runs: list[Run], folder: Path) -> None:
    """The report's figures (PNG) and tables, and each run's metrics.json and curves (csv),
    beside the page: ``python -m xray_loss.report`` reads them (without test predictions:
    no calibration figure or test-sampling intervals)."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "runs").mkdir(parents=True)
    for name in (*(f"{f}.png" for f in FIGURES), "summary.csv", "summary.md"):
        if (study / "report" / name).exists():
            shutil.copy2(study / "report" / name, folder / name)
    for path in sorted({r.path for r in runs}):
        target = folder / "runs" / path.parent.name / path.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path / "metrics.json", target / "metrics.json")
        write_curves(target / CURVES_CSV, read_curves(path))


def summary_table(csv_path: Path) -> list[str]:
    """summary.csv as the page's table: head, lr, epochs, n, then test and val numbers."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = ["loss", "lr", "epochs", "n", "auroc_mean", "auroc_std", "acc_mean", "acc_std"]
    cols += ["sensitivity_mean", "specificity_mean", "ece_mean", "val_auroc_mean"]
    cols = [c for c in cols if c in rows[0]]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [_cell(c, row[c]) for c in cols]
        if row.get("best") in ("True", "true", "1"):
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(column: str, text: str) -> str:
    """summary.csv's text as the page shows it: lr as 1e-05, other numbers to 4 digits."""
    if not text:
        return "-"
    if column == "lr":
        return f"{float(text):g}"
    return f"{float(text):.4f}" if "." in text else text


def write_page(study: Path, page_dir: Path, *, matched_lr: float, gaps: dict[float, float]) -> Path:
    """Write ``page_dir/<date>-full-grid.md`` and its folder; return the page's path."""
    runs, _ = load_runs([study / "grid", study / "matched"])
    runs, _ = drop_duplicates(runs)
    facts = provenance(runs)
    date = facts["finished"][:10]
    folder = page_dir / f"{date}-full-grid"
    _copy_artefacts(study, runs, folder)
    probe = study / "probe.json"
    probe = json.loads(probe.read_text()) if probe.exists() else None
    text = discussion(runs, cells_of(runs), facts, matched_lr, gaps, folder.name, probe)
    text += ["", "## Summary table", ""]
    text += [
        "From the report's summary.csv (copied beside this page with summary.md, which adds the "
        "seed ranges, test-sampling intervals and the paired tests). Mean (and std) over the "
        "seeds; bold: the best configuration by mean validation AUROC.",
        "",
        *summary_table(folder / "summary.csv"),
    ]
    page = page_dir / f"{date}-full-grid.md"
    page.write_text("\n".join(text) + "\n")
    return page
