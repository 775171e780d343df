"""One decision rule (P >= threshold is pneumonia), computed in float32, everywhere."""

from __future__ import annotations

import pytest
import torch

from xray_loss.callbacks import confusion_figure, roc_figure
from xray_loss.metrics import binary_metrics, decide, youden_threshold
from xray_loss.module import XrayClassifier

BACKBONE = {"_target_": "xray_loss.backbones.SmallCNN", "widths": [8, 16], "pool": "avg"}


def test_ties_at_the_threshold_count_as_pneumonia():
    probs = torch.tensor([1.0] * 60 + [0.2] * 40)
    labels = torch.tensor([1] * 60 + [0] * 40)
    threshold = youden_threshold(probs, labels)
    assert threshold == 1.0
    metrics = binary_metrics(probs, labels, threshold)
    assert metrics["sensitivity"] == 1.0 and metrics["specificity"] == 1.0
    assert metrics["acc"] == 1.0 and metrics["auroc"] == 1.0
    assert decide(torch.tensor([0.3, 0.5, 0.7]), 0.5).tolist() == [False, True, True]


def test_youden_threshold_keeps_the_operating_point_it_was_read_from():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (400,), generator=g)
    probs = (torch.rand(400, generator=g) * 0.6 + labels * 0.3).round(decimals=2)  # many ties
    t = youden_threshold(probs, labels)
    m = binary_metrics(probs, labels, t)
    best = max(
        float(binary_metrics(probs, labels, float(c))["sensitivity"])
        + float(binary_metrics(probs, labels, float(c))["specificity"])
        for c in probs.unique()
    )
    assert float(m["sensitivity"] + m["specificity"]) == pytest.approx(best)


def test_confusion_matrix_of_the_report_agrees_with_the_metrics_on_ties(monkeypatch):
    probs = torch.tensor([0.5, 0.5, 0.5, 0.2, 0.9, 0.1])
    labels = torch.tensor([1, 0, 1, 0, 1, 1])
    counts = {}

    def capture(self, matrix, **kwargs):  # the image the callback draws: its counts
        counts["cm"] = matrix.tolist()

    import matplotlib.axes

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", capture)
    confusion_figure(probs, labels, 0.5)
    (tn, fp), (fn, tp) = counts["cm"]
    m = binary_metrics(probs, labels, 0.5)
    assert tp / (tp + fn) == pytest.approx(float(m["sensitivity"]))
    assert tn / (tn + fp) == pytest.approx(float(m["specificity"]))
    assert (tp, fp) == (3, 1)


def test_probabilities_are_float32_and_fine_grained_under_bf16_autocast():
    torch.manual_seed(0)
    model = XrayClassifier(
        backbone=BACKBONE,
        head={"_target_": "xray_loss.heads.CEHead"},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
    ).eval()
    with torch.no_grad():
        model.head.linear.weight.mul_(40)  # confident logits: where bf16 would round to 1.0
    images = torch.randint(0, 256, (256, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        fp32 = model.predict_proba(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images)
            bf16 = model.predict_proba(images)
    assert logits.dtype == torch.float32 and bf16.dtype == torch.float32
    assert fp32.unique().numel() == 256
    assert bf16.unique().numel() == fp32.unique().numel()
    # a bf16 head would leave a few hundred levels in [0.5, 1): the values must be finer
    assert (bf16 - fp32).abs().max() < 0.05


def test_the_roc_figure_names_its_auroc_and_operating_point():
    probs = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.9, 0.2])
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    fig = roc_figure(probs, labels, 0.35)
    ax = fig.axes[0]
    # AUROC: 8 of the 9 (pneumonia, normal) pairs ranked right; at 0.35: 3/3 found, 1/3 false
    assert ax.get_title() == "test ROC, AUROC 0.889 (n=6)"
    (legend,) = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == "threshold 0.350: sens 1.00, spec 0.67"
