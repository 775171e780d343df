"""Runs as the report sees them: records, curves, predictions, and what makes two runs alike.

Two runs belong to one *configuration* when every resolved setting that defines what they
compute is equal (metrics.json ``configuration``, see ``xray_loss.record.run_configuration``),
seeds and folds aside (``xray_loss.metrics.REPEATS``). The command that started a run
(``resume``, ``name``, launcher knobs) plays no part. The sweep's aggregate table and the
report group on this, so they agree with each other.
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xray_loss.metrics import AXES, CURVES, REPEATS
from xray_loss.record import read_record


@dataclass
class Run:
    """One completed run: its record, per-epoch curves and test predictions."""

    path: Path
    record: dict[str, Any]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None
    patients: np.ndarray | None = None  # per test image, where the data source knows them

    @property
    def config(self) -> dict[str, Any]:
        """The named hyperparameters (``xray_loss.metrics.AXES``)."""
        return self.record.get("config", {})

    @property
    def settings(self) -> dict[str, Any]:
        return settings(self.record)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def fold(self) -> Any:
        return self.settings.get("data.fold")

    def test(self, metric: str) -> float:
        value = (self.record.get("test") or {}).get(f"test/{metric}")
        return math.nan if value is None else float(value)


def settings(record: dict[str, Any]) -> dict[str, Any]:
    """A run's resolved settings (older records without them: their named hyperparameters)."""
    return record.get("configuration") or record.get("config") or {}


def _hashable(value: Any) -> Any:
    return str(value) if isinstance(value, (list, dict)) else value


def identity(record: dict[str, Any]) -> tuple:
    """What one configuration's runs share: every setting but the repeats (seed, fold)."""
    return tuple(sorted((k, _hashable(v)) for k, v in settings(record).items() if k not in REPEATS))


def columns(records: list[dict[str, Any]]) -> list[str]:
    """The settings that tell these records' configurations apart, as a reader names them.

    Candidates are the named axes (``loss``, ``lr``, ...) first, then every resolved setting
    (``loss.label_smoothing``, ``data.split_seed``, ...); one is kept when it varies and the
    columns kept before it do not already determine it (``loss._target_`` follows ``loss``,
    ``max_epochs`` follows ``epochs``). Seeds and folds are repeats, never columns.
    """
    named = [a for a in AXES if a not in REPEATS]
    keys = sorted({k for r in records for k in settings(r)} - set(REPEATS) - set(named))
    kept: list[str] = []
    for key in named + keys:
        values = [_hashable(value(r, key)) for r in records]
        if len(set(values)) < 2:
            continue
        by_kept: dict[tuple, set] = defaultdict(set)
        for r, v in zip(records, values, strict=True):
            by_kept[tuple(_hashable(value(r, k)) for k in kept)].add(v)
        if any(len(v) > 1 for v in by_kept.values()):
            kept.append(key)
    return kept


def value(record: dict[str, Any], column: str) -> Any:
    """A record's value in a column of :func:`columns` (named axis or resolved setting)."""
    config = record.get("config", {})
    return config.get(column) if column in config else settings(record).get(column)


def describe(record: dict[str, Any], cols: list[str]) -> str:
    """``loss=ce lr=0.001 epochs=30``: a configuration as a reader names it."""
    return " ".join(f"{c}={format_value(value(record, c))}" for c in cols)


def format_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def sort_key(v: Any) -> tuple:
    """Numbers in numeric order (1e-05 < 0.0001, 10 < 30 < 100), then text."""
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def slice_for(runs: list[Run], axis: str, prefer: dict[str, Any]) -> tuple[list[Run], dict]:
    """Runs varying along ``axis`` only: every other varying column is held at ``prefer``'s
    value if present, else at its most common value."""
    fixed = {}
    for other in columns([r.record for r in runs]):
        if other == axis:
            continue
        values = [value(r.record, other) for r in runs]
        wanted = prefer.get(other)
        if wanted is not None and any(same(v, wanted) for v in values):
            fixed[other] = wanted
        else:
            fixed[other] = Counter(str(v) for v in values).most_common(1)[0][0]
    chosen = [r for r in runs if all(same(value(r.record, k), v) for k, v in fixed.items())]
    return chosen, fixed


