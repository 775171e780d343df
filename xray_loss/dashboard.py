"""What TensorBoard shows beyond Lightning's per-epoch scalars: sample images, the Custom
Scalars layout and the HParams table of runs.

The HParams session is written with TensorBoard's own protocol buffers and torch's event-file
writer into the run directory (TensorBoard reads every events file of a directory as one run),
so a run's HParams row does not depend on the Lightning logger being alive when the run ends.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams, scalar
from torch.utils.tensorboard.writer import FileWriter

from xray_loss.metrics import METRICS


def write_hparams(run_dir: Path, params: dict[str, Any], best_val_auroc: float, step: int) -> None:
    """The run's HParams session: its hyperparameters against best val AUROC and test metrics.

    ``val/auroc_best`` is written here as a scalar; the ``test/...`` scalars come from the
    run's test.
    """
    params = {k: ("none" if v is None else v) for k, v in params.items()}
    metric_tags = {"val/auroc_best": best_val_auroc, **{f"test/{m}": 0.0 for m in METRICS}}
    writer = FileWriter(str(run_dir))
    try:
        writer.add_summary(scalar("val/auroc_best", best_val_auroc), global_step=step)
        for summary in hparams(params, metric_tags):
            writer.add_summary(summary)
    finally:
        writer.close()


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The run's TensorBoard logger, if it has one."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


class SampleGrid(L.Callback):
    """Logs a grid of training images of each class to TensorBoard when fit starts."""

    def __init__(self, per_class: int = 16) -> None:
        self.per_class = int(per_class)

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module) -> None:
        tb = tensorboard_logger(trainer)
        splits = getattr(trainer.datamodule, "splits", None)
        if tb is None or not splits:
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
    """TensorBoard custom-scalars layout: one chart per metric with train and val together.

    The Custom Scalars tab then compares runs metric by metric without clicking through tags.
    """

    CHARTS = {
        "loss": ["train/loss", "val/loss"],
        "accuracy": ["train/acc", "val/acc"],
        "AUROC": ["val/auroc"],
        "F1": ["val/f1"],
        "sensitivity / specificity": ["val/sensitivity", "val/specificity"],
    }

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module) -> None:
        tb = tensorboard_logger(trainer)
        if tb is None:
            return
        charts = {
            name: ["Multiline", [f"^{re.escape(tag)}$" for tag in tags]]
            for name, tags in self.CHARTS.items()
        }
        tb.experiment.add_custom_scalars({"xray_loss": charts})
