"""Copy each completed run's small records beside the results page, so the page can be rebuilt
from what is committed (checkpoints and TensorBoard events stay on the training machine).

    python -m studies.bce_vs_ce.collect LOGS [--out docs/results/2026-12-07-bce-vs-ce]

LOGS holds the study's sweeps (``logs/bce_vs_ce/{primary,lr_grid}/<job>/``). Per completed run,
into ``OUT/runs/<sweep>/<job>/``: its ``metrics.json`` (as written), ``curves.csv`` (the
per-epoch values of :data:`CURVE_TAGS` from its events, the report's format) and one
``predictions.csv`` (index, label, patient, then P(pneumonia) of every tested checkpoint, one
column per epoch tested, 6 significant digits; metrics.json says which epoch is which). The
split manifest (split.csv, every file's sha1) goes once per distinct split under
``OUT/manifests/``. Idempotent: a run already collected is left alone, so a rerun adds only the
runs completed since; a run is written to a temporary folder and renamed, so an interrupted
collect leaves no half run behind.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

from xray_loss.metrics import OBJECTIVE, TRAIN_METRICS
from xray_loss.report.records import CURVES_CSV, write_curves
from xray_loss.runtime.record import Status

OUT = Path("docs/results/2026-12-07-bce-vs-ce")
PREDICTIONS = "predictions.csv"
# what the page and the report read per epoch: each head's own loss, NLL, Brier, accuracy
# (train and val), the learning rate, and the validation AUROC the checkpoint is chosen on
CURVE_TAGS = (
    *(f"train/{m}" for m in TRAIN_METRICS),
    "train/lr",
    *(f"val/{m}" for m in (OBJECTIVE, "nll", "brier", "acc", "auroc")),
)
MAX_RUN_BYTES = 80_000  # a run's three files; the study's 60 runs stay under 5 MB


class CollectError(ValueError):
    """A run whose records cannot be collected as they are; the message says which and why."""


def epoch_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The per-epoch values of :data:`CURVE_TAGS` from a run's events (logged at step = epochs
    completed; a resumed run's repeated step: the last value wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    logged = set(ea.Tags().get("scalars", []))
    curves = {}
    for tag in CURVE_TAGS:
        if tag in logged:
            by_epoch = {e.step: e.value for e in ea.Scalars(tag)}
            curves[tag] = sorted(by_epoch.items())
    missing = [t for t in CURVE_TAGS if t not in curves]
    if missing:
        raise CollectError(f"{run_dir}: its events hold no {', '.join(missing)}; not collected.")
    return curves


def tested_files(record: dict[str, Any]) -> dict[str, int]:
    """Each test predictions file of a run -> the epoch (1-based) whose weights it scored:
    the best checkpoint, and per epoch budget N the best within N and the weights of epoch N."""
    files = {"test_predictions.csv": int(record["best_epoch"])}
    for n, budget in sorted((record.get("budgets") or {}).items(), key=lambda kv: int(kv[0])):
        files[f"test_predictions_epoch{int(n):03d}.csv"] = int(budget["best_epoch"])
        if "last_test" in budget:
            files[f"test_predictions_epoch{int(n):03d}_last.csv"] = int(budget["epochs_trained"])
    return files


def compact_predictions(run_dir: Path, record: dict[str, Any]) -> str:
    """``predictions.csv`` of a run: one row per test image, one column per tested epoch."""
    rows: list[dict[str, str]] | None = None
    columns: dict[int, list[str]] = {}
    for name, epoch in tested_files(record).items():
        path = run_dir / name
        if not path.exists():
            raise CollectError(f"{path} is missing: rerun the run's test or leave the run out.")
        with open(path, newline="") as f:
            found = list(csv.DictReader(f))
        key = [(r["index"], r["label"], r.get("patient", "")) for r in found]
        if rows is None:
            rows = found
        elif key != [(r["index"], r["label"], r.get("patient", "")) for r in rows]:
            raise CollectError(f"{path} lists other images than test_predictions.csv.")
        probs = [f"{float(r['prob']):.6g}" for r in found]
        if columns.setdefault(epoch, probs) != probs:
            raise CollectError(f"{path}: epoch {epoch}'s weights were scored twice, differently.")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    epochs = sorted(columns)
    writer.writerow(["index", "label", "patient", *(f"epoch{e:03d}" for e in epochs)])
    for i, row in enumerate(rows or []):
        cells = [row["index"], row["label"], row.get("patient", "")]
        writer.writerow(cells + [columns[e][i] for e in epochs])
    return out.getvalue()


def manifest_name(record: dict[str, Any]) -> str:
    """``<train>-<val>-<test>``: the split digests of the run's record (metrics.json
    ``splits``), so a reader finds a run's manifest from its record."""
    splits = record.get("splits") or {}
    return "-".join(splits[s]["digest"] for s in ("train", "val", "test") if s in splits)


