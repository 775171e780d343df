"""What TensorBoard shows beyond Lightning's per-epoch scalars: sample images, the Custom
Scalars layout and the HParams table of runs.

The HParams session is written with TensorBoard's own protocol buffers and torch's event-file
writer into the run directory (TensorBoard reads every events file of a directory as one run),
so a run's HParams row does not depend on the Lightning logger being alive when the run ends.
``torch.utils.tensorboard.summary.hparams()`` builds the same three summaries but cannot say
what this table needs: a run's status other than success (failed, diverged, pruned rows), which
columns differ across a sweep, or a numeric range for a column of many values.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from google.protobuf import struct_pb2
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard.summary import scalar
from torch.utils.tensorboard.writer import FileWriter

from xray_loss.identity import axis_names, format_value, repeat_keys, sort_key
from xray_loss.metrics import OBJECTIVE, TRAIN_METRICS, hparam_metrics, metric_names
from xray_loss.runtime.record import Status, read_record
from xray_loss.runtime.rundirs import BEST, IMAGES  # viz/: sorts after the curves


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The run's TensorBoard logger, if it has one."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


def first_job() -> bool:
    """True in a single run and in the first job of a multirun (which logs what every job
    would log the same, such as the sample grid)."""
    if not HydraConfig.initialized():
        return True
    hydra = HydraConfig.get()
    return hydra.mode != RunMode.MULTIRUN or int(hydra.job.num) == 0


class SampleGrid(L.Callback):
    """Logs a grid of training images of each class to TensorBoard when fit starts (step 0:
    no epoch trained yet): once per sweep (its first job), since every job of a sweep would
    show the same images."""

    def __init__(self, per_class: int = 16) -> None:
        self.per_class = int(per_class)

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module) -> None:
        tb = tensorboard_logger(trainer)
        splits = getattr(trainer.datamodule, "splits", None)
        if tb is None or not splits or not first_job():
            return
        train = splits["train"]
        for label, name in ((0, "normal"), (1, "pneumonia")):
            index = torch.nonzero(train.labels == label).flatten()[: self.per_class]
            if index.numel() == 0:
                continue
            images = train.images[index].cpu()
            grid = torchvision.utils.make_grid(images, nrow=8, padding=2, pad_value=255)
            tb.experiment.add_image(f"{IMAGES}/samples_{name}", grid, global_step=0)


def custom_scalars_layout() -> dict[str, dict[str, list]]:
    """The Custom Scalars charts (x = epoch): one per metric that training and validation both
    log, its ``train/`` and ``val/`` lines together (the gap between them is overfitting), the
    head's own objective last (not comparable across heads), then the validation-only ones."""

    def chart(metric: str, splits: tuple[str, ...]) -> list:
        return ["Multiline", [f"^{re.escape(f'{split}/{metric}')}$" for split in splits]]

    both = sorted((m for m in metric_names() if m in TRAIN_METRICS), key=lambda m: m == OBJECTIVE)
    return {
        "train and val": {f"train/val {m}": chart(m, ("train", "val")) for m in both},
        "validation": {f"val {m}": chart(m, ("val",)) for m in metric_names() if m not in both},
    }


class DashboardLayout(L.Callback):
    """Writes the Custom Scalars layout (:func:`custom_scalars_layout`) when fit starts."""

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module) -> None:
        tb = tensorboard_logger(trainer)
        if tb is not None:
            tb.experiment.add_custom_scalars(custom_scalars_layout())


# --- HParams: one experiment per sweep (what varies), one session per run (its values) --------
_STATUS = {
    Status.COMPLETED: api_pb2.Status.STATUS_SUCCESS,
    Status.RUNNING: api_pb2.Status.STATUS_RUNNING,
}  # every other status (failed, diverged, pruned, interrupted): a failure
_ENDED = ("status", "stopped_by", "epochs_trained")  # how each run ended, beside its settings
# text even where a value looks like a number: a rule (0.5), and a repeat's label (seed 0): the
# table prints every number to 5 digits (0.0000) and plots it on a numeric axis
_TEXT = ("threshold", "threshold.rule", *repeat_keys())
# the sweep's experiment lives in a job directory, in a file of its own (replaced on resume);
# each run's session too (a sweep rewrites them when it ends, ranked)
EXPERIMENT_SUFFIX = ".experiment"
SESSION_SUFFIX = ".session"
# TensorBoard's HParams tab offers a value filter of checkboxes below this many values, else a
# regex (numbers: a range)
_CHECKBOXES = 10


