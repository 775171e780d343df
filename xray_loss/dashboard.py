"""What TensorBoard shows beyond Lightning's per-epoch scalars: sample images, the Custom
Scalars layout and the HParams table of runs.

The HParams session is written with TensorBoard's own protocol buffers and torch's event-file
writer into the run directory (TensorBoard reads every events file of a directory as one run),
so a run's HParams row does not depend on the Lightning logger being alive when the run ends.
"""

from __future__ import annotations

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

from xray_loss.metrics import AXES, HPARAM_METRICS
from xray_loss.record import STATUSES, STOP_REASONS
from xray_loss.report.runs import format_value, sort_key


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
    """Logs a grid of training images of each class to TensorBoard when fit starts: once per
    sweep (its first job), since every job of a sweep would show the same images."""

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
            tb.experiment.add_image(f"samples/{name}", grid, global_step=0)


class DashboardLayout(L.Callback):
    """TensorBoard Custom Scalars layout: one chart per split and metric (x = epoch), one line
    per run, so a sweep's runs are compared metric by metric with no train/val line pairs."""

    CHARTS = {
        "validation": ("auroc", "acc", "loss", "sensitivity", "specificity"),
        "training": ("acc", "loss"),
    }

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module) -> None:
        tb = tensorboard_logger(trainer)
        if tb is None:
            return
        layout = {}
        for category, metrics in self.CHARTS.items():
            split = "val" if category == "validation" else "train"
            layout[category] = {
                f"{split} {m}": ["Multiline", [f"^{re.escape(f'{split}/{m}')}$"]] for m in metrics
            }
        tb.experiment.add_custom_scalars(layout)


# --- HParams: one experiment per sweep (its axes), one session per run (its values, status) --
_STATUS = {
    "completed": api_pb2.Status.STATUS_SUCCESS,
    "running": api_pb2.Status.STATUS_RUNNING,
}


def _summary(tag: str, **content: Any) -> Summary:
    data = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **content)
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])


def hparam_values(record: dict[str, Any]) -> dict[str, str]:
    """A run's hyperparameters as the HParams table shows them: text, numbers as typed
    (``32``, not ``32.000``; ``1e-05``), every named axis and resolved setting, and its status."""
    values = {k: format_value(v) for k, v in (record.get("configuration") or {}).items()}
    values.update({k: format_value(v) for k, v in (record.get("config") or {}).items()})
    values["status"] = str(record.get("status"))
    if record.get("stopped_by"):  # max_time: fewer epochs than nominal, marked in the table
        values["stopped_by"] = str(record["stopped_by"])
    return values


def experiment_summary(axes: dict[str, list[str]], record: dict[str, Any] | None = None) -> Summary:
    """The HParams experiment: the swept ``axes`` (with their values, for filtering) first and
    marked as differing, so they are the columns TensorBoard shows; then the run's status, why
    its training stopped (``max_time``: fewer epochs than nominal) and the other named axes
    (hidden until chosen)."""
    infos = []
    for name, domain in axes.items():
        infos.append(
            api_pb2.HParamInfo(
                name=name,
                type=api_pb2.DataType.DATA_TYPE_STRING,
                domain_discrete=struct_pb2.ListValue(
                    values=[struct_pb2.Value(string_value=v) for v in domain]
                ),
                differs=len(domain) != 1,  # a continuous search has no list
            )
        )
    shown = set(axes)
    ended = (("status", [s for s in STATUSES if s != "running"]), ("stopped_by", STOP_REASONS))
    for name, domain in ended:
        infos.append(
            api_pb2.HParamInfo(
                name=name,
                type=api_pb2.DataType.DATA_TYPE_STRING,
                domain_discrete=struct_pb2.ListValue(
                    values=[struct_pb2.Value(string_value=s) for s in domain]
                ),
                differs=True,
            )
        )
    for name in AXES:
        if name not in shown:
            infos.append(api_pb2.HParamInfo(name=name, type=api_pb2.DataType.DATA_TYPE_STRING))
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in HPARAM_METRICS]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    return _summary(metadata.EXPERIMENT_TAG, experiment=experiment)


def write_experiment(log_dir: Path, axes: dict[str, list[str]], once: bool = False) -> None:
    """The HParams experiment of a sweep (or a single run) into ``log_dir``; ``once``: not
    again into a sweep directory that has events already (a resumed sweep)."""
    if not (once and any(Path(log_dir).glob("events.out.tfevents.*"))):
        _write(log_dir, [experiment_summary(axes)])


def sweep_axes(params: dict[str, Any], overrides: list[str]) -> dict[str, list[str]]:
    """The swept settings of a multirun and their values, as the runs' HParams rows name them:
    from the sweeper's ``params`` and the command line (``loss=bce,ce``, ``seed=range(0,3)``;
    an Optuna interval has no list of values)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(overrides)
    axes: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element().lstrip("+~")
        if not override.is_sweep_override() or key.startswith("hydra."):
            continue
        try:
            values = [format_value(v) for v in override.sweep_iterator()]
        except Exception:  # noqa: BLE001 - an interval or other non-enumerable sweep
            values = []
        axes[key] = sorted(values, key=sort_key)
    return axes


def write_session(run_dir: Path, record: dict[str, Any], step: int = 0) -> None:
    """The run's HParams row: its values and status (failed and diverged runs too), and
    ``val/auroc_best`` as a scalar when it completed."""
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, text in hparam_values(record).items():
        start.hparams[name].string_value = text
    status = _STATUS.get(record.get("status"), api_pb2.Status.STATUS_FAILURE)
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    summaries = [
        _summary(metadata.SESSION_START_INFO_TAG, session_start_info=start),
        _summary(metadata.SESSION_END_INFO_TAG, session_end_info=end),
    ]
    if record.get("best_val_auroc") is not None:
        summaries.append(scalar("val/auroc_best", float(record["best_val_auroc"])))
    _write(run_dir, summaries, step)


def _write(log_dir: Path, summaries: list[Summary], step: int = 0) -> None:
    writer = FileWriter(str(log_dir))
    try:
        for summary in summaries:
            writer.add_summary(summary, global_step=step)
    finally:
        writer.close()
