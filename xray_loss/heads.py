"""Loss heads: how many logits the classifier emits, the loss on them, and P(pneumonia).

CE on two logits is BCE on their difference d = z1 - z0, but d moves twice as fast: CE at lr
trains exactly like BCE with head lr 2*lr (and the head initialised at w1 - w0). So a BCE/CE
gap at equal nominal lr measures the head's effective lr, not the loss. The derivation, the
matched heads (``bce_matched``, ``ce_matched``) that reproduce the other head's trajectory, and
what cannot be matched (refused by ``xray_loss.checks.matched_head_problem``): docs/heads.md.

Building a head draws nothing from the global RNG (a private generator, seeded from one draw
the module takes whatever the head), so runs that differ only in the head share everything
else; the head's parameter group gets ``lr * lr_scale`` and ``weight_decay / lr_scale``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss


def _default_linear_init(
    out_features: int, in_features: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.Linear``'s default init (uniform +-1/sqrt(fan_in) for weight and bias), seeded."""
    bound = 1.0 / math.sqrt(in_features)
    weight = (torch.rand(out_features, in_features, generator=generator) * 2 - 1) * bound
    bias = (torch.rand(out_features, generator=generator) * 2 - 1) * bound
    return weight, bias


def _counts(class_counts: Sequence[int] | None, option: str) -> tuple[int, int]:
    if class_counts is None or len(class_counts) != 2 or min(class_counts) <= 0:
        raise ValueError(
            f"loss.{option}=auto needs the training split's class counts with both classes "
            f"present, got {class_counts}; give a number instead or fix the data."
        )
    return int(class_counts[0]), int(class_counts[1])


class Head(nn.Module):
    """A linear layer on the backbone features plus the loss and the link to P(pneumonia)."""

    name = "head"
    n_logits = 1

    def __init__(self, in_features: int, init_seed: int = 0, lr_scale: float = 1.0) -> None:
        super().__init__()
        # skip_init: no default init, so no draw from the global RNG (whatever n_logits is)
        self.linear = nn.utils.skip_init(nn.Linear, in_features, self.n_logits)
        self.lr_scale = float(lr_scale)
        with torch.no_grad():
            weight, bias = self._initial_weights(
                in_features, torch.Generator().manual_seed(init_seed)
            )
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def _initial_weights(
        self, in_features: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _default_linear_init(self.n_logits, in_features, generator)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_odds(self, logits: torch.Tensor) -> torch.Tensor:
        """The decision logit d, P(pneumonia) = sigmoid(d): what the head-independent measures
        (NLL, Brier) are computed from. A head that defines only ``prob`` gets logit(prob)."""
        if type(self).prob is Head.prob:
            raise NotImplementedError(f"{type(self).__name__} defines neither log_odds nor prob")
        return torch.logit(self.prob(logits).double()).to(logits.dtype)

    def prob(self, logits: torch.Tensor) -> torch.Tensor:
        """P(pneumonia) for each row of logits."""
        return torch.sigmoid(self.log_odds(logits))


class BCEHead(Head):
    """One logit, ``BCEWithLogits``, sigmoid.

    ``pos_weight``: None, a float, or "auto" (= n_normal / n_pneumonia of the training split).
    ``match="ce"``: initialise u = w1 - w0 from a CE-style draw and train the head at 2x lr (and
    half the weight decay), so this head follows CE's trajectory exactly.
    """

    name = "bce"
    n_logits = 1

    def __init__(
        self,
        in_features: int,
        pos_weight: float | str | None = None,
        match: str | None = None,
        class_counts: Sequence[int] | None = None,
        init_seed: int = 0,
    ) -> None:
        if match not in (None, "ce"):
            raise ValueError(f"loss.match for the BCE head must be null or 'ce', got {match!r}.")
        self.match = match
        super().__init__(in_features, init_seed, lr_scale=2.0 if match == "ce" else 1.0)
        if pos_weight == "auto":
            n_neg, n_pos = _counts(class_counts, "pos_weight")
            pos_weight = n_neg / n_pos
        self.register_buffer(
            "pos_weight",
            None if pos_weight is None else torch.tensor([float(pos_weight)]),
            persistent=False,
        )

    def _initial_weights(self, in_features, generator):
        if self.match == "ce":
            weight, bias = _default_linear_init(2, in_features, generator)
            return (weight[1] - weight[0]).unsqueeze(0), (bias[1] - bias[0]).unsqueeze(0)
        return super()._initial_weights(in_features, generator)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits[:, 0], target.to(logits.dtype), pos_weight=self.pos_weight
        )

    def log_odds(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0]