def _summary(tag: str, **content: Any) -> Summary:
    data = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **content)
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])


def hparam_value(name: str, value: Any) -> float | str | None:
    """A value as the HParams table holds it: a number (sorted and plotted as one: 1e-05 <
    0.0001 < 0.001) or text; None for none (an empty cell)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name not in _TEXT:
        return float(value)
    return format_value(value)


def hparam_values(record: dict[str, Any]) -> dict[str, float | str]:
    """A run's HParams row: every named axis and resolved setting, its status, why training
    stopped and the complete epochs it trained (``epochs`` x ``epochs_scale`` in a dry run)."""
    values = {**(record.get("configuration") or {}), **(record.get("config") or {})}
    values.update({name: record.get(name) for name in _ENDED})
    typed = {name: hparam_value(name, v) for name, v in values.items()}
    return {name: v for name, v in typed.items() if v is not None}


def _info(name: str, domain: set, differs: bool) -> api_pb2.HParamInfo:
    numbers = bool(domain) and all(isinstance(v, (int, float)) for v in domain)
    info = api_pb2.HParamInfo(
        name=name,
        type=api_pb2.DataType.DATA_TYPE_FLOAT64 if numbers else api_pb2.DataType.DATA_TYPE_STRING,
        differs=differs,
    )
    if numbers and len(domain) >= _CHECKBOXES:
        info.domain_interval.min_value, info.domain_interval.max_value = min(domain), max(domain)
    elif numbers:
        values = sorted(float(v) for v in domain)
        info.domain_discrete.values.extend(struct_pb2.Value(number_value=v) for v in values)
    elif domain:
        text = sorted({format_value(v) for v in domain}, key=sort_key)
        info.domain_discrete.values.extend(struct_pb2.Value(string_value=v) for v in text)
    return info


def experiment_summary(
    records: list[dict[str, Any]], axes: dict[str, list] | None = None
) -> Summary:
    """The HParams experiment of a sweep's ``records`` and ``axes`` (``sweep_axes``), or of
    one run (``axes`` None). A sweep's columns are what varies across it: its axes with more
    than one value, then its runs' status and ``stopped_by`` if they differ, and the epochs
    trained where they differ from ``epochs`` (a dry run, ``max_time``); TensorBoard shows its
    first five columns whatever ``differs`` says, so constant settings are left out (they are
    in each run's row and metrics.json). A single run lists every named axis."""
    rows = [hparam_values(r) for r in records]

    def domain(name: str, extra: list = ()) -> set:
        return {row[name] for row in rows if name in row} | set(extra)

    if axes is None:
        infos = [_info(name, domain(name), False) for name in (*axis_names(), *_ENDED)]
    else:
        infos = [_info(k, domain(k, v), True) for k, v in axes.items() if len(domain(k, v)) > 1]
        shorter = any(
            r.get("epochs_trained") not in (None, (r.get("config") or {}).get("epochs"))
            for r in records
        )
        for name in _ENDED:
            if len(domain(name)) > 1 and (name != "epochs_trained" or shorter):
                infos.append(_info(name, domain(name), True))
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in hparam_metrics()]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    return _summary(metadata.EXPERIMENT_TAG, experiment=experiment)