# --- reading run directories ----------------------------------------------------------------
def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values (epoch starting at 1) of the report's curves, from the events.

    Runs log their per-epoch values at step = epochs completed (xray_loss.module); runs of
    older versions logged them at the global step, with an ``epoch`` scalar to map it.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags().get("scalars", []))
    step_epoch = {}
    if "epoch" in tags:
        step_epoch = {e.step: int(round(e.value)) + 1 for e in ea.Scalars("epoch")}
    curves = {}
    for tag in (*CURVES, "val/auroc"):
        if tag not in tags:
            continue
        events = ea.Scalars(tag)
        older = bool(step_epoch) and all(e.step in step_epoch for e in events)
        by_epoch: dict[int, float] = {}
        for event in events:  # a resumed run may repeat a step: the last one wins
            by_epoch[step_epoch[event.step] if older else event.step] = event.value
        curves[tag] = sorted(by_epoch.items())
    return curves


def read_predictions(run_dir: Path, suffix: str = "") -> dict[str, np.ndarray] | None:
    """labels, probs and (where known) patients of test_predictions<suffix>.csv, in dataset
    order (suffix ``_epoch010``: the best checkpoint within a 10-epoch budget)."""
    path = run_dir / f"test_predictions{suffix}.csv"
    if not path.exists():
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    out = {
        "labels": np.array([int(r["label"]) for r in rows]),
        "probs": np.array([float(r["prob"]) for r in rows]),
    }
    patients = [r.get("patient") or "" for r in rows]
    if rows and all(patients):
        out["patients"] = np.array(patients)
    return out


def budget_records(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A run's record as the separate runs it stands for: one per epoch budget.

    A run with ``budgets=[10,30,100]`` (``xray_loss.callbacks.EpochBudgets``) computed what
    runs of 10, 30 and 100 epochs would have (constant lr, no scheduler: refused otherwise).
    Each budget becomes the record of that shorter run: ``epochs``, ``trainer.max_epochs``,
    best epoch, best val AUROC and test metrics of the budget, ``budgets`` empty; so a sweep
    over ``epochs`` and one run with ``budgets`` group, aggregate and compare alike. Returns
    ``[(predictions file suffix, record)]``; a run without budgets is itself, suffix "".
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
        out.append((f"_epoch{epochs:03d}", virtual))
    return out


def load_runs(paths: list[Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Completed runs under ``paths`` (run or sweep directories) and the skipped ones; a run
    with epoch budgets counts as the shorter runs it stands for (:func:`budget_records`)."""
    runs, skipped = [], []
    found = sorted({p.parent for root in paths for p in Path(root).rglob("metrics.json")})
    for run_dir in found:
        record = read_record(run_dir)
        status = (record or {}).get("status", "unreadable")
        if status != "completed":
            skipped.append((run_dir, status))
            continue
        curves = read_curves(run_dir)
        for suffix, virtual in budget_records(record):
            last = virtual.get("epochs_trained") or math.inf
            kept = {tag: [(e, v) for e, v in c if e <= last] for tag, c in curves.items()}
            run = Run(run_dir, virtual, kept)
            predictions = read_predictions(run_dir, suffix)
            if predictions is not None:
                run.labels, run.probs = predictions["labels"], predictions["probs"]
                run.patients = predictions.get("patients")
            runs.append(run)
    return runs, skipped


def configurations(
    items: list[Any], record_of: Any = lambda item: item
) -> tuple[list[str], list[tuple[dict[str, Any], list[Any]]]]:
    """Items (records or runs) grouped by configuration, in numeric order of the columns.

    Returns the columns (:func:`columns`) and, per configuration, its values in those columns
    and its members (the repeats: seeds and folds).
    """
    records = [record_of(item) for item in items]
    cols = columns(records)
    groups: dict[tuple, list[Any]] = defaultdict(list)
    for item, record in zip(items, records, strict=True):
        groups[identity(record)].append(item)
    out = [({c: value(record_of(m[0]), c) for c in cols}, m) for m in groups.values()]
    out.sort(key=lambda head_members: [sort_key(head_members[0][c]) for c in cols])
    return cols, out
