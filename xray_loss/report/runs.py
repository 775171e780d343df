"""Runs as the report sees them (read by ``report.records``), and what makes two runs alike.

Two runs belong to one *configuration* when every resolved setting that defines what they
compute is equal (metrics.json ``configuration``, see ``xray_loss.identity.run_configuration``),
seeds and folds aside (``xray_loss.identity.repeat_keys``). The command that started a run
(``resume``, ``name``, launcher knobs) plays no part. The sweep's aggregate table and the
report group on this, so they agree with each other.

A configuration pools each (seed, fold) once (:func:`drop_duplicates`); a setting that varies
only together with a column is named, not hidden (:func:`confounds`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from xray_loss.identity import (
    axis_names,
    format_value,
    in_configuration,
    repeat_keys,
    restated,
    sort_key,
)
from xray_loss.report.records import (
    completed_records,
    current_record,
    is_evaluation,
    read_curves,
    read_predictions,
)
from xray_loss.runtime.record import Status, read_record


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
        """The named hyperparameters (``xray_loss.identity.axis_names``)."""
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
    """A run's resolved settings (older records without them: their named hyperparameters),
    bookkeeping left out (``identity.in_configuration``: a record may predate a key's listing)."""
    found = record.get("configuration") or record.get("config") or {}
    return {k: v for k, v in found.items() if in_configuration(k)}


def _hashable(value: Any) -> Any:
    return str(value) if isinstance(value, (list, dict)) else value


def identity(record: dict[str, Any]) -> tuple:
    """What one configuration's runs share: every setting but the repeats (seed, fold)."""
    return tuple(
        sorted((k, _hashable(v)) for k, v in settings(record).items() if k not in repeat_keys())
    )


def repeat(record: dict[str, Any]) -> tuple:
    """Which repeat of its configuration a record is: its seed and fold."""
    return tuple(_hashable(value(record, k)) for k in repeat_keys())


def _determined(records: list[dict[str, Any]], key: str, by: list[str]) -> bool:
    """Whether the values of the columns ``by`` fix the value of ``key`` in these records."""
    seen: dict[tuple, set] = defaultdict(set)
    for r in records:
        seen[tuple(_hashable(value(r, k)) for k in by)].add(_hashable(value(r, key)))
    return all(len(v) == 1 for v in seen.values())


def _candidates(records: list[dict[str, Any]]) -> list[str]:
    """Every setting a column could be: the named axes first, then the resolved settings."""
    named = [a for a in axis_names() if a not in repeat_keys()]
    found = {k for r in records for k in settings(r)}
    return named + sorted(found - set(repeat_keys()) - set(named))


def _varies(records: list[dict[str, Any]], key: str) -> bool:
    return len({_hashable(value(r, key)) for r in records}) > 1


def columns(records: list[dict[str, Any]]) -> list[str]:
    """The settings that tell these records' configurations apart, as a reader names them.

    Candidates are the named axes (``loss``, ``lr``, ...) first, then every resolved setting
    (``loss.label_smoothing``, ``data.split_seed``, ...); one is kept when it varies and the
    columns kept before it do not already determine it (``loss._target_`` follows ``loss``,
    ``max_epochs`` follows ``epochs``). Seeds and folds are repeats, never columns.
    """
    kept: list[str] = []
    for key in _candidates(records):
        if _varies(records, key) and not _determined(records, key, kept):
            kept.append(key)
    return kept


def restates(column: str, key: str) -> bool:
    """Whether ``key`` is ``column`` under another name or part of it (``loss._target_`` of
    ``loss``, ``trainer.max_epochs`` of ``epochs``): it follows the column by construction
    (``identity.restated``; a group's own keys restate its choice)."""
    return key.startswith(f"{column}.") or key in restated().get(column, ())


def confounds(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Settings that differ between these records only together with a column, so no column
    of their own: ``{"scheduler": ["epochs"]}`` when every 100-epoch run used another scheduler
    than the 10-epoch runs. A difference between those rows is not the column's alone. A
    setting restating a column or another confound (:func:`restates`: ``scheduler._target_``
    of ``scheduler``) is none. Values: the columns each follows."""
    cols = columns(records)
    out: dict[str, list[str]] = {}
    for key in _candidates(records):
        if key in cols or not _varies(records, key):
            continue
        if not any(restates(c, key) for c in [*cols, *out]):
            out[key] = [c for c in cols if _determined(records, key, [c])] or cols
    return out


def value(record: dict[str, Any], column: str) -> Any:
    """A record's value in a column of :func:`columns` (named axis or resolved setting)."""
    config = record.get("config", {})
    return config.get(column) if column in config else settings(record).get(column)


def describe(record: dict[str, Any], cols: list[str]) -> str:
    """``loss=ce lr=0.001 epochs=30``: a configuration as a reader names it."""
    return " ".join(f"{c}={format_value(value(record, c))}" for c in cols)


def same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


# --- reading run directories ----------------------------------------------------------------
def load_runs(paths: list[Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Completed training runs under ``paths`` (run or sweep directories) and the skipped
    ones; a run with epoch budgets counts as the shorter runs it stands for, a diverged one as
    the budgets it tested (:func:`completed_records`). Records of ``xray_loss.eval`` are no
    training runs: left out. Duplicates are kept here (:func:`drop_duplicates`)."""
    runs, skipped = [], []
    found = sorted({p.parent for root in paths for p in Path(root).rglob("metrics.json")})
    for run_dir in found:
        record = current_record(read_record(run_dir) or {"status": "unreadable"})
        if is_evaluation(record):
            continue
        completed = completed_records(record)
        status = record.get("status", "unreadable")
        if status != Status.COMPLETED:
            budgets = sorted(int(r["config"]["epochs"]) for _, r in completed)
            note = f"; its budgets {budgets} are read as the shorter runs" if budgets else ""
            skipped.append((run_dir, status + note))
        if not completed:
            continue
        curves = read_curves(run_dir)
        for suffix, virtual in completed:
            last = virtual.get("epochs_trained") or math.inf
            kept = {tag: [(e, v) for e, v in c if e <= last] for tag, c in curves.items()}
            run = Run(run_dir, virtual, kept)
            predictions = read_predictions(run_dir, suffix, virtual.get("test_images"))
            if predictions is not None:
                run.labels, run.probs = predictions["labels"], predictions["probs"]
                run.patients = predictions.get("patients")
            runs.append(run)
    return runs, skipped


def finished_at(run: Run) -> float:
    """When a run ended (else started), from its record; else its metrics.json's mtime."""
    for key in ("finished", "started"):
        try:
            return datetime.fromisoformat(str(run.record[key])).timestamp()
        except (KeyError, ValueError):
            continue
    try:
        return (run.path / "metrics.json").stat().st_mtime
    except OSError:
        return 0.0


def budget_name(run: Run) -> str:
    """`` (its 10-epoch budget)`` for a run read from one budget of a longer run, else ""."""
    return f" (its {run.config.get('epochs')}-epoch budget)" if run.record.get("budget_of") else ""


def drop_duplicates(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """One run per configuration and repeat: where a (seed, fold) of a configuration ran more
    than once (a sweep rerun without ``resume``, ``full_grid`` beside ``full_grid_budgets``),
    the newest run (:func:`finished_at`) is kept. Returns (kept, dropped), in their order."""
    newest: dict[tuple, Run] = {}
    for run in sorted(runs, key=lambda r: (finished_at(r), str(r.path))):
        newest[(identity(run.record), repeat(run.record))] = run
    kept_ids = {id(r) for r in newest.values()}
    return [r for r in runs if id(r) in kept_ids], [r for r in runs if id(r) not in kept_ids]


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
