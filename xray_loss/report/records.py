"""A run directory's files as the report reads them: its record as the completed runs it
stands for (a run with epoch budgets as its shorter runs), its per-epoch curves and its test
predictions. Records of ``python -m xray_loss.eval`` are told apart from training runs.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from xray_loss.errors import UserError
from xray_loss.metrics import CURVES, OBJECTIVE
from xray_loss.runtime.record import Status
from xray_loss.threshold import probability

# what xray_loss.eval records (a checkpoint tested or recalibrated) instead of a training config
EVALUATION_KEYS = ("ckpt_path", "recalibrate")
# metrics.json ``stopped_by`` of a run that the trainer's ``max_time`` ended before its epochs
TIME_STOPPED = "max_time"


def is_evaluation(record: dict[str, Any]) -> bool:
    """A record of ``python -m xray_loss.eval`` (a test or a recalibration), not of training."""
    return any(key in record for key in EVALUATION_KEYS)


def time_stopped(record: dict[str, Any]) -> bool:
    """Ended by the trainer's ``max_time``: fewer epochs than nominal (older records: no)."""
    return record.get("stopped_by") == TIME_STOPPED


def current_tag(tag: str) -> str:
    """A metric's name as this version logs it: records before 2026-12 logged each head's own
    objective as ``<stage>/loss``."""
    stage, _, name = tag.rpartition("/")
    return f"{stage}/{OBJECTIVE}" if stage and name == "loss" else tag


