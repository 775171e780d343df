"""Where runs and sweeps live: directories, locks, resumption, a sweep's summary tables.

``SweepBookkeeping`` is a Hydra callback (``conf/hydra/default.yaml``):

- ``on_multirun_start``: gives the sweep a directory of its own, named after the time (to the
  microsecond), what it varies and a hash of the command's overrides
  (``<time>_loss=bce,ce_lr=0.0001,0.001_<hash>``: the hash tells apart sweeps that vary the same
  settings but hold others at other values), created atomically so that two identical sweeps
  started at once never share one; with ``resume=true`` it reuses the latest directory of the
  same command, so finished jobs are skipped and interrupted ones continue.
  Its jobs are named by the settings it varies (``loss=ce,lr=0.001,seed=1``): the keys that
  take one value go to ``hydra.job.config.override_dirname.exclude_keys``, which
  ``conf/hydra/default.yaml``'s ``${xray_loss.jobname:...}`` leaves out.
- ``on_run_start`` (a single run): with ``resume=true``, picks the latest run directory of the
  same overrides and continues it, or says why it cannot (none, completed, failed, no
  checkpoint yet).
- Both lock the directory they write to (``.lock``: owner pid, host, start, command): a second
  live writer stops with a message instead of mixing its files in; a lock whose process is gone
  (same host) is stale and taken over. ``on_run_end`` / ``on_multirun_end`` release it.
- ``on_job_start``: says where the sweep is (job k of N, time elapsed, an estimate of the time
  left from the jobs this command finished), on the console and in the job's train.log.
- ``on_job_end`` (in whichever process ran the job): rewrites ``sweep_summary.csv`` (one row per
  job) and ``sweep_aggregate.csv`` (mean and std over seeds and folds of each configuration)
  from the jobs' ``metrics.json`` files, atomically, so they can be read while the sweep runs.
- ``on_multirun_end``: final tables and the sweep's TensorBoard HParams experiment (what varies
  across its runs, ``xray_loss.dashboard.write_experiment``); names the configuration best on
  validation (never on test) and prints the commands that show the sweep (``python -m
  xray_loss.report <dir>``, ``make tensorboard SWEEP=<dir>``); if any job failed or diverged it
  says which and exits non-zero, after every other job has run.

A job that fails on a config or data error about settings every job shares (no test/ folder and
no ``data.test_fraction``, ``lr=-1`` held) stops the sweep at once (``stop_if_every_job_fails``),
instead of failing every job in turn.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from xray_loss.atomic import atomic_path
from xray_loss.checks import ENTRY_VALUES, check_entry, check_values
from xray_loss.config import ConfigError, setup_process
from xray_loss.dashboard import sweep_axes, write_experiment
from xray_loss.data.splits import DataError
from xray_loss.identity import Role, format_value, key_of, sweep_overrides
from xray_loss.metrics import metric_names
from xray_loss.runtime.ddp import global_rank
from xray_loss.runtime.record import (
    FAILURES,
    Interrupted,
    RunFailed,
    Status,
    read_record,
)
from xray_loss.runtime.resume import stop_on_signals
from xray_loss.runtime.rundirs import (
    cannot_resume,
    check_resumable,
    check_writable,
    lock_directory,
    new_sweep_dir,
    run_to_resume,
    unlock_directory,
)

log = logging.getLogger(__name__)
# what the console shows of a run or sweep, plainly, and the job's train.log keeps
# (conf/hydra/default.yaml: job_logging)
console = logging.getLogger("xray_loss.summary")

SUMMARY = "sweep_summary.csv"
AGGREGATE = "sweep_aggregate.csv"


def sweep_key(overrides: list[str]) -> str:
    """A short, stable id of a sweep command: its overrides but bookkeeping (``resume``,
    launcher knobs: ``identity.sweep_overrides``)."""
    return hashlib.sha1("\n".join(sweep_overrides(overrides)).encode()).hexdigest()[:8]


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
            **{f"test_{m}": test.get(f"test/{m}") for m in metric_names()},
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


def write_tables(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Re)write sweep_summary.csv and sweep_aggregate.csv; return their rows (the job rows,
    and one row per configuration with its ``config`` and mean and std over its repeats).

    The aggregate groups jobs by their resolved configuration (``xray_loss.report.runs``), so
    a job re-run with ``resume=true`` or with another ``name``, ``threads`` or launcher setting
    joins its configuration's row instead of opening a second one.
    """
    rows = job_rows(sweep_dir)
    if not rows:
        return rows, []
    _write_atomic(Path(sweep_dir) / SUMMARY, _table(rows, list(rows[0])))
    records = [r for r in (read_record(Path(row["run_dir"])) for row in rows) if r]
    from xray_loss.report.stats import summarise, summary_keys  # when a job ends, not at import

    cols, agg = summarise(records)
    if agg:
        for row in agg:
            row["config"] = " ".join(f"{c}={format_value(row[c])}" for c in cols)
        stats = [f"{k}_{s}" for k in summary_keys() for s in ("mean", "std")]
        _write_atomic(Path(sweep_dir) / AGGREGATE, _table(agg, ["config", *cols, "n", *stats]))
    return rows, agg


