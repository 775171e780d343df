"""Grad-CAM heat maps for the positive class: where the model looked for pneumonia.

The map is taken at the backbone's last feature map (the input of its global pooling), weighted
by the gradient of the decision logit log-odds(pneumonia) (z for one-logit heads, z1 - z0 for
CE), as in Selvaraju et al. (2017).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _feature_layer(backbone: nn.Module) -> tuple[nn.Module, bool]:
    """(module, use_input): the global pool (its input is the map) or else the last conv."""
    pools = [m for m in backbone.modules() if isinstance(m, _POOLS)]
    if pools:
        return pools[-1], True
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1], False


def decision_logit(logits: torch.Tensor) -> torch.Tensor:
    """log-odds of pneumonia for one- and two-logit heads."""
    return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]


def grad_cam(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Heat maps in [0, 1], shape (N, H, W), for a batch of images (any dtype the model takes)."""
    layer, use_input = _feature_layer(model.backbone)
    captured: dict[str, torch.Tensor] = {}

    def keep(tensor: torch.Tensor) -> None:
        tensor.retain_grad()
        captured["map"] = tensor

    if use_input:
        handle = layer.register_forward_pre_hook(lambda m, args: keep(args[0]))
    else:
        handle = layer.register_forward_hook(lambda m, args, out: keep(out))
    try:
        with torch.enable_grad():
            logits = model(images)
            decision_logit(logits).sum().backward()
    finally:
        handle.remove()
    fmap, grad = captured["map"], captured["map"].grad
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * fmap).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    model.zero_grad(set_to_none=True)
    return (cam / peak).detach()
