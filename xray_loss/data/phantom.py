"""Procedural chest-radiograph phantoms: the embedded, offline default data set.

Each image is drawn from a handful of random anatomical parameters (body outline, lung fields,
heart and mediastinum, spine, rib arcs, diaphragm domes, clavicles) plus acquisition jitter
(position, scale, rotation, contrast, gamma, noise, soft tissue texture). Pneumonia cases add
patchy or lobar opacities restricted to the lung fields, with a wide range of size and contrast so
that some are faint: a small CNN gets most cases right but not all, which keeps loss-head and
learning-rate effects visible. Normal cases carry confounders (vessel markings near the hila and
soft tissue shadows) so that "any bright spot in a lung" is not a perfect rule.

Generation is vectorised over a chunk of images with a seeded ``torch.Generator``: the same seed
gives the same images on any machine.
"""

from __future__ import annotations

import math

import torch

from xray_loss.data.base import Split, XrayDataModule

_CHUNK = 256


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    """Uniform samples in [lo, hi) shaped (n, 1, 1) so they broadcast over an image."""
    return (lo + (hi - lo) * torch.rand(n, generator=g)).view(n, 1, 1)


def _ellipse(x: torch.Tensor, y: torch.Tensor, cx, cy, ax, ay, edge: float) -> torch.Tensor:
    """Soft ellipse mask: 1 inside, 0 outside, with a sigmoid edge of width ``edge``."""
    r = torch.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return torch.sigmoid((1.0 - r) / edge)


