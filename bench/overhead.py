"""Framework overhead: a plain PyTorch loop vs xray_loss's LightningModule + Trainer.

Both train the same backbone + head with the same optimizer on the same in-memory uint8
batches. (b) runs through the project's own config: ``XrayClassifier``, the default callbacks
(checkpointing, progress bar, divergence guard, sample grid, test report, epoch budgets) and
TensorBoard logging. Throughput counts training steps only (images/second inside training
epochs; the Trainer's validation passes are timed out), alternating (a) and (b) several times
and keeping each one's best epoch to damp the noise of a shared machine.

    python bench/overhead.py                     # small CNN at 64 px and ResNet-18 at 128 px
    python bench/overhead.py --models small_cnn --repeats 5

Both loops run in one process and share its allocator setting; for the speed of ``make train``
run it with the Makefile's ``GLIBC_TUNABLES`` (bench/README.md, ``allocator.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from xray_loss.config import register_resolvers  # noqa: E402
from xray_loss.data.base import Split, XrayDataModule  # noqa: E402
from xray_loss.data.phantom import generate_phantoms  # noqa: E402

warnings.filterwarnings("ignore")
logging.getLogger("lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

CASES = {"small_cnn": ("small_cnn", 64), "resnet18": ("resnet18", 128)}


class InMemory(XrayDataModule):
    """The same tensors the plain loop uses, as a datamodule."""

    def __init__(self, train: Split, val: Split, **kwargs) -> None:
        super().__init__(**kwargs)
        self._given = {"train": train, "val": val, "test": val}

    def load_splits(self) -> dict[str, Split]:
        return self._given


class EpochTimer(L.Callback):
    """Wall time of each training epoch's steps (validation excluded)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.images: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._n = 0
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._n += batch[0].shape[0]

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self.seconds.append(time.perf_counter() - self._t)
            self.images.append(self._n)


def compose_cfg(model: str, image_size: int, out: Path, batch_size: int):
    conf = str(ROOT / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"model={model}",
                f"batch_size={batch_size}",
                f"data.image_size={image_size}",
            ],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    return cfg


def plain_loop(cfg, train: Split, epochs: int, batch_size: int) -> float:
    """(a) Best images/second of ``epochs`` epochs of a hand-written loop."""
    torch.manual_seed(0)
    module = instantiate(cfg.module, _recursive_=False, _convert_="all")  # same nn.Modules
    backbone, head = module.backbone, module.head
    optimizer = torch.optim.Adam(
        list(backbone.parameters()) + list(head.parameters()), lr=float(cfg.lr)
    )
    mean, std = float(cfg.model.mean), float(cfg.model.std)
    n = len(train)
    backbone.train()
    head.train()
    best = 0.0
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        start = time.perf_counter()
        seen = 0
        for i in range(0, n - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            x = (train.images[idx].float() / 255.0 - mean) / std
            y = train.labels[idx]
            loss = head.loss(head(backbone(x)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += batch_size
        best = max(best, seen / (time.perf_counter() - start))
    return best


def lightning_run(cfg, train: Split, val: Split, epochs: int) -> float:
    """(b) Best images/second of ``epochs`` training epochs through the project's Trainer."""
    torch.manual_seed(0)
    datamodule = InMemory(
        train, val, batch_size=int(cfg.batch_size), num_workers=0, on_device=False
    )
    module = instantiate(
        cfg.module,
        class_counts=train.class_counts(),
        run_config=OmegaConf.to_container(cfg, resolve=True),
        _recursive_=False,
        _convert_="all",
    )
    timer = EpochTimer()
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c] + [timer]
    loggers = [instantiate(c) for c in cfg.logger.values() if c]
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers,
        max_epochs=epochs,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return max(n / s for n, s in zip(timer.images, timer.seconds, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="alternations of (a) and (b)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    parser.add_argument("--images", type=int, default=0, help="train images (0: per model)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    register_resolvers()
    print(machine())
    print(
        f"{'model':10s} {'px':>4s} {'images':>6s} {'plain img/s':>11s} "
        f"{'lightning img/s':>15s} {'ratio (b)/(a)':>13s}"
    )
    for name in args.models:
        model, size = CASES[name]
        n = args.images or (2048 if name == "small_cnn" else 512)
        images, labels = generate_phantoms(n + 128, size, seed=0)
        train = Split(images[:n], labels[:n])
        val = Split(images[n:], labels[n:])
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose_cfg(model, size, Path(tmp), args.batch_size)
            plain, light = 0.0, 0.0
            for _ in range(args.repeats):
                plain = max(plain, plain_loop(cfg, train, args.epochs, args.batch_size))
                light = max(light, lightning_run(cfg, train, val, args.epochs))
        print(
            f"{name:10s} {size:4d} {n:6d} {plain:11.1f} {light:15.1f} {light / plain:13.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
