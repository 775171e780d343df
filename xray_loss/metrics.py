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
from functools import partial

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_f1_score,
    binary_recall,
    binary_roc,
    binary_specificity,
)

STAGES = ("train", "val", "test")


def nll(log_odds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the labels under P(pneumonia) = sigmoid(log_odds): the
    same number for every head (BCE's and CE's objectives equal it only without weights,
    label smoothing or focusing). From the log-odds, so a confident error is not clipped."""
    return F.binary_cross_entropy_with_logits(log_odds.float(), labels.float())


def auroc(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AUROC as the Mann-Whitney statistic: the share of (pneumonia, normal) pairs ranked right,
    ties counted half, from average ranks in float64. Two epochs that misrank the same number
    of pairs get the same value to the bit, so the checkpoint's strict comparison keeps the
    earlier one; a trapezoid over the ROC (torchmetrics) can round them apart."""
    values, inverse, counts = torch.unique(probs.double(), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average_rank = ends - (counts.double() - 1) / 2  # 1-based, ties share their mean rank
    positive = labels.bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    u = average_rank[inverse][positive].sum() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def brier(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error of P(pneumonia): a proper score bounded in [0, 1]."""
    return (probs.float() - labels.float()).square().mean()


@dataclass(frozen=True)
class Score:
    """How a metric is computed from one evaluated set: from the decisions (``P >= threshold``,
    so it depends on the threshold), from the probabilities (``probs``: AUROC, Brier) or from
    the log-odds of P(pneumonia) (``log_odds``: NLL); ``lower`` when smaller is better."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    uses: str = "decisions"  # decisions, probs or log_odds
    label: str = ""  # as a table's header names it (default: the name)
    lower: bool = False
    both_classes: bool = False  # undefined (NaN) on a set of one class

    @property
    def ranks(self) -> bool:
        """Independent of the threshold (reported once, not again at 0.5)."""
        return self.uses != "decisions"


# The metrics of the evaluation stages (val, test), besides the head's own objective: adding
# one here is the whole change. The module logs it, metrics.json and sweep_summary.csv record
# it, TensorBoard charts it (a chart and an HParams column) and summary.md tabulates it. NLL and
# Brier are the head-independent measures of P(pneumonia): compare heads on them, never on
# each head's own objective (a focal head's objective is small whatever its calibration).
SCORES: dict[str, Score] = {
    "nll": Score(nll, uses="log_odds", label="NLL", lower=True),
    "auroc": Score(auroc, uses="probs", label="AUROC", both_classes=True),
    "brier": Score(brier, uses="probs", label="Brier", lower=True),
    "acc": Score(partial(binary_accuracy, validate_args=False), label="accuracy"),
    "sensitivity": Score(partial(binary_recall, validate_args=False)),
    "specificity": Score(partial(binary_specificity, validate_args=False)),
    "f1": Score(partial(binary_f1_score, validate_args=False), label="F1"),
}
# the head's own training loss, logged per stage under this name (not comparable across heads)
OBJECTIVE = "objective"
# `train/` logs these (running means over the epoch's batches)
TRAIN_METRICS = (OBJECTIVE, "nll", "brier", "acc")
# what the report compares heads and settings on: the head-independent NLL, AUROC, accuracy
COMPARED_METRICS = ("nll", "auroc", "acc")
# the per-epoch curves the report draws
CURVES = ("train/nll", "val/nll", "train/acc", "val/acc")


def metric_names() -> tuple[str, ...]:
    """The head's objective and every score, in the order tables show them."""
    return (OBJECTIVE, *SCORES)


def threshold_metrics() -> tuple[str, ...]:
    """The scores that depend on the decision threshold (reported at 0.5 too)."""
    return tuple(name for name, score in SCORES.items() if not score.ranks)


def hparam_metrics() -> tuple[str, ...]:
    """The HParams table's metric columns: what a run is judged by, the threshold-free ones
    first (TensorBoard shows the first five)."""
    ordered = sorted(SCORES, key=lambda name: not SCORES[name].ranks)  # stable: table order
    return ("val/auroc_best", *(f"test/{name}" for name in ordered))


def decide(probs: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Pneumonia (True) where ``probs >= threshold``: the project's one decision rule."""
    return probs >= threshold


def binary_metrics(
    probs: torch.Tensor,
    labels: torch.Tensor,
    threshold: float,
    log_odds: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every score of :data:`SCORES` on one evaluated set at ``threshold``.

    AUROC is NaN when the set holds one class (it is undefined, not 0 or 0.5); every score is
    NaN on an empty set. ``log_odds`` defaults to logit(probs) (exact from a head's log-odds).
    """
    probs, labels = probs.float(), labels.long()
    if log_odds is None:
        log_odds = torch.logit(probs.double()).float()
    inputs = {"decisions": decide(probs, threshold).long(), "probs": probs, "log_odds": log_odds}
    both = bool(labels.numel()) and bool(labels.min() != labels.max())
    out = {}
    for name, score in SCORES.items():
        if not labels.numel() or (score.both_classes and not both):
            value = torch.tensor(math.nan)
        else:  # decisions are integers: torchmetrics applies no rule of its own
            value = score.fn(inputs[score.uses], labels)
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