def _smooth_noise(g: torch.Generator, n: int, size: int, cells: int) -> torch.Tensor:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled bicubically."""
    coarse = torch.randn(n, 1, cells, cells, generator=g)
    fine = torch.nn.functional.interpolate(
        coarse, size=(size, size), mode="bicubic", align_corners=False
    )
    return fine[:, 0].clamp(-2.5, 2.5) / 2.5


def _opacities(
    g: torch.Generator, x: torch.Tensor, y: torch.Tensor, lungs: tuple, difficulty: float
) -> torch.Tensor:
    """Pneumonia-like opacities inside one or both lungs (float map, same shape as x)."""
    n = x.shape[0]
    size = x.shape[-1]
    out = torch.zeros_like(x)
    lobar = torch.rand(n, generator=g) < 0.35
    n_blobs = torch.randint(1, 5, (n,), generator=g)
    # Strength: log-uniform so there are many faint cases; difficulty > 1 makes them fainter.
    strength = torch.exp(torch.empty(n).uniform_(math.log(0.2), math.log(1.0), generator=g))
    strength = (strength / difficulty).view(n, 1, 1)
    texture = 0.6 + 0.4 * _smooth_noise(g, n, size, 9).abs()
    for k in range(4):
        active = (k < n_blobs).float().view(n, 1, 1)
        side = torch.randint(0, 2, (n,), generator=g)
        cx = torch.where(side == 0, lungs[0][0].view(n), lungs[1][0].view(n)).view(n, 1, 1)
        cy = torch.where(side == 0, lungs[0][1].view(n), lungs[1][1].view(n)).view(n, 1, 1)
        ax = torch.where(side == 0, lungs[0][2].view(n), lungs[1][2].view(n)).view(n, 1, 1)
        ay = torch.where(side == 0, lungs[0][3].view(n), lungs[1][3].view(n)).view(n, 1, 1)
        # a point inside the chosen lung: above the diaphragm, within the lung's width there
        v = _u(g, n, -0.8, 0.5)
        px = cx + _u(g, n, -0.8, 0.8) * ax * (0.82 + 0.2 * v)
        py = cy + v * ay
        lob = lobar.view(n, 1, 1)
        rad = torch.where(lob, _u(g, n, 0.16, 0.30), _u(g, n, 0.06, 0.14))
        blob = torch.exp(-(((x - px) ** 2 + (y - py) ** 2) / (2 * rad**2)))
        weight = torch.where(lob & (k > 0), torch.zeros_like(active), active)
        out = out + weight * blob
    return strength * out.clamp(max=1.5) * texture


def _render(g: torch.Generator, labels: torch.Tensor, size: int, difficulty: float) -> torch.Tensor:
    """Render one chunk of phantoms as floats in [0, 1], shape (n, size, size)."""
    n = labels.shape[0]
    lin = torch.linspace(-1.0, 1.0, size)
    y0, x0 = torch.meshgrid(lin, lin, indexing="ij")
    # acquisition geometry: shift, scale and a small rotation of the whole chest
    dx, dy = _u(g, n, -0.07, 0.07), _u(g, n, -0.07, 0.07)
    scale = _u(g, n, 0.88, 1.08)
    angle = _u(g, n, -0.09, 0.09)
    xr = (torch.cos(angle) * x0 - torch.sin(angle) * y0 - dx) / scale
    yr = (torch.sin(angle) * x0 + torch.cos(angle) * y0 - dy) / scale
    x, y = xr, yr
    edge = 2.5 / size

    body = _ellipse(x, y, 0.0, 0.08, _u(g, n, 0.78, 0.9), _u(g, n, 0.98, 1.1), 0.04)
    img = 0.08 + 0.47 * body

    lung_ax, lung_ay = _u(g, n, 0.25, 0.31), _u(g, n, 0.42, 0.52)
    lungs = []
    lung_mask = torch.zeros_like(x)
    for sign in (-1.0, 1.0):
        cx = sign * _u(g, n, 0.33, 0.42)
        cy = _u(g, n, -0.12, -0.02)
        ax = lung_ax * _u(g, n, 0.92, 1.08)
        ay = lung_ay * _u(g, n, 0.94, 1.06)
        # lung fields are narrow at the apex and wide at the base
        widen = (0.82 + 0.2 * ((y - cy) / ay).clamp(-1.0, 1.0)).clamp(min=0.45)
        lung = _ellipse(x, y, cx, cy, ax * widen, ay, 0.06)
        # diaphragm dome: highest under the middle of each lung, lower at the costophrenic angle
        dome_y = cy + 0.62 * ay + 1.6 * (x - cx) ** 2 + _u(g, n, -0.05, 0.05)
        lung = lung * torch.sigmoid((dome_y - y) / edge)
        lung_mask = torch.maximum(lung_mask, lung)
        lungs.append((cx, cy, ax, ay))
    img = img - _u(g, n, 0.28, 0.38) * lung_mask

    # heart and mediastinum, offset to the patient's left (image right)
    heart = _ellipse(
        x,
        y,
        _u(g, n, 0.06, 0.14),
        _u(g, n, 0.18, 0.28),
        _u(g, n, 0.2, 0.27),
        _u(g, n, 0.22, 0.3),
        0.08,
    )
    mediastinum = torch.sigmoid((0.1 - x.abs()) / 0.03) * torch.sigmoid((0.3 - y) / 0.1)
    img = img + 0.25 * torch.maximum(heart, mediastinum) * body
    spine = torch.sigmoid((0.05 - x.abs()) / (2 * edge)) * body
    img = img + 0.06 * spine

    # ribs: curved bright bands over the thorax, plus clavicles near the top
    period = _u(g, n, 0.17, 0.22)
    phase = _u(g, n, 0, 2 * math.pi)
    bend = _u(g, n, 0.35, 0.55)
    ribs = 0.5 + 0.5 * torch.cos(2 * math.pi * (y - bend * x**2) / period + phase)
    ribs = torch.sigmoid((ribs - 0.8) / 0.05) * torch.sigmoid((0.75 - x.abs()) / 0.05)
    img = img + _u(g, n, 0.04, 0.08) * ribs * body * torch.sigmoid((0.55 - y) / 0.05)
    clavicle_y = -0.62 + 0.25 * x.abs() + _u(g, n, -0.04, 0.04)
    img = img + 0.1 * torch.exp(-((y - clavicle_y) ** 2) / 0.0015) * (x.abs() < 0.6) * body

    # confounders present in both classes: vessel markings near the hila, soft tissue shadows
    hilar = torch.zeros_like(x)
    for cx, cy, ax, ay in lungs:
        hilar = hilar + _ellipse(x, y, cx * 0.55, cy + 0.05, ax * 0.45, ay * 0.35, 0.15)
    veins = 0.5 + 0.5 * _smooth_noise(g, n, size, 14)
    img = img + _u(g, n, 0.02, 0.06) * hilar * veins * lung_mask
    shadow = _ellipse(x, y, _u(g, n, -0.5, 0.5), _u(g, n, 0.2, 0.5), 0.25, 0.18, 0.2)
    img = img + _u(g, n, 0.0, 0.08) * shadow * (torch.rand(n, generator=g) < 0.3).view(n, 1, 1)

    opac = _opacities(g, x, y, tuple(lungs), difficulty)
    img = img + labels.view(n, 1, 1).float() * opac * lung_mask

    # acquisition: texture, contrast, brightness, gamma, noise
    img = img + 0.035 * _smooth_noise(g, n, size, 6) + 0.02 * _smooth_noise(g, n, size, 24)
    img = (img - 0.35) * _u(g, n, 0.8, 1.25) + 0.35 + _u(g, n, -0.07, 0.07)
    img = img.clamp(0.0, 1.0) ** _u(g, n, 0.8, 1.25)
    img = img + _u(g, n, 0.01, 0.04) * torch.randn(img.shape, generator=g)
    return img.clamp(0.0, 1.0)


def generate_phantoms(
    n: int,
    image_size: int = 64,
    pneumonia_fraction: float = 0.73,
    seed: int = 0,
    difficulty: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make ``n`` phantom radiographs.

    Returns uint8 images of shape (n, 1, image_size, image_size) and int64 labels
    (1 = pneumonia). The exact count of pneumonia cases is ``round(n * pneumonia_fraction)``.
    """
    g = torch.Generator().manual_seed(int(seed))
    n_pos = round(n * pneumonia_fraction)
    labels = torch.zeros(n, dtype=torch.int64)
    labels[torch.randperm(n, generator=g)[:n_pos]] = 1
    images = torch.empty(n, 1, image_size, image_size, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        chunk = _render(g, labels[start:stop], image_size, difficulty)
        images[start:stop, 0] = (chunk * 255.0).round().to(torch.uint8)
    return images, labels


class PhantomDataModule(XrayDataModule):
    """The embedded default: phantom train/val/test splits generated in memory from ``data_seed``.

    The data seed is separate from the run seed, so runs with different seeds train on the
    same data set (as they would on a real one) and differ only in training randomness.
    """

    name = "phantom"

    def __init__(
        self,
        n_train: int = 2000,
        n_val: int = 500,
        n_test: int = 500,
        image_size: int = 64,
        pneumonia_fraction: float = 0.73,
        difficulty: float = 1.0,
        data_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
        self.image_size = int(image_size)
        self.pneumonia_fraction = float(pneumonia_fraction)
        self.difficulty = float(difficulty)
        self.data_seed = int(data_seed)

    def load_splits(self) -> dict[str, Split]:
        splits = {}
        for offset, (name, n) in enumerate(self.sizes.items()):
            images, labels = generate_phantoms(
                n,
                self.image_size,
                self.pneumonia_fraction,
                seed=self.data_seed * 1000 + offset,
                difficulty=self.difficulty,
            )
            splits[name] = Split(images, labels)
        return splits
