"""Backbones: image -> feature vector. Each exposes ``out_features`` and ``in_chans``.

The data pipeline always delivers one channel; a backbone built with ``in_chans=1`` takes it
as is (for torchvision models the stem conv is rebuilt for one channel, and pretrained RGB stem
weights are summed over their input channels, which is exactly the RGB network applied to a grey
image repeated three times). ``in_chans=3`` keeps the original stem; the classifier then repeats
the grey channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import nn


class SmallCNN(nn.Module):
    """A VGG-style CNN: conv-BN-ReLU blocks, max-pool between stages, then a global pool.

    Default widths train in seconds per epoch on a laptop CPU at 64 px. The global pool is
    ``max`` by default: an opacity is local, and averaging over the whole image dilutes it.
    """

    def __init__(
        self,
        in_chans: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks_per_stage: int = 1,
        dropout: float = 0.0,
        pool: str = "max",
    ) -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"model.backbone.pool must be 'max' or 'avg', got {pool!r}.")
        layers: list[nn.Module] = []
        channels = in_chans
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(blocks_per_stage):
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
        global_pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        layers += [global_pool, nn.Flatten()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.in_chans = in_chans
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# name -> (attribute path of the stem conv, attribute of the classifier to drop)
_TORCHVISION = {
    "resnet18": ("conv1", "fc"),
    "resnet50": ("conv1", "fc"),
    "densenet121": ("features.conv0", "classifier"),
    "efficientnet_b0": ("features.0.0", "classifier"),
}


class _OfflineWeightsError(RuntimeError):
    pass


def _get_module(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _set_module(root: nn.Module, path: str, value: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = _get_module(root, parent_path) if parent_path else root
    setattr(parent, name, value)


def _load_weights(name: str, weights: str):
    """The torchvision weights enum member called ``weights`` (e.g. IMAGENET1K_V1, DEFAULT)."""
    enum = torchvision.models.get_model_weights(name)
    try:
        return enum[weights]
    except KeyError:
        valid = [w.name for w in enum] + ["DEFAULT"]
        raise ValueError(
            f"model.weights={weights!r} is not a weights name of {name}; valid: {valid} or null."
        ) from None


def torchvision_backbone(name: str, weights: str | None = None, in_chans: int = 1) -> nn.Module:
    """A torchvision classification model with its classifier replaced by ``nn.Identity``.

    ``weights`` is a torchvision weights name (e.g. ``IMAGENET1K_V1``) or None. Weights are read
    from the torch hub cache (``$TORCH_HOME/hub/checkpoints``); when the file is missing and the
    machine is offline, the error says which file to put where.
    """
    if name not in _TORCHVISION:
        raise ValueError(f"model.name={name!r} is not supported; valid: {sorted(_TORCHVISION)}.")
    if in_chans not in (1, 3):
        raise ValueError(f"model.in_chans must be 1 or 3, got {in_chans}.")
    enum = _load_weights(name, weights) if weights else None
    try:
        model = torchvision.models.get_model(name, weights=enum)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        hub = torch.hub.get_dir()
        file = enum.url.rsplit("/", 1)[-1]
        raise _OfflineWeightsError(
            f"Could not load pretrained weights {name}/{weights} ({err}). They are downloaded "
            f"from {enum.url}; on an offline machine download that file elsewhere and place it "
            f"at {hub}/checkpoints/{file} (or set TORCH_HOME), or use model.weights=null."
        ) from None
    stem_path, head_path = _TORCHVISION[name]
    out_features = _classifier_in_features(_get_module(model, head_path))
    _set_module(model, head_path, nn.Identity())
    if in_chans == 1:
        stem = _get_module(model, stem_path)
        gray = nn.Conv2d(
            1,
            stem.out_channels,
            stem.kernel_size,
            stem.stride,
            stem.padding,
            bias=stem.bias is not None,
        )
        if enum is not None:
            with torch.no_grad():
                gray.weight.copy_(stem.weight.sum(dim=1, keepdim=True))
                if stem.bias is not None:
                    gray.bias.copy_(stem.bias)
        _set_module(model, stem_path, gray)
    model.in_chans = in_chans
    model.out_features = out_features
    return model


def _classifier_in_features(classifier: nn.Module) -> int:
    if isinstance(classifier, nn.Linear):
        return classifier.in_features
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    return linears[0].in_features
