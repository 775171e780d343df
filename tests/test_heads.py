"""The BCE/CE mathematics the project rests on, checked on the real heads and module."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from tests.fixtures import train_steps
from xray_loss.heads import BCEHead, CEHead, FocalHead
from xray_loss.module import XrayClassifier

TINY_BACKBONE = {"_target_": "xray_loss.backbones.SmallCNN", "widths": [4, 8], "pool": "max"}
HEADS = {
    "bce": {"_target_": "xray_loss.heads.BCEHead"},
    "bce_matched": {"_target_": "xray_loss.heads.BCEHead", "match": "ce"},
    "ce": {"_target_": "xray_loss.heads.CEHead"},
    "ce_matched": {"_target_": "xray_loss.heads.CEHead", "match": "bce"},
}


def test_ce_on_two_logits_equals_bce_on_their_difference():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(257, 2, generator=g, dtype=torch.float64) * 4
    y = torch.randint(0, 2, (257,), generator=g)
    d = z[:, 1] - z[:, 0]
    ce = F.cross_entropy(z, y, reduction="none")
    bce = F.binary_cross_entropy_with_logits(d, y.double(), reduction="none")
    torch.testing.assert_close(ce, bce, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.softmax(z, 1)[:, 1], torch.sigmoid(d))
    head = CEHead(in_features=3)
    torch.testing.assert_close(head.prob(z.float()), torch.sigmoid(d).float())
    torch.testing.assert_close(head.loss(z.float(), y), bce.mean().float(), rtol=1e-5, atol=1e-6)


def test_label_smoothing_is_bce_with_soft_targets():
    eps = 0.1
    z = torch.randn(64, 2, dtype=torch.float64)
    y = torch.randint(0, 2, (64,))
    ce = F.cross_entropy(z, y, label_smoothing=eps)
    soft = y * (1 - eps / 2) + (1 - y) * eps / 2
    bce = F.binary_cross_entropy_with_logits(z[:, 1] - z[:, 0], soft.double())
    torch.testing.assert_close(ce, bce)


def test_heads_have_the_right_number_of_logits_and_probabilities():
    h = torch.randn(5, 6)
    for head, n in ((BCEHead(6), 1), (CEHead(6), 2), (FocalHead(6), 1)):
        logits = head(h)
        assert logits.shape == (5, n)
        p = head.prob(logits)
        assert p.shape == (5,) and bool(((p >= 0) & (p <= 1)).all())


def test_auto_class_weights_follow_the_training_split():
    counts = [1341, 3875]  # Kermany train
    assert BCEHead(4, pos_weight="auto", class_counts=counts).pos_weight.item() == pytest.approx(
        1341 / 3875
    )
    w = CEHead(4, class_weights="auto", class_counts=counts).class_weights
    torch.testing.assert_close(w, torch.tensor([1.9448, 0.6730]), atol=1e-4, rtol=0)
    assert FocalHead(4, alpha="auto", class_counts=counts).alpha == pytest.approx(1341 / 5216)
    with pytest.raises(ValueError, match="class counts"):
        BCEHead(4, pos_weight="auto", class_counts=None)


def test_focal_head_uses_torchvision_loss():
    head = FocalHead(3, gamma=2.0, alpha=0.4)
    z = torch.randn(16, 1)
    y = torch.randint(0, 2, (16,))
    expected = sigmoid_focal_loss(z[:, 0], y.float(), alpha=0.4, gamma=2.0, reduction="mean")
    torch.testing.assert_close(head.loss(z, y), expected)


def test_matched_inits_relate_as_stated():
    ce, bce_m = CEHead(8, init_seed=3), BCEHead(8, match="ce", init_seed=3)
    w, b = ce.linear.weight, ce.linear.bias
    torch.testing.assert_close(bce_m.linear.weight[0], w[1] - w[0])
    torch.testing.assert_close(bce_m.linear.bias[0], b[1] - b[0])
    assert bce_m.lr_scale == 2.0
    bce, ce_m = BCEHead(8, init_seed=3), CEHead(8, match="bce", init_seed=3)
    torch.testing.assert_close(ce_m.linear.weight[1] - ce_m.linear.weight[0], bce.linear.weight[0])
    torch.testing.assert_close(ce_m.linear.weight[1] + ce_m.linear.weight[0], torch.zeros(8))
    assert ce_m.lr_scale == 0.5


def test_default_init_spread_of_the_ce_difference_logit_is_sqrt2_wider():
    n = 4000
    bce = torch.stack([BCEHead(64, init_seed=s).linear.weight[0] for s in range(n // 40)])
    ce = torch.stack([CEHead(64, init_seed=s).linear.weight for s in range(n // 40)])
    ratio = (ce[:, 1] - ce[:, 0]).std() / bce.std()
    assert ratio.item() == pytest.approx(math.sqrt(2), rel=0.05)


def _module(head: str, optimizer: dict, seed: int = 0) -> XrayClassifier:
    torch.manual_seed(seed)
    return XrayClassifier(backbone=TINY_BACKBONE, head=HEADS[head], optimizer=optimizer)


OPTIMIZERS = {
    "sgd_momentum": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9},
    "adam": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3},
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize(("head", "twin"), [("ce", "bce_matched"), ("bce", "ce_matched")])
def test_matched_heads_train_identically(optimizer, head, twin):
    """CE at lr == BCE with head init w1 - w0 and head lr 2*lr (and the converse)."""
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randint(0, 256, (16, 1, 16, 16), generator=g, dtype=torch.uint8),
            torch.randint(0, 2, (16,), generator=g),
        )
        for _ in range(13)
    ]
    a = _module(head, OPTIMIZERS[optimizer])
    b = _module(twin, OPTIMIZERS[optimizer])
    for pa, pb in zip(a.backbone.parameters(), b.backbone.parameters(), strict=True):
        assert torch.equal(pa, pb)  # same backbone initialisation
    pa, pb = train_steps(a, batches, 12), train_steps(b, batches, 12)
    assert (pa - 0.5).abs().max() > 0.01  # it did learn something
    torch.testing.assert_close(pa, pb, atol=2e-5, rtol=0)


def test_unmatched_heads_do_not_train_identically():
    """The converse check: without matching, CE and BCE at equal lr diverge apart."""
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randint(0, 256, (16, 1, 16, 16), generator=g, dtype=torch.uint8),
            torch.randint(0, 2, (16,), generator=g),
        )
        for _ in range(13)
    ]
    pa = train_steps(_module("ce", OPTIMIZERS["adam"]), batches, 12)
    pb = train_steps(_module("bce", OPTIMIZERS["adam"]), batches, 12)
    assert (pa - pb).abs().max() > 1e-3
