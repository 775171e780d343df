"""The names every part of xray_loss reports under, and the one decision rule they all use.

Module, train, sweep, dashboard and report read :data:`SCORES` instead of keeping their own
lists, so a metric added here shows up everywhere at once (the axes of a run are in
``xray_loss.identity``).

The decision rule: an image is called pneumonia when ``P(pneumonia) >= threshold``, the
convention of the ROC curve (a threshold read off the ROC keeps the sensitivity and specificity
it was chosen for). Metrics, confusion matrices, Youden's threshold, ``eval`` and ``predict`` all
go through :func:`decide`. Probabilities are float32 whatever the training precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Score:
    """How a metric is computed from one evaluated set: from the decisions (``P >= threshold``,
    so it depends on the threshold) or from the probabilities (``ranks``: AUROC)."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ranks: bool = False
    label: str = ""  # as a table's header names it (default: the name)


# The metrics of the evaluation stages (val, test), besides the head's loss: adding one here
# is the whole change. The module logs it, metrics.json and sweep_summary.csv record it,
# TensorBoard charts it (a chart and an HParams column) and summary.md tabulates it.
SCORES: dict[str, Score] = {
    "acc": Score(binary_accuracy, label="accuracy"),
    "auroc": Score(binary_auroc, ranks=True, label="AUROC"),
    "sensitivity": Score(binary_recall),
    "specificity": Score(binary_specificity),
    "f1": Score(binary_f1_score, label="F1"),  # last: TensorBoard's HParams shows 5 metrics
}
# `train/` logs loss and acc only
TRAIN_METRICS = ("loss", "acc")
# the per-epoch curves the report draws
CURVES = ("train/acc", "val/acc", "train/loss", "val/loss")


def metric_names() -> tuple[str, ...]:
    """``loss`` and every score, in the order tables show them."""
    return ("loss", *SCORES)


def threshold_metrics() -> tuple[str, ...]:
    """The scores that depend on the decision threshold (reported at 0.5 too)."""
    return tuple(name for name, score in SCORES.items() if not score.ranks)


def hparam_metrics() -> tuple[str, ...]:
    """The HParams table's metric columns: what a run is judged by, the ranking ones first."""
    ordered = sorted(SCORES, key=lambda name: not SCORES[name].ranks)  # stable: table order
    return ("val/auroc_best", *(f"test/{name}" for name in ordered))


def decide(probs: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Pneumonia (True) where ``probs >= threshold``: the project's one decision rule."""
    return probs >= threshold


def binary_metrics(
    probs: torch.Tensor, labels: torch.Tensor, threshold: float
) -> dict[str, torch.Tensor]:
    """Every score of :data:`SCORES` on one evaluated set at ``threshold``.

    A ranking score (AUROC) is NaN when the set holds one class (it is undefined, not 0 or 0.5).
    """
    probs, labels = probs.float(), labels.long()
    preds = decide(probs, threshold).long()  # integer predictions: torchmetrics applies no rule
    both = bool(labels.numel()) and bool(labels.min() != labels.max())
    out = {}
    for name, score in SCORES.items():
        if score.ranks:
            value = score.fn(probs, labels, validate_args=False) if both else torch.tensor(math.nan)
        else:
            value = score.fn(preds, labels, validate_args=False)
        out[name] = value.to(probs.device)
    return out


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