# the configuration a sweep's end names: judged on validation, never on test
BEST_ON = "best_val_auroc_mean"


def best_configuration(agg: list[dict[str, Any]]) -> str | None:
    """The sentence naming the configuration with the highest mean best val AUROC (each run's
    checkpoint criterion, averaged over its seeds and folds), ties named together; None when
    no configuration completed."""
    scored = [r for r in agg if isinstance(r.get(BEST_ON), float) and not math.isnan(r[BEST_ON])]
    if not scored:
        return None
    top = max(r[BEST_ON] for r in scored)
    best = [r for r in scored if r[BEST_ON] == top]
    names = " and ".join(r["config"] or "the sweep's one configuration" for r in best)
    n, std = best[0]["n"], best[0].get("best_val_auroc_std")
    spread = f" ± {std:.4f}" if n > 1 and isinstance(std, float) and not math.isnan(std) else ""
    tied = f" (a tie of {len(best)})" if len(best) > 1 else ""
    criterion = f"best val AUROC, mean of {n} runs" if n > 1 else "best val AUROC"
    return (
        f"Best on validation ({criterion}; test metrics play no part): {names}{tied}: "
        f"val AUROC {top:.4f}{spread}."
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def job_count(config: DictConfig, axes: dict[str, list]) -> int | None:
    """How many jobs the sweep runs: the sweeper's ``n_trials`` (Optuna), else the product of
    its axes' value counts (a grid); None when an axis has no list of values."""
    trials = config.hydra.sweeper.get("n_trials")
    if trials:
        return int(trials)
    if any(not values for values in axes.values()):
        return None
    return math.prod(len(values) for values in axes.values())


def sweep_name(axes: dict[str, list], key: str) -> str:
    """A sweep directory's name but its time: what it varies, then the command's ``key``
    (``loss=bce,ce_lr=0.0001,0.001_06b522e6``; an interval names its key alone)."""
    varied = [
        f"{k}={','.join(format_value(v) for v in values)}" if values else k
        for k, values in sorted(axes.items())
        if len(values) != 1
    ]
    name = "_".join(varied).replace("/", "_").replace(" ", "")
    if len(name) > 100:
        name = name[:99] + "~"
    return f"{name}_{key}" if name else key


def held_keys(params: dict[str, Any] | None, overrides: list[str], axes: dict) -> list[str]:
    """The keys a sweep's jobs all share one value of (left out of their names): those of its
    command and sweeper ``params`` that are not ``axes`` (``sweep_axes``) with several values
    (or with none listed: an interval); none when nothing varies (a one-job sweep)."""
    varied = {key for key, values in axes.items() if len(values) != 1}
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides] + list(params or {})
    return sorted({key for key in keys if key not in varied}) if varied else []


