"""The names every part of xray_loss reports under, and the one decision rule they all use.

Module, train, sweep, report and callbacks import these lists instead of keeping their own, so a
metric or an axis added here shows up everywhere at once.

The decision rule: an image is called pneumonia when ``P(pneumonia) >= threshold``, the
convention of the ROC curve (a threshold read off the ROC keeps the sensitivity and specificity
it was chosen for). Metrics, confusion matrices, Youden's threshold, ``eval`` and ``predict`` all
go through :func:`decide`. Probabilities are float32 whatever the training precision.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_recall,
    binary_roc,
    binary_specificity,
)

STAGES = ("train", "val", "test")
# metrics of the evaluation stages (val, test); `train/` logs loss and acc only
METRICS = ("loss", "acc", "auroc", "f1", "sensitivity", "specificity")
THRESHOLD_METRICS = ("acc", "f1", "sensitivity", "specificity")
TRAIN_METRICS = ("loss", "acc")
# the per-epoch curves the report draws
CURVES = ("train/acc", "val/acc", "train/loss", "val/loss")
# the named hyperparameters of a run (metrics.json "config", TensorBoard HParams, report axes)
AXES = (
    "loss",
    "lr",
    "epochs",
    "max_epochs",  # epochs trained: epochs x epochs_scale in a dry run
    "batch_size",
    "model",
    "data",
    "optimizer",
    "scheduler",
    "weight_decay",
    "image_size",
    "threshold",
    "seed",
)
# the HParams table's metric columns: what a run is judged by
HPARAM_METRICS = (
    "val/auroc_best",
    "test/auroc",
    "test/acc",
    "test/sensitivity",
    "test/specificity",
    "test/f1",
)
# what repeats one configuration: pooled as repetitions, never as different settings
REPEATS = ("seed", "data.fold")


def decide(probs: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Pneumonia (True) where ``probs >= threshold``: the project's one decision rule."""
    return probs >= threshold


def binary_metrics(
    probs: torch.Tensor, labels: torch.Tensor, threshold: float
) -> dict[str, torch.Tensor]:
    """acc, auroc, f1, sensitivity, specificity of one evaluated set at ``threshold``.

    AUROC is NaN when the set holds one class (it is undefined, not 0 or 0.5).
    """
    probs, labels = probs.float(), labels.long()
    preds = decide(probs, threshold).long()  # integer predictions: torchmetrics applies no rule
    if labels.numel() and labels.min() != labels.max():
        auroc = binary_auroc(probs, labels, validate_args=False)
    else:
        auroc = torch.tensor(math.nan)
    return {
        "acc": binary_accuracy(preds, labels, validate_args=False),
        "auroc": auroc.to(probs.device),
        "f1": binary_f1_score(preds, labels, validate_args=False),
        "sensitivity": binary_recall(preds, labels, validate_args=False),
        "specificity": binary_specificity(preds, labels, validate_args=False),
    }


def youden_threshold(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The threshold maximising sensitivity + specificity - 1 under :func:`decide`.

    Candidates are the observed probabilities (``binary_roc``'s thresholds count p >= t; its
    first point, a threshold above every score, is not one of them). One class: 0.5.
    """
    labels = labels.long()
    if labels.numel() == 0 or labels.min() == labels.max():
        return 0.5
    fpr, tpr, thresholds = binary_roc(probs.float(), labels)
    youden = tpr - fpr
    youden[0] = -math.inf
    return float(thresholds[torch.argmax(youden)].clamp(0.0, 1.0))