class CEHead(Head):
    """Two logits, ``CrossEntropyLoss``, softmax[:, 1].

    ``class_weights``: None, [w_normal, w_pneumonia], or "auto" (balanced: n / (2 n_c)); note
    that ``CrossEntropyLoss(weight=...)`` divides by the summed weights of the batch, whereas
    BCE's ``pos_weight`` does not. ``label_smoothing`` eps equals BCE with soft targets
    y(1 - eps/2) + (1 - y) eps/2. ``match="bce"``: init w1 = u/2, w0 = -u/2 from a BCE-style draw
    and train the head at lr/2, so this head follows BCE's trajectory exactly.
    """

    name = "ce"
    n_logits = 2

    def __init__(
        self,
        in_features: int,
        class_weights: Sequence[float] | str | None = None,
        label_smoothing: float = 0.0,
        match: str | None = None,
        class_counts: Sequence[int] | None = None,
        init_seed: int = 0,
    ) -> None:
        if match not in (None, "bce"):
            raise ValueError(f"loss.match for the CE head must be null or 'bce', got {match!r}.")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.match = match
        super().__init__(in_features, init_seed, lr_scale=0.5 if match == "bce" else 1.0)
        if class_weights == "auto":
            n_neg, n_pos = _counts(class_counts, "class_weights")
            total = n_neg + n_pos
            class_weights = [total / (2 * n_neg), total / (2 * n_pos)]
        if class_weights is not None and len(class_weights) != 2:
            raise ValueError(
                f"loss.class_weights must be null, auto or two numbers, got {class_weights}."
            )
        self.register_buffer(
            "class_weights",
            None if class_weights is None else torch.tensor([float(w) for w in class_weights]),
            persistent=False,
        )
        self.label_smoothing = float(label_smoothing)

    def _initial_weights(self, in_features, generator):
        if self.match == "bce":
            u, c = _default_linear_init(1, in_features, generator)
            return torch.cat([-u / 2, u / 2]), torch.cat([-c / 2, c / 2])
        return super()._initial_weights(in_features, generator)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=self.label_smoothing)

    def log_odds(self, logits: torch.Tensor) -> torch.Tensor:
        # the difference logit: sigmoid(d) == softmax(z)[:, 1], without a softmax over 2 columns
        return logits[:, 1] - logits[:, 0]


class FocalHead(Head):
    """One logit, ``torchvision.ops.sigmoid_focal_loss`` (mean), sigmoid.

    ``alpha``: None (no class weighting), a float weight of the pneumonia class, or "auto"
    (= fraction of normal cases, so the minority class weighs more).
    """

    name = "focal"
    n_logits = 1

    def __init__(
        self,
        in_features: int,
        gamma: float = 2.0,
        alpha: float | str | None = None,
        class_counts: Sequence[int] | None = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__(in_features, init_seed)
        if alpha == "auto":
            n_neg, n_pos = _counts(class_counts, "alpha")
            alpha = n_neg / (n_neg + n_pos)
        if alpha is not None and not 0.0 < float(alpha) < 1.0:  # 0 or 1: a class weighs nothing
            raise ValueError(f"loss.alpha must be null, auto or in (0, 1), got {alpha}.")
        if float(gamma) < 0:
            raise ValueError(f"loss.gamma must be >= 0, got {gamma}.")
        self.gamma = float(gamma)
        self.alpha = -1.0 if alpha is None else float(alpha)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(
            logits[:, 0],
            target.to(logits.dtype),
            alpha=self.alpha,
            gamma=self.gamma,
            reduction="mean",
        )

    def log_odds(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0]
