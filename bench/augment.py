"""Training augmentation per image: the batched implementation (xray_loss.data.augment) against
torchvision transforms v2 applied image by image under a per-image seed, which it replaced.

Both draw each image's parameters from its own generator (what keeps a run exact across workers
and resumes); v2 has to fork the global RNG per image for that. One CPU thread, as in a
DataLoader worker.

    python bench/augment.py [--sizes 32 64 128 224] [--images 512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402
from xray_loss.data.augment import AugmentConfig, BatchAugment  # noqa: E402


def per_image_v2(cfg: AugmentConfig, size: int) -> v2.Compose:
    """The same recipe as torchvision v2 transforms of one image."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(cfg.crop_scale, 1.0), ratio=(0.9, 1.1)),
            v2.RandomRotation(cfg.rotation),
            v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast),
        ]
    )


def best_of(repeats: int, fn, *args) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 224])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = AugmentConfig()
    print(machine())
    print(f"{args.images} images, batches of {args.batch}, 1 thread; ms per image (best of "
          f"{args.repeats})")  # fmt: skip
    print(f"{'size':>5} {'batched':>9} {'v2 per image':>13} {'speed-up':>9}")
    for size in args.sizes:
        images = torch.randint(0, 256, (args.images, 1, size, size), dtype=torch.uint8)
        a = best_of(args.repeats, batched, cfg, images, args.batch) / args.images * 1e3
        b = best_of(args.repeats, image_by_image, cfg, images) / args.images * 1e3
        print(f"{size:>5} {a:>9.3f} {b:>13.3f} {b / a:>8.1f}x")


def batched(cfg: AugmentConfig, images: torch.Tensor, batch: int) -> None:
    augment = BatchAugment(cfg)
    for i in range(0, len(images), batch):
        augment(images[i : i + batch], list(range(i, min(i + batch, len(images)))))


def image_by_image(cfg: AugmentConfig, images: torch.Tensor) -> None:
    transform = per_image_v2(cfg, images.shape[-1])
    for seed, image in enumerate(images):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transform(image)


if __name__ == "__main__":
    main()
