"""The head-independent measures: NLL and Brier of P(pneumonia) are the same numbers for every
head, and equal a head's own objective only where that objective is the plain likelihood; AUROC
is exact, so that equal rankings tie and the earlier checkpoint is kept."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from xray_loss.heads import BCEHead, CEHead, FocalHead
from xray_loss.metrics import auroc, binary_metrics, brier, nll


def _logits(head, n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 8, generator=g) * 3
    labels = (torch.rand(n, generator=g) < 0.6).long()
    return head(features), labels


@pytest.mark.parametrize(
    ("head", "equals_nll"),
    [
        (BCEHead(8), True),
        (CEHead(8), True),
        (BCEHead(8, pos_weight=0.35), False),  # weighted: not the likelihood
        (CEHead(8, class_weights=[1.9, 0.7]), False),
        (CEHead(8, label_smoothing=0.1), False),  # soft targets
        (FocalHead(8, gamma=2.0), False),  # focusing down-weights easy images
    ],
    ids=["bce", "ce", "bce_pos_weight", "ce_class_weights", "ce_smoothing", "focal"],
)
def test_the_objective_is_the_nll_only_for_the_plain_heads(head, equals_nll):
    with torch.no_grad():
        logits, labels = _logits(head)
        objective = head.loss(logits, labels)
        measured = nll(head.log_odds(logits), labels)
    assert torch.allclose(objective, measured, atol=1e-6) == equals_nll
    # the NLL is the likelihood of the head's own probabilities, whatever its objective
    probs = head.prob(logits).double()
    likelihood = -(labels * probs.log() + (1 - labels) * (1 - probs).log()).mean()
    assert float(measured) == pytest.approx(float(likelihood), rel=1e-5)


def test_bce_and_ce_with_the_same_decision_logit_get_the_same_measures():
    d = torch.linspace(-30, 30, 41)  # confident errors included: no clipping at log(1e-7)
    labels = (torch.arange(41) % 2).long()
    ce_logits = torch.stack([torch.zeros(41), d], dim=1)
    bce, ce = BCEHead(4), CEHead(4)
    assert torch.equal(bce.log_odds(d[:, None]), ce.log_odds(ce_logits))
    assert float(nll(ce.log_odds(ce_logits), labels)) > 5  # a 30-logit error costs ~30 nats
    got = binary_metrics(ce.prob(ce_logits), labels, 0.5, log_odds=ce.log_odds(ce_logits))
    assert float(got["nll"]) == pytest.approx(float(bce.loss(d[:, None], labels)), rel=1e-6)
    assert float(got["brier"]) == pytest.approx(float(brier(torch.sigmoid(d), labels)))


def test_a_head_with_only_prob_gets_its_log_odds_from_it():
    class Prob(BCEHead):
        def log_odds(self, logits):  # back to the base: a head that defines prob only
            return super(BCEHead, self).log_odds(logits)

        def prob(self, logits):
            return torch.sigmoid(logits[:, 0])

    head = Prob(4)
    logits = torch.tensor([[-3.0], [0.5], [2.0]])
    assert torch.allclose(head.log_odds(logits), logits[:, 0], atol=1e-5)


def test_auroc_is_the_share_of_pairs_ranked_right_and_equal_rankings_tie_exactly():
    g = torch.Generator().manual_seed(1)
    probs, labels = torch.rand(500, generator=g), (torch.rand(500, generator=g) < 0.7).long()
    probs[:40] = probs[40]  # ties count half
    assert float(auroc(probs, labels)) == pytest.approx(float(binary_auroc(probs, labels)), 1e-6)
    pos, neg = probs[labels == 1], probs[labels == 0]
    pairs = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    assert float(auroc(probs, labels)) == pytest.approx(float(pairs.mean()), abs=1e-12)
    # two epochs that misrank the same number of pairs, differently: the same value to the bit
    labels = torch.tensor([0, 1] * 50)
    base = torch.linspace(0.01, 0.99, 100)
    first, second = base.clone(), base.clone()
    first[[10, 11]] = first[[11, 10]]  # swaps one (pneumonia, normal) pair
    second[[50, 51]] = second[[51, 50]]  # another pair, elsewhere
    second = second**0.7  # and a different calibration: the ranking is what counts
    assert auroc(first, labels).item() == auroc(second, labels).item()