def current_record(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics.json with this version's metric names (older records keep working)."""
    out = dict(record)
    for part in ("val", "test"):
        if isinstance(out.get(part), dict):
            out[part] = {current_tag(k): v for k, v in out[part].items()}
    if isinstance(out.get("budgets"), dict):
        out["budgets"] = {
            n: {**b, "test": {current_tag(k): v for k, v in (b.get("test") or {}).items()}}
            for n, b in out["budgets"].items()
        }
    return out


CURVES_CSV = "curves.csv"  # the curves of a run kept without its events (docs/results)


def write_curves(path: Path, curves: dict[str, list[tuple[int, float]]]) -> None:
    """``curves.csv`` (tag, epoch, value): a run's curves, small enough to commit."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag", "epoch", "value"])
        for tag, points in curves.items():
            writer.writerows((tag, epoch, f"{value:.6g}") for epoch, value in points)


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values (epoch starting at 1) of the report's curves, from the events, or
    from ``curves.csv`` where a run was kept without them.

    Runs log their per-epoch values at step = epochs completed (xray_loss.module); runs of
    older versions logged them at the global step, with an ``epoch`` scalar to map it.
    """
    if not any(run_dir.glob("events.out.tfevents*")) and (run_dir / CURVES_CSV).exists():
        kept: dict[str, list[tuple[int, float]]] = {}
        with open(run_dir / CURVES_CSV, newline="") as f:
            for row in csv.DictReader(f):
                point = (int(row["epoch"]), float(row["value"]))
                kept.setdefault(current_tag(row["tag"]), []).append(point)
        return kept
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    logged = {current_tag(t): t for t in ea.Tags().get("scalars", [])}  # older names too
    tags = set(logged)
    step_epoch = {}
    if "epoch" in tags:
        step_epoch = {e.step: int(round(e.value)) + 1 for e in ea.Scalars("epoch")}
    curves = {}
    for tag in (*CURVES, f"train/{OBJECTIVE}", f"val/{OBJECTIVE}", "val/auroc"):
        if tag not in tags:
            continue
        events = ea.Scalars(logged[tag])
        older = bool(step_epoch) and all(e.step in step_epoch for e in events)
        by_epoch: dict[int, float] = {}
        for event in events:  # a resumed run may repeat a step: the last one wins
            by_epoch[step_epoch[event.step] if older else event.step] = event.value
        curves[tag] = sorted(by_epoch.items())
    return curves


class PredictionsError(UserError, ValueError):
    """A test_predictions.csv the report cannot trust; the message names the file and line."""


PREDICTION_COLUMNS = ("label", "prob")  # what the report reads of test_predictions.csv


def read_predictions(
    run_dir: Path, suffix: str = "", tested: int | None = None
) -> dict[str, np.ndarray] | None:
    """labels, probs and (where known) patients of test_predictions<suffix>.csv, in dataset
    order (suffix ``_epoch010``: the best checkpoint within a 10-epoch budget).

    Checked as it is read, since the report's intervals and calibration error come from it:
    the label and prob columns, each label 0 or 1, each prob a number in [0, 1], whole lines,
    and as many rows as the run tested (``tested``: metrics.json ``test_images``, where
    recorded). A file that fails is refused in one sentence naming it and the line: a wrong
    interval is worse than none."""
    path = run_dir / f"test_predictions{suffix}.csv"
    if not path.exists():
        return None
    fix = (
        "restore the file the run wrote, or delete it to report the run without its test "
        "intervals and calibration."
    )
    text = path.read_text(encoding="utf-8", errors="replace")
    if text and not text.endswith("\n"):  # the test report ends every row with a line end
        lines = text.count("\n") + 1
        raise PredictionsError(f"{path} ends inside line {lines}: the file is cut short; {fix}")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in PREDICTION_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        header = ",".join(reader.fieldnames or []) or "none"
        raise PredictionsError(
            f"{path} has no {missing[0]} column (its header: {header}); the report reads "
            f"{' and '.join(PREDICTION_COLUMNS)}: {fix}"
        )
    labels, probs, patients = [], [], []
    for row in reader:
        where = f"{path}, line {reader.line_num}"
        label, prob = row["label"], probability(row["prob"])
        if label not in ("0", "1"):
            raise PredictionsError(
                f"{where}: label {label!r} is not 0 (normal) or 1 (pneumonia): {fix}"
            )
        if prob is None:
            raise PredictionsError(
                f"{where}: prob {row['prob']!r} is not a number in [0, 1]: {fix}"
            )
        labels.append(int(label))
        probs.append(prob)
        patients.append(row.get("patient") or "")
    if tested is not None and len(labels) != tested:
        raise PredictionsError(
            f"{path} holds {len(labels)} prediction(s), but metrics.json says the run tested "
            f"{tested} image(s): the file is cut short or another run's; {fix}"
        )
    out = {"labels": np.array(labels, dtype=np.int64), "probs": np.array(probs)}
    if patients and all(patients):
        out["patients"] = np.array(patients)
    return out


def budget_records(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A run's record as the separate runs it stands for: one per epoch budget.

    A run with ``budgets=[10,30,100]`` (``xray_loss.callbacks.EpochBudgets``) computed what
    runs of 10, 30 and 100 epochs would have (constant lr, no scheduler: refused otherwise).
    Each budget becomes the record of that shorter, completed run: ``epochs``,
    ``trainer.max_epochs``, best epoch, best val AUROC and test metrics of the budget,
    ``budgets`` empty, trained to its end (``stopped_by`` ``max_epochs`` where the record says
    why it stopped); so a sweep over ``epochs`` and one run with ``budgets`` group, aggregate
    and compare alike. Returns ``[(predictions file suffix, record)]``; a run without budgets
    is itself, suffix "".
    """
    budgets = record.get("budgets") or {}
    if not budgets:
        return [("", record)]
    out = []
    for nominal, info in sorted(budgets.items(), key=lambda item: int(item[0])):
        epochs = int(nominal)
        config = {**record.get("config", {}), "epochs": epochs}
        config["max_epochs"] = info["epochs_trained"]
        configuration = dict(record.get("configuration") or {})
        if configuration:
            configuration.update(epochs=epochs, budgets="[]")
            configuration["trainer.max_epochs"] = info["epochs_trained"]
        virtual = {
            **record,
            "status": Status.COMPLETED,
            "config": config,
            "configuration": configuration,
            "budgets": {},
            "best_epoch": info["best_epoch"],
            "best_val_auroc": info["best_val_auroc"],
            "epochs_trained": info["epochs_trained"],
            "val": {"val/auroc": info["best_val_auroc"]},
            "test": info["test"],
            "budget_of": f"{record.get('run_dir', '')} (budgets={sorted(map(int, budgets))})",
        }
        if "stopped_by" in record:
            virtual["stopped_by"] = "max_epochs"
        out.append((f"_epoch{epochs:03d}", virtual))
    return out


def completed_records(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The completed runs a training record stands for (:func:`budget_records`): a completed
    run itself or its budgets; a diverged run the budgets it reached and tested before it
    diverged (a separate run of that many epochs would have completed); else none."""
    if is_evaluation(record):
        return []
    status = record.get("status")
    if status == Status.COMPLETED or (status == Status.DIVERGED and record.get("budgets")):
        return budget_records(record)
    return []