def write_experiment(log_dir: Path, axes: dict[str, list]) -> Path | None:
    """The HParams experiment: of the run in ``log_dir`` (one holding metrics.json), or of the
    sweep in ``log_dir`` with ``axes`` once its jobs have ended, written into its first job's
    directory: a run that TensorBoard lists anyway (a file in the sweep directory would make
    that a run, "."), replacing the one an earlier, resumed, sweep wrote. Returns where."""
    log_dir = Path(log_dir)
    if (log_dir / "metrics.json").exists():
        host, records, axes = log_dir, [read_record(log_dir) or {}], None
    else:
        read = {job: read_record(job) for job in sorted(log_dir.glob("*/metrics.json"))}
        jobs = {job.parent: record for job, record in read.items() if record}
        if not jobs:
            return None
        records, host = list(jobs.values()), next(iter(jobs))
        _replace(log_dir.glob(f"*/*tfevents*{EXPERIMENT_SUFFIX}"))
        for rank, job in enumerate(ranked(jobs), start=1):
            write_session(job, jobs[job], group=f"{rank:0{len(str(len(jobs)))}d}. {job.name}")
    _write(host, [experiment_summary(records, axes)], suffix=EXPERIMENT_SUFFIX)
    return host


def ranked(jobs: dict[Path, dict[str, Any]]) -> list[Path]:
    """A sweep's jobs best first: completed runs by the checkpoint's validation AUROC
    (``best_val_auroc``, what the checkpoint monitors), then the others (failed, diverged,
    pruned) alike; ties by name."""

    def key(job: Path) -> tuple:
        best = jobs[job].get("best_val_auroc")
        known = best is not None and math.isfinite(best)
        done = jobs[job].get("status") == Status.COMPLETED
        return (not done, not known, -best if known else 0.0, job.name)

    return sorted(jobs, key=key)


def sweep_axes(params: dict[str, Any], overrides: list[str]) -> dict[str, list]:
    """The swept settings of a multirun and their values, as the runs' HParams rows hold them
    (numbers as numbers): from the sweeper's ``params`` and the command line (``loss=bce,ce``,
    ``seed=range(0,3)``; an Optuna interval has no list of values)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(overrides)
    axes: dict[str, list] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element().lstrip("+~")
        if not override.is_sweep_override() or key.startswith("hydra."):
            continue
        try:
            values = {hparam_value(key, v) for v in override.sweep_iterator()}
        except Exception:  # noqa: BLE001 - an interval or other non-enumerable sweep
            values = set()
        axes[key] = sorted(values - {None}, key=sort_key)
    return axes


def write_session(
    run_dir: Path, record: dict[str, Any], step: int | None = None, group: str = ""
) -> None:
    """The run's HParams row: its values and status (failed and diverged runs too), and
    ``val/auroc_best`` as a scalar when it completed (at ``step``, default the epochs trained),
    replacing the one written before. TensorBoard's table lists rows by ``group`` (its "Trial
    ID", default the run's name) unless told otherwise: a sweep names them by rank."""
    run_dir = Path(run_dir)
    if step is None:
        step = int(record.get("epochs_trained") or 0)
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time(), group_name=group)
    for name, value in hparam_values(record).items():
        if isinstance(value, float):
            start.hparams[name].number_value = value
        else:
            start.hparams[name].string_value = value
    status = _STATUS.get(record.get("status"), api_pb2.Status.STATUS_FAILURE)
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    summaries = [
        _summary(metadata.SESSION_START_INFO_TAG, session_start_info=start),
        _summary(metadata.SESSION_END_INFO_TAG, session_end_info=end),
    ]
    if record.get("best_val_auroc") is not None:
        summaries.append(scalar(BEST, float(record["best_val_auroc"])))
    _replace(run_dir.glob(f"*tfevents*{SESSION_SUFFIX}"))
    _write(run_dir, summaries, step, suffix=SESSION_SUFFIX)


def _replace(files) -> None:
    for old in list(files):
        old.unlink(missing_ok=True)


def _write(log_dir: Path, summaries: list[Summary], step: int = 0, suffix: str = "") -> None:
    writer = FileWriter(str(log_dir), filename_suffix=suffix)
    try:
        for summary in summaries:
            writer.add_summary(summary, global_step=step)
    finally:
        writer.close()
