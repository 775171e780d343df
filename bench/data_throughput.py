"""Data-loading throughput: JPEG decoding every epoch vs the decode-once cache.

Iterates training epochs of the project's own KermanyDataModule DataLoader (no model) at
``--image-size`` and prints images/second for:
  decode/epoch  data.cache=false: every epoch decodes and resizes every JPEG
  cache cold    first run: building the uint8 store (decode once + write)
  cache warm    later runs: memory-mapped uint8 store
on the 224 px Kermany copies and on full-resolution files (made by upscaling some of them to
1,000-2,000 px, like the original data set's images), with the machine's core count.

    python bench/data_throughput.py --root ../shared/data/kermany224
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402
from xray_loss.data.kermany import KermanyDataModule  # noqa: E402


def make_fullres(source: Path, target: Path, n: int, seed: int = 0) -> Path:
    """Upscaled copies of ``n`` source images at 1,000-2,000 px a side (kept between runs)."""
    marker = target / f".complete-{n}"
    if marker.exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    rng = random.Random(seed)
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((source / "train" / cls).glob("*.jpeg"))
        k = n * (1 if cls == "NORMAL" else 3) // 4
        for path in rng.sample(files, k):
            w, h = rng.randint(1000, 2000), rng.randint(900, 1800)
            out = target / "train" / cls / path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as im:
                im.convert("L").resize((w, h), Image.BICUBIC).save(out, quality=92)
    marker.touch()
    return target


def epoch_rate(dm: KermanyDataModule, epochs: int) -> float:
    loader = dm.train_dataloader()
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, *_ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - start)


def measure(root: Path, image_size: int, workers: int, epochs: int, augment: bool) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="xray_cache_"))
    common = dict(
        root=str(root),
        image_size=image_size,
        test_fraction=0.15,
        batch_size=64,
        num_workers=workers,
        cache_dir=str(cache),
        on_device=False,
        augment={"enabled": augment},
    )
    try:
        lazy = KermanyDataModule(cache=False, **common)
        lazy.setup("fit")
        n_train = len(lazy.splits["train"])
        decode = epoch_rate(lazy, 1)
        cold_dm = KermanyDataModule(**common)
        start = time.perf_counter()
        cold_dm.setup("fit")
        n_all = sum(len(s) for s in cold_dm.splits.values())
        cold = n_all / (time.perf_counter() - start)
        warm_dm = KermanyDataModule(**common)
        start = time.perf_counter()
        warm_dm.setup("fit")
        warm_setup = time.perf_counter() - start
        warm = epoch_rate(warm_dm, epochs)
        warm_dm.num_workers = 0
        warm0 = epoch_rate(warm_dm, epochs)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return dict(
        n_train=n_train, decode=decode, cold=cold, warm=warm, warm0=warm0, warm_setup=warm_setup
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data/kermany224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="warm epochs to average")
    parser.add_argument("--fullres", type=int, default=300, help="full-resolution files (0: skip)")
    parser.add_argument("--augment", action="store_true", help="with training augmentation")
    parser.add_argument("--work-dir", default=".bench", help="where the full-res copies go")
    args = parser.parse_args()
    print(machine())
    sets = [("Kermany 224 px copies", Path(args.root))]
    if args.fullres:
        full = make_fullres(Path(args.root), Path(args.work_dir) / "fullres", args.fullres)
        sets.append((f"full resolution ({args.fullres} files, 1000-2000 px)", full))
    print(
        f"image_size {args.image_size}, batch 64, {args.workers} workers, "
        f"augmentation {'on' if args.augment else 'off'}; images/second"
    )
    header = (
        f"{'data':44s} {'train imgs':>10s} {'decode/epoch':>12s} {'cache cold':>11s} "
        f"{'cache warm':>11s} {'warm, 0 wkr':>11s} {'warm/decode':>11s} {'hit setup s':>11s}"
    )
    print(header)
    for name, root in sets:
        r = measure(root, args.image_size, args.workers, args.epochs, args.augment)
        best_warm = max(r["warm"], r["warm0"])
        print(
            f"{name:44s} {r['n_train']:10d} {r['decode']:12.0f} {r['cold']:11.0f} "
            f"{r['warm']:11.0f} {r['warm0']:11.0f} {best_warm / r['decode']:10.1f}x "
            f"{r['warm_setup']:11.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