class SweepBookkeeping(Callback):
    """Hydra callback; see the module docstring."""

    _lock: Path | None = None
    _axes: dict[str, list] | None = None
    _jobs: int | None = None  # how many jobs the sweep runs, when known
    _started: float | None = None  # time.time() when the sweep started
    _restore_signals = None  # puts back the signal handlers before ours (stop_on_signals)

    def __init__(self) -> None:
        setup_process()  # the xray_loss.* resolvers, before any job of a sweep is named

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_restore_signals"}  # this process's

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
        if config.hydra.job.name in ("train", *ENTRY_VALUES):  # before Hydra makes the run's folder
            _refuse_early(config, lambda cfg: check_entry(cfg, config.hydra.job.name))
        check_writable(Path(config.paths.log_dir))
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
        self._stop_on_signals(config, run_dir, None)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        unlock_directory(self._lock)
        self._stop_on_signals(config, None, None)

    # --- a sweep --------------------------------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_overrides = list(config.hydra.overrides.hydra)
        task = list(config.hydra.overrides.task)
        params = config.hydra.sweeper.get("params")
        self._axes = axes = sweep_axes(params, task)
        self._jobs = job_count(config, axes)
        self._started = time.time()
        _refuse_early(config, lambda cfg: check_values(cfg, ["name", "resume"]))  # jobs: the rest
        check_writable(Path(config.paths.log_dir))
        if any(o.startswith("hydra.sweep.dir=") for o in hydra_overrides):
            # the user chose the directory
            sweep_dir = Path(str(config.hydra.sweep.dir))
            self._lock = lock_directory(sweep_dir, "sweep")
        else:
            base = Path(config.paths.log_dir) / str(config.name) / "multirun"
            key = sweep_key(task + hydra_overrides)
            previous = sorted(base.glob(f"*_{key}")) if base.exists() else []
            if config.get("resume") and previous:
                sweep_dir = previous[-1]
                self._lock = lock_directory(sweep_dir, "sweep")
                log.info("resume=true: continuing the sweep in %s", sweep_dir)
            else:
                if config.get("resume"):
                    log.info("resume=true: no earlier sweep of this command under %s", base)
                sweep_dir = new_sweep_dir(base, sweep_name(axes, key))
                self._lock = lock_directory(sweep_dir, "sweep")
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.sweep.dir = str(sweep_dir)
                config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{sweep_dir}'")
        self._stop_on_signals(config, None, Path(str(config.hydra.sweep.dir)))
        held = held_keys(params, task, axes)
        if held:  # the jobs' names (and TensorBoard runs): what varies
            held = sorted({*held, *config.hydra.job.config.override_dirname.exclude_keys})
            listed = ",".join(f"'{key}'" for key in held)
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.job.config.override_dirname.exclude_keys = held
                config.hydra.overrides.hydra.append(
                    f"hydra.job.config.override_dirname.exclude_keys=[{listed}]"
                )

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if global_rank() == 0 and self._started is not None:
            console.info(self.progress(config))

    def progress(self, config: DictConfig) -> str:
        """``Sweep job 3 of 8 (loss=ce,lr=0.001): 1m10s elapsed, about 2m20s left``: the time
        left is the jobs not ended, at the pace of those this command ended."""
        sweep_dir = Path(config.hydra.sweep.dir)
        elapsed = time.time() - self._started
        rows = job_rows(sweep_dir)
        ended = [r for r in rows if r["status"] == Status.COMPLETED or r["status"] in FAILURES]
        here = [r for r in ended if _mtime(r["run_dir"]) >= self._started]
        total = f" of {self._jobs}" if self._jobs else ""
        job = Path(config.hydra.runtime.output_dir).name
        line = f"Sweep job {config.hydra.job.num + 1}{total} ({job}): {_duration(elapsed)} elapsed"
        if here and self._jobs:
            left = max(1, self._jobs - len(ended)) * elapsed / len(here)
            line += f", about {_duration(left)} left"
        return line

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if global_rank() == 0:
            write_tables(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows, agg = write_tables(sweep_dir)
        if self._axes is not None:
            write_experiment(sweep_dir, self._axes)
        unlock_directory(self._lock)
        self._stop_on_signals(config, None, None)
        failed = [r for r in rows if r["status"] in FAILURES]
        done = sum(r["status"] == Status.COMPLETED for r in rows)
        took = f" in {_duration(time.time() - self._started)}" if self._started else ""
        best = best_configuration(agg)
        print(
            f"\nSweep finished: {done} of {len(rows)} job(s) completed{took}.\n"
            + (f"{best}\n" if best else "")
            + f"Summary:     {sweep_dir / SUMMARY} (one row per job), {AGGREGATE} (per "
            f"configuration)\n"
            f"Report:      python -m xray_loss.report {shlex.quote(str(sweep_dir))}\n"
            f"TensorBoard: make tensorboard SWEEP={shlex.quote(str(sweep_dir))}",
            flush=True,
        )
        if failed:
            lines = [f"  {r['job']}: {r['status']}: {r['error']}" for r in failed]
            print(f"{len(failed)} job(s) failed:\n" + "\n".join(lines), file=sys.stderr, flush=True)
            sys.exit(1)

    def _stop_on_signals(self, config: DictConfig, run_dir: Path | None, sweep_dir: Path | None):
        """While a training run or sweep goes on, SIGTERM and Ctrl-C stop it recorded and with
        the command that continues it, wherever they land (``stop_on_signals``); at its end the
        previous handlers are back. (None, None): the end."""
        if self._restore_signals is not None:
            self._restore_signals()
            self._restore_signals = None
        if (run_dir or sweep_dir) and config.hydra.job.name == "train":
            self._restore_signals = stop_on_signals(
                lambda name: report_interruption(Interrupted(name, run_dir or sweep_dir), sweep_dir)
            )


def report_interruption(stop: Interrupted, sweep_dir: Path | None) -> None:
    """What an interrupted run or sweep prints last: what is kept and the one command that
    continues it (a sweep's tables are written first: its summary holds every job so far)."""
    argv = [shlex.quote(a) for a in sys.argv[1:] if a != "resume=true"]
    command = " ".join(["python -m xray_loss.train", *argv, "resume=true"])
    then = "Continue with"
    if sweep_dir is None and cannot_resume(stop.run_dir):  # no checkpoint yet: nothing to resume
        command, then = command.removesuffix(" resume=true"), "Start it again with"
        what = f"{stop.run_dir} stopped before a checkpoint it could continue from"
    elif sweep_dir is None:
        what = f"{stop.run_dir} is recorded as interrupted, its checkpoints kept"
    else:
        rows, _ = write_tables(sweep_dir)
        done = sum(r["status"] == Status.COMPLETED for r in rows)
        what = (
            f"the sweep stopped with {done} of {len(rows)} started job(s) completed; "
            f"summary: {sweep_dir / SUMMARY}"
        )
    print(
        f"\nInterrupted by {stop.signal_name}: {what}. {then}:\n  {command}",
        file=sys.stderr,
        flush=True,
    )


def _refuse_early(config: DictConfig, check) -> None:
    """A config error found before Hydra makes a directory: one sentence, exit 1 (a callback's
    own exceptions would be turned into warnings)."""
    try:
        check(config)
    except ConfigError as err:
        raise SystemExit(f"Error: {err}") from None


def _mtime(path: str) -> float:
    try:
        return (Path(path) / "metrics.json").stat().st_mtime
    except OSError:
        return 0.0


class SweepStopped(SystemExit):
    """A job's config or data error that every job of the sweep would hit: the sweep stops."""


# a key as messages name it: ``lr=-1``, ``data.test_fraction=0.15`` (not inside a path)
_NAMED_KEY = re.compile(r"(?<![\w./~+-])([A-Za-z_]\w*(?:\.\w+)*)=")


def stop_if_every_job_fails(err: BaseException, hydra: DictConfig) -> None:
    """Raise ``SweepStopped`` when a sweep job's config or data error is about settings every
    job shares: the sweep stops at its first job with that one sentence instead of failing all
    of them in turn. An error is about the keys its message names (``key=value``: the house
    style of every message of ``xray_loss.checks`` and the data sources); one naming no key, a
    key in a group the sweep varies (``loss.gamma`` when ``loss`` varies), or in a sweep whose
    preset varies (``experiment=...``) fails its job only, and the sweep goes on. ``hydra``:
    the job's Hydra config (``HydraConfig.get()``)."""
    # the run's record turns a data error into RunFailed (one line): its context is the error
    cause = err.__context__ if isinstance(err, RunFailed) else err
    if not isinstance(cause, ConfigError | DataError):
        return
    named = {key.split(".")[0] for key in _NAMED_KEY.findall(str(err))}
    task = [o.split("=", 1)[0].lstrip("+~") for o in hydra.overrides.task]
    held = set(hydra.job.config.override_dirname.exclude_keys)
    varied = {key for key in task if key not in held}
    if not named or not held or named & {key.split(".")[0] for key in varied}:
        return
    if any(key_of(key).role == Role.SWEEP for key in varied):
        return
    sweep_dir = Path(hydra.sweep.dir)
    write_tables(sweep_dir)
    keys = ", ".join(sorted(named))
    raise SweepStopped(
        f"Error: {err}\nThe sweep stops at its first failed job, "
        f"{Path(hydra.runtime.output_dir).name}: every job sets {keys} alike, so every "
        f"job would fail the same way (summary: {sweep_dir / SUMMARY})."
    )