def write_manifest(split_csv: Path, folder: Path) -> None:
    """The split manifest as ``folder/<split>.csv`` (file, sha1): a run's split.csv less what
    the file name says (the label is its class folder, the patient is in its name), one file
    per split so that each stays small enough to commit."""
    with open(split_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for split in sorted({r["split"] for r in rows if r["split"]}):
        with open(staging / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["file", "sha1"])
            writer.writerows((r["file"], r["sha1"]) for r in rows if r["split"] == split)
    staging.rename(folder)


def collect_run(run_dir: Path, target: Path, manifests: Path) -> bool:
    """Collect one completed run into ``target``; False when it is there already."""
    if (target / "metrics.json").exists():
        return False
    record = json.loads((run_dir / "metrics.json").read_text())
    if not record.get("splits"):
        raise CollectError(f"{run_dir}/metrics.json records no splits: rerun it with this code.")
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_curves(staging / CURVES_CSV, epoch_curves(run_dir))
    (staging / PREDICTIONS).write_text(compact_predictions(run_dir, record))
    shutil.copyfile(run_dir / "metrics.json", staging / "metrics.json")
    size = sum(p.stat().st_size for p in staging.iterdir())
    if size > MAX_RUN_BYTES:
        shutil.rmtree(staging)
        raise CollectError(
            f"{run_dir}: its records take {size} bytes, over {MAX_RUN_BYTES}: too large to "
            "commit per run; keep fewer curves or checkpoints."
        )
    manifest = manifests / manifest_name(record)
    if not manifest.exists():
        write_manifest(run_dir / "split.csv", manifest)
    staging.rename(target)
    return True


def completed_runs(logs: Path) -> list[tuple[str, Path]]:
    """(sweep, run directory) of every completed run under ``logs/<sweep>/<job>/``."""
    found = []
    for path in sorted(logs.glob("*/*/metrics.json")):
        record = json.loads(path.read_text())
        if record.get("status") == Status.COMPLETED:
            found.append((path.parent.parent.name, path.parent))
    return found


def collect(logs: Path, out: Path = OUT) -> list[Path]:
    """Collect every completed run under ``logs`` not yet under ``out``; return the new ones."""
    added = []
    for sweep, run_dir in completed_runs(logs):
        target = out / "runs" / sweep / run_dir.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if collect_run(run_dir, target, out / "manifests"):
            added.append(target)
    return added


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m studies.bce_vs_ce.collect", description=__doc__
    )
    parser.add_argument("logs", type=Path, help="the study's sweeps, e.g. logs/bce_vs_ce")
    parser.add_argument("--out", type=Path, default=OUT, help="the page's records folder")
    args = parser.parse_args(argv)
    if not args.logs.is_dir():
        parser.error(f"{args.logs} is no folder: name the study's logs, e.g. logs/bce_vs_ce")
    try:
        added = collect(args.logs, args.out)
    except CollectError as err:
        parser.exit(1, f"collect: {err}\n")
    print(f"collected {len(added)} new run(s) into {args.out / 'runs'}")


if __name__ == "__main__":
    main()
