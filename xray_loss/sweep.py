"""Where runs and sweeps live: directories, locks, resumption, a sweep's summary tables.

``SweepBookkeeping`` is a Hydra callback (``conf/hydra/default.yaml``):

- ``on_multirun_start``: gives the sweep a directory of its own, named after the time (to the
  microsecond) and the command's overrides (``<time>_<hash>``), created atomically so that two
  identical sweeps started at once never share one; with ``resume=true`` it reuses the latest
  directory of the same command, so finished jobs are skipped and interrupted ones continue.
- ``on_run_start`` (a single run): with ``resume=true``, picks the latest run directory of the
  same overrides and continues it, or says why it cannot (none, completed, failed, no
  checkpoint yet).
- Both lock the directory they write to (``.lock``: owner pid, host, start, command): a second
  live writer stops with a message instead of mixing its files in; a lock whose process is gone
  (same host) is stale and taken over. ``on_run_end`` / ``on_multirun_end`` release it.
- ``on_job_end`` (in whichever process ran the job): rewrites ``sweep_summary.csv`` (one row per
  job) and ``sweep_aggregate.csv`` (mean and std over seeds and folds of each configuration)
  from the jobs' ``metrics.json`` files, atomically, so they can be read while the sweep runs.
- ``on_multirun_end``: final tables; if any job failed or diverged it says which and exits
  non-zero, after every other job has run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from xray_loss.config import setup_process
from xray_loss.dashboard import sweep_axes, write_experiment
from xray_loss.ddp import global_rank
from xray_loss.metrics import METRICS
from xray_loss.record import atomic_path, read_record
from xray_loss.report.runs import format_value
from xray_loss.report.stats import SUMMARY_KEYS, summarise
from xray_loss.rundirs import (
    check_resumable,
    lock_directory,
    new_sweep_dir,
    run_to_resume,
    unlock_directory,
)

log = logging.getLogger(__name__)

SUMMARY = "sweep_summary.csv"
AGGREGATE = "sweep_aggregate.csv"
FAILED = ("failed", "diverged")
# overrides that do not change which jobs a sweep runs (left out of its identity)
_NOT_IDENTITY = (
    "resume=",
    "hydra.sweeper.n_trials=",
    "hydra.sweeper.n_jobs=",
    "hydra.launcher.",
    "hydra.sweep.dir=",
)


def sweep_key(overrides: list[str]) -> str:
    """A short, stable id of a sweep command (its overrides, minus resume and launcher knobs)."""
    kept = sorted(o for o in overrides if not o.lstrip("+~").startswith(_NOT_IDENTITY))
    return hashlib.sha1("\n".join(kept).encode()).hexdigest()[:8]


def _write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job directory (one holding metrics.json) under the sweep."""
    rows = []
    for metrics in sorted(Path(sweep_dir).glob("*/metrics.json")):
        record = read_record(metrics)
        if record is None:
            continue
        test = record.get("test") or {}
        row = {
            "job": metrics.parent.name,
            "overrides": " ".join(record.get("overrides", [])),
            "status": record.get("status"),
            "best_val_auroc": record.get("best_val_auroc"),
            "best_epoch": record.get("best_epoch"),
            **{f"test_{m}": test.get(f"test/{m}") for m in METRICS},
            "threshold": record.get("threshold"),
            "wall_time_s": record.get("wall_time_s"),
            "error": (record.get("error") or "").replace("\n", " ")[:300],
            "run_dir": str(metrics.parent),
        }
        rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    return out.getvalue()


