"""Training-time augmentation of uint8 radiographs: small rotation, mild random resized crop,
brightness/contrast jitter, optional horizontal flip.

One implementation, ``BatchAugment``: the parameters are drawn per image, and the whole batch is
warped at once by one ``affine_grid``/``grid_sample``, on whatever device the batch lives (a
DataLoader worker's CPU, or the GPU when the data is kept there). Per-image torchvision v2
transforms did the same at 36x the cost at 32 px and 3x at 224 px on one CPU thread
(bench/augment.py, bench/README.md): at the study's small sizes they were most of an epoch.

An image's draws come from its own generator, seeded by (seed, epoch, index)
(``xray_loss.data.order.sample_seed``), never from a process's global RNG: augmentation is a
pure function of those three, whatever the workers, their number or a resume.

Horizontal flip is off by default: the heart sits on the patient's left, so a flipped chest is
not a plausible radiograph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the augmentation (``data.augment`` in the config)."""

    enabled: bool = True
    rotation: float = 10.0  # degrees, +-
    crop_scale: float = 0.85  # a random crop keeps this fraction of the area or more
    brightness: float = 0.15
    contrast: float = 0.15
    hflip: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"data.augment.crop_scale must be in (0, 1], got {self.crop_scale}.")
        for key in ("rotation", "brightness", "contrast"):
            if getattr(self, key) < 0:
                raise ValueError(f"data.augment.{key} must be >= 0, got {getattr(self, key)}.")


class BatchAugment(nn.Module):
    """Per-sample random affine + brightness/contrast on a batch, on whatever device it lives.

    Input: uint8 or float images (N, C, H, W); output: float images in [0, 1].
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, x: torch.Tensor, seeds: list[int] | None = None) -> torch.Tensor:
        """``seeds``: one per image, its draws' generator (None: the global RNG)."""
        cfg = self.cfg
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        n, dev = x.shape[0], x.device
        if seeds is None:
            draws = torch.rand(n, 7)
        else:
            draws = torch.stack(
                [torch.rand(7, generator=torch.Generator().manual_seed(s)) for s in seeds]
            )
        draws = draws.to(dev)

        def uniform(column: int, lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * draws[:, column]

        angle = uniform(0, -cfg.rotation, cfg.rotation) * (math.pi / 180.0)
        # RandomResizedCrop with aspect ~1: a crop of side sqrt(area) placed anywhere inside
        side = torch.sqrt(uniform(1, cfg.crop_scale, 1.0))
        tx = uniform(2, -1.0, 1.0) * (1.0 - side)
        ty = uniform(3, -1.0, 1.0) * (1.0 - side)
        flip = torch.ones(n, device=dev)
        if cfg.hflip:
            flip = torch.where(draws[:, 4] < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        bright = uniform(5, 1 - cfg.brightness, 1 + cfg.brightness).view(n, 1, 1, 1)
        contrast = uniform(6, 1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1)
        x = x * bright
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * contrast + mean).clamp_(0.0, 1.0)
