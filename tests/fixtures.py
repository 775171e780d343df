"""Small data sets in the real on-disk formats, written into a temporary directory."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from xray_loss.data.phantom import generate_phantoms
from xray_loss.module import XrayClassifier

NOT_UTF8 = os.fsdecode(b"IM-0001-0001-\xe9.jpeg")  # the byte 0xe9 alone is not UTF-8
SHOWN = "IM-0001-0001-\\xe9.jpeg"  # how every message and CSV writes that name


def _save(image: np.ndarray, path: Path, size: tuple[int, int], rgb: bool) -> None:
    pil = Image.fromarray(image).resize(size)
    if rgb:
        pil = pil.convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, quality=90)


def make_kermany(
    root: Path, n_normal: int = 24, n_pneumonia: int = 36, test: bool = True, seed: int = 0
) -> Path:
    """A chest_xray folder: real file-name patterns, several images per patient, grey and RGB
    JPEGs of different sizes, a .DS_Store, an exact duplicate, and an upper-case extension."""
    # distinct pictures for train/ and test/: no file of test/ is a copy of one in train/
    images, _ = generate_phantoms(2 * (n_normal + n_pneumonia), 96, seed=seed)
    images = images[:, 0].numpy()
    k = 0
    folders = ["train", "test"] if test else ["train"]
    for folder in folders:
        share = 1.0 if folder == "train" else 0.34
        for i in range(int(n_normal * share)):
            patient = 100 + i // 2  # two images per patient
            name = f"IM-{patient:04d}-{i % 2 + 1:04d}.jpeg"
            if i % 5 == 4:
                name = f"NORMAL2-IM-{patient:04d}-{i % 2 + 1:04d}.jpeg"
            size = (120 + 7 * (i % 4), 100 + 5 * (i % 3))
            _save(images[k % len(images)], root / folder / "NORMAL" / name, size, rgb=i % 3 == 0)
            k += 1
        for i in range(int(n_pneumonia * share)):
            patient = i // 3  # three images per child
            kind = "bacteria" if i % 2 else "virus"
            name = f"person{patient}_{kind}_{i}.jpeg"
            _save(
                images[k % len(images)],
                root / folder / "PNEUMONIA" / name,
                (90 + 11 * (i % 5), 110),
                rgb=i % 4 == 0,
            )
            k += 1
        (root / folder / "NORMAL" / ".DS_Store").write_bytes(b"\x00\x01junk")
    # an exact duplicate of a pneumonia image under another patient's name
    first = sorted((root / "train" / "PNEUMONIA").glob("person0_*"))[0]
    shutil.copy(first, root / "train" / "PNEUMONIA" / "person999_virus_999.jpeg")
    # an upper-case extension is an image too
    shutil.copy(first, root / "train" / "PNEUMONIA" / "person998_virus_998.JPG")
    return root


def kermany_cli(root: Path) -> list[str]:
    """The overrides of a run on a fixture folder (make_kermany(test=False)): 32 px, a quarter
    of train/ carved out as the test split, decoded in the main process."""
    return [
        "data=kermany",
        f"data.root={root}",
        "data.test_fraction=0.25",
        "data.image_size=32",
        "data.num_workers=0",
    ]


def kermany_datamodule(root: Path, tmp_path: Path, **kwargs):
    """A KermanyDataModule on a fixture folder at 32 px, its cache and split.csv in tmp_path."""
    from xray_loss.data.kermany import KermanyDataModule

    return KermanyDataModule(
        root=str(root),
        image_size=32,
        cache_dir=str(tmp_path / "cache"),
        split_csv=str(tmp_path / "split.csv"),
        batch_size=8,
        **kwargs,
    )


def kermany_setup_error(root: Path, tmp_path: Path, **kwargs) -> str:
    """The DataError message of setting up ``kermany_datamodule(root, tmp_path, **kwargs)`` for
    fit (the test fails if it sets up without one)."""
    from xray_loss.data.base import DataError

    with pytest.raises(DataError) as err:
        kermany_datamodule(root, tmp_path, **kwargs).setup("fit")
    return str(err.value)


def make_pneumoniamnist(
    root: Path,
    size: int,
    n: tuple[int, int, int] = (40, 12, 16),
    name: str | None = None,
    **overrides,
) -> Path:
    """A PneumoniaMNIST-format npz (uint8 images N x S x S, uint8 labels N x 1)."""
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        images, labels = generate_phantoms(count, size, seed=len(arrays))
        arrays[f"{split}_images"] = images[:, 0].numpy()
        arrays[f"{split}_labels"] = labels.numpy().astype(np.uint8).reshape(-1, 1)
    arrays.update(overrides)
    root.mkdir(parents=True, exist_ok=True)
    path = root / (name or ("pneumoniamnist.npz" if size == 28 else f"pneumoniamnist_{size}.npz"))
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` pixels in a few bytes (a decompression bomb as
    PIL sees it when opening: the size is checked before any pixel is decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    idat = zlib.compress(b"\x00" * 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def make_labeled_folder(
    folder: Path, n_normal: int = 8, n_pneumonia: int = 8, seed: int = 5, size=(300, 240)
) -> Path:
    """FOLDER/{NORMAL,PNEUMONIA}/*.jpeg of phantoms whose pictures match their labels (a site's
    small labeled sample; like Kermany's official val/, larger originals than train/)."""
    images, labels = generate_phantoms(4 * (n_normal + n_pneumonia), 96, seed=seed)
    for label, name, count in ((0, "NORMAL", n_normal), (1, "PNEUMONIA", n_pneumonia)):
        chosen = images[labels == label][:count, 0].numpy()
        for i, image in enumerate(chosen):
            stem = (
                f"NORMAL2-IM-{1400 + i:04d}-0001"
                if label == 0
                else f"person{1900 + i}_bacteria_{i}"
            )
            _save(image, folder / name / f"{stem}.jpeg", size, rgb=False)
    return folder


@contextmanager
def tmpfs(path: Path, size: str = "64k", read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs mounted at ``path`` (a full or read-only disk, for real): root only, the
    test is skipped elsewhere. ``read_only`` mounts it empty and read-only; ``remount_ro(path)``
    turns a filled one read-only."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"{'ro,' if read_only else ''}size={size}"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def remount_ro(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def train_steps(module, batches, steps: int):
    """``steps`` plain training steps of an XrayClassifier through its own optimizer (groups),
    then its probabilities on the last batch, in eval mode."""
    optimizer = module.configure_optimizers()
    module.train()
    for x, y in batches[:steps]:
        optimizer.zero_grad()
        module.head.loss(module(x), y).backward()
        optimizer.step()
    module.eval()
    with torch.no_grad():
        return module.predict_proba(batches[-1][0])


BACKBONE = {"_target_": "xray_loss.backbones.SmallCNN", "widths": [8, 16], "pool": "avg"}


def save_model(path: Path, seed: int = 0) -> Path:
    """An untrained small CNN (weights drawn with ``seed``) saved at ``path`` as a training run
    saves its checkpoints: a second call with the same path overwrites it, as resume does."""
    torch.manual_seed(seed)
    model = XrayClassifier(
        backbone=BACKBONE,
        head={"_target_": "xray_loss.heads.BCEHead"},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
        run_config={"data": {"image_size": 32, "resize": "squash"}},
    )
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.strategy.connect(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path