def write_tables(sweep_dir: Path) -> list[dict[str, Any]]:
    """(Re)write sweep_summary.csv and sweep_aggregate.csv; return the job rows.

    The aggregate groups jobs by their resolved configuration (``xray_loss.report.runs``), so
    a job re-run with ``resume=true`` or with another ``name``, ``threads`` or launcher setting
    joins its configuration's row instead of opening a second one.
    """
    rows = job_rows(sweep_dir)
    if not rows:
        return rows
    _write_atomic(Path(sweep_dir) / SUMMARY, _table(rows, list(rows[0])))
    records = [r for r in (read_record(Path(row["run_dir"])) for row in rows) if r]
    cols, agg = summarise(records)
    if agg:
        for row in agg:
            row["config"] = " ".join(f"{c}={format_value(row[c])}" for c in cols)
        stats = [f"{k}_{s}" for k in SUMMARY_KEYS for s in ("mean", "std")]
        _write_atomic(Path(sweep_dir) / AGGREGATE, _table(agg, ["config", *cols, "n", *stats]))
    return rows


class SweepBookkeeping(Callback):
    """Hydra callback; see the module docstring."""

    _lock: Path | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A parallel launcher (joblib, submitit) unpickles its callbacks in the worker before
        # the worker names the job's directory with the xray_loss.* resolvers: install them.
        self.__dict__.update(state)
        setup_process()

    # --- a single run ---------------------------------------------------------------------------
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "LOCAL_RANK" in os.environ or global_rank() > 0:
            return  # a DDP rank of a run: rank 0 holds its directory
        HydraConfig.instance().set_config(config)  # for ${hydra:...} in the directory's name
        chosen = any(o.startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra)
        resume = bool(config.get("resume"))
        run_dir = run_to_resume(config) if resume and not chosen else None
        run_dir = run_dir or Path(str(config.hydra.run.dir))
        if resume:
            if run_dir.exists():  # a run still going refuses here, before its record is judged
                self._lock = lock_directory(run_dir, "run")
            check_resumable(run_dir)
            log.info("resume=true: continuing %s", run_dir)
        self._lock = lock_directory(run_dir, "run")
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = str(run_dir)  # the time in its name is taken once

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        unlock_directory(self._lock)

    # --- a sweep --------------------------------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_overrides = list(config.hydra.overrides.hydra)
        if any(o.startswith("hydra.sweep.dir=") for o in hydra_overrides):
            # the user chose the directory
            self._lock = lock_directory(Path(str(config.hydra.sweep.dir)), "sweep")
            params, task = config.hydra.sweeper.get("params"), list(config.hydra.overrides.task)
            write_experiment(Path(str(config.hydra.sweep.dir)), sweep_axes(params, task), once=True)
            return
        base = Path(config.paths.log_dir) / str(config.name) / "multirun"
        task = list(config.hydra.overrides.task)
        key = sweep_key(task + hydra_overrides)
        previous = sorted(base.glob(f"*_{key}")) if base.exists() else []
        if config.get("resume") and previous:
            sweep_dir = previous[-1]
            self._lock = lock_directory(sweep_dir, "sweep")
            log.info("resume=true: continuing the sweep in %s", sweep_dir)
        else:
            if config.get("resume"):
                log.info("resume=true: no earlier sweep of this command under %s", base)
            sweep_dir = new_sweep_dir(base, key)
            self._lock = lock_directory(sweep_dir, "sweep")
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(sweep_dir)
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{sweep_dir}'")
        params = config.hydra.sweeper.get("params")
        write_experiment(sweep_dir, sweep_axes(params, task), once=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if global_rank() == 0:
            write_tables(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_tables(sweep_dir)
        unlock_directory(self._lock)
        failed = [r for r in rows if r["status"] in FAILED]
        done = sum(r["status"] == "completed" for r in rows)
        print(
            f"\nSweep finished: {done} of {len(rows)} job(s) completed. "
            f"Summary: {sweep_dir / SUMMARY}",
            flush=True,
        )
        if failed:
            lines = [f"  {r['job']}: {r['status']}: {r['error']}" for r in failed]
            print(f"{len(failed)} job(s) failed:\n" + "\n".join(lines), file=sys.stderr, flush=True)
            sys.exit(1)
