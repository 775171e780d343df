"""What every data source shares: uint8 image tensors in memory, fed to Lightning.

A source subclasses ``XrayDataModule`` and implements ``load_splits``, returning the train,
val and test splits as uint8 tensors (N, 1, S, S) with int64 labels (1 = pneumonia). Everything
downstream (batching, augmentation, moving the data to the GPU) is here, so every source trains
the same way. Images stay uint8 until they reach the model, which scales and normalises them.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from xray_loss.data.augment import AugmentConfig, BatchAugment, augment_image, sample_augment
from xray_loss.data.images import worker_start_method
from xray_loss.data.order import SampleKey, TrainLoader, TrainOrder, sample_seed

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label 0, label 1


class DataError(ValueError):
    """Bad data or data options; the message says what was found and what is expected."""


@dataclass
class Split:
    """One split: uint8 images (N, 1, S, S) and int64 labels (N,), 1 = pneumonia.

    ``images`` is a tensor, or an object indexed like one (``ArrayImages`` over the cache,
    ``FileImages`` decoding per access) that also has ``shape`` and ``to(device)``.
    ``files`` and ``patients`` name each image where the source knows them (test predictions
    carry them, and the report's bootstrap resamples patients rather than images); ``hashes``
    are the files' content digests where the source read them (else :meth:`identity` digests
    the decoded images).
    """

    images: Any
    labels: torch.Tensor
    files: list[str] | None = None
    patients: list[str] | None = None
    hashes: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=2).tolist()

    def identity(self) -> dict[str, list]:
        """What the split holds, image by image: name (the file, else its position), label and
        content digest. A checkpoint stores it, so eval can test on exactly these images."""
        hashes = self.hashes
        if hashes is None:
            hashes = [
                hashlib.sha1(self.images[i].cpu().contiguous().numpy().tobytes()).hexdigest()
                for i in range(len(self))
            ]
        names = self.files if self.files is not None else [str(i) for i in range(len(self))]
        return {"files": list(names), "labels": self.labels.tolist(), "hashes": list(hashes)}


KEYS = ("files", "hashes", "labels")


def split_difference(recorded: dict[str, list], found: dict[str, list]) -> str:
    """How two ``Split.identity`` records differ, in words ('' when they hold the same images,
    in the same order, with the same labels)."""
    if recorded == found:
        return ""
    old = {f: (h, y) for f, h, y in zip(*(recorded[k] for k in KEYS), strict=True)}
    new = {f: (h, y) for f, h, y in zip(*(found[k] for k in KEYS), strict=True)}

    def listing(names: list[str]) -> str:
        shown = ", ".join(names[:5])
        return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    parts = []
    for what, names in (
        ("missing", [f for f in old if f not in new]),
        ("new", [f for f in new if f not in old]),
        ("with other contents", [f for f in old if f in new and new[f][0] != old[f][0]]),
        ("with another label", [f for f in old if f in new and new[f][1] != old[f][1]]),
    ):
        if names:
            parts.append(f"{len(names)} image(s) {what} ({listing(names)})")
    if not parts:
        parts.append("the same images in another order")
    return "; ".join(parts)


class ImageTensorDataset(Dataset):
    """Indexes a ``Split``; fetches a whole batch at once through ``__getitems__``.

    A batch is (images, labels, indices): the dataset indices let evaluation count every image
    exactly once when a distributed sampler pads the split with repeats. The training sampler
    hands out ``SampleKey(index, epoch)``: each image is augmented under its own seed,
    ``sample_seed(seed, epoch, index)``, the same in any worker process.
    """

    def __init__(self, split: Split, transform=None, seed: int = 0) -> None:
        self.split = split
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels, index = self.__getitems__([i])
        return images[0], labels[0], index[0]

    def __getitems__(
        self, keys: list[int] | list[SampleKey]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = [int(k.index) if isinstance(k, SampleKey) else int(k) for k in keys]
        index = torch.as_tensor(indices, device=self.split.labels.device)
        images = self.split.images[index]
        if self.transform is not None:
            seeds = [
                sample_seed(self.seed, k.epoch, k.index) if isinstance(k, SampleKey) else None
                for k in keys
            ]
            images = torch.stack(
                [
                    augment_image(self.transform, img, s) if s is not None else self.transform(img)
                    for img, s in zip(images, seeds, strict=True)
                ]
            )
        return images, self.split.labels[index], index


def keep_batch(batch):
    """collate_fn for datasets that already return a batch from ``__getitems__``."""
    return batch


class XrayDataModule(L.LightningDataModule):
    """Base class: batching, augmentation and device placement for in-memory uint8 splits."""

    name = "xray"
    #: what the source expects on disk, appended to its data errors (Kermany: the folder tree)
    layout_hint: str = ""

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        augment: dict | None = None,
        on_device: bool | str = "auto",
        seed: int = 0,
        calibration: str = "carveout",
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.calibration = str(calibration)  # the threshold's sample: threshold.source
        self.batch_size = int(batch_size)
        # validation and test batches: no gradients, so larger ones only save steps; the
        # metrics do not depend on it (each image is scored alone: eval-mode BatchNorm)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.augment_cfg = AugmentConfig(**(augment or {"enabled": False}))
        self.on_device_option = on_device
        self.seed = int(seed)
        self.splits: dict[str, Split] | None = None
        self._identities: dict[str, dict] = {}
        self.on_device = False
        self._batch_augment: BatchAugment | None = None

    # --- to implement in a data source -----------------------------------------------------
    def load_splits(self) -> dict[str, Split]:
        raise NotImplementedError

    def describe_split(self, name: str) -> str:
        """Split ``name`` as an error message names it; a source adds where it came from."""
        return f"The {name} split"

    def folder_calibration(self) -> Split | None:
        """The layout's own labeled sample for a threshold (``threshold.source=folder``), or
        None when the source has none; Kermany's ``val/`` folder is one."""
        return None

    def calibration_split(self) -> Split | None:
        """The sample a threshold rule is chosen on (``threshold.source``): None for the
        carve-out (the val split itself), the layout's folder, or any labeled folder."""
        source = self.calibration
        if source == "carveout":
            return None
        if source in ("folder", "auto"):
            split = self.folder_calibration()
            if split is None and source == "folder":
                raise DataError(
                    f"threshold.source=folder: data={self.name} has no labeled folder of its own "
                    f"to choose a threshold on; use threshold.source=carveout, or the path of a "
                    f"labeled folder (NORMAL/, PNEUMONIA/)."
                )
            return split
        from xray_loss.data.kermany_layout import read_labeled_folder

        return read_labeled_folder(
            Path(source).expanduser(), self.image_size, getattr(self, "resize", "squash")
        )

    # --- Lightning hooks --------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.load_splits()
            for name in SPLITS:
                counts = self.splits[name].class_counts()
                log.info(
                    "%s split: %d images (normal %d, pneumonia %d)",
                    name,
                    len(self.splits[name]),
                    counts[0],
                    counts[1],
                )
            self._check_splits()
            if "calibration" not in self.splits:
                calibration = self.calibration_split()
                if calibration is not None:
                    self.splits["calibration"] = calibration
            if "calibration" in self.splits:
                counts = self.splits["calibration"].class_counts()
                log.info(
                    "threshold calibration sample (%s): %d images (normal %d, pneumonia %d)",
                    self.calibration,
                    sum(counts),
                    *counts,
                )
        self._place_on_device()

    def _check_splits(self) -> None:
        """Every split holds both classes; the batch size fits the training split.

        Checked on what ``load_splits`` returned, after skipped files, carve-outs and dropped
        duplicates, for every source: a one-class split has no AUROC, and a run on it would
        "complete" with val AUROC nan instead of saying what is wrong with the data.
        """
        for name in SPLITS:
            counts = self.splits[name].class_counts()
            missing = [CLASS_NAMES[c] for c in (0, 1) if counts[c] == 0]
            if not missing:
                continue
            if len(missing) == 2:
                problem = "holds no images"
            else:
                present = CLASS_NAMES[1 - CLASS_NAMES.index(missing[0])]
                problem = f"holds only {present} images, no {missing[0]} image"
            hint = f"\n{self.layout_hint}" if self.layout_hint else ""
            self.splits = None  # a later setup() checks again instead of training on it
            raise DataError(
                f"{self.describe_split(name)} {problem}, and a split needs both classes (with "
                f"one, AUROC is undefined and the run would end with val AUROC nan). Add images "
                f"of the missing class.{hint}"
            )
        n_train = len(self.splits["train"])
        if self.batch_size > n_train:
            log.warning(
                "batch_size=%d is larger than the training split (%d images): every epoch is "
                "one short batch of %d images, a single optimizer step; a batch_size below %d "
                "gives more steps per epoch",
                self.batch_size,
                n_train,
                n_train,
                n_train,
            )

    def _place_on_device(self) -> None:
        trainer = self.trainer
        if trainer is None or self.on_device:
            return
        device = trainer.strategy.root_device
        wanted = self.on_device_option
        if wanted == "auto":
            wanted = device.type == "cuda" and trainer.world_size == 1 and self._fits(device)
        if wanted and device.type != "cuda":
            log.info("data.on_device=true ignored: the trainer runs on %s", device.type)
            wanted = False
        if wanted:
            for split in self.splits.values():
                split.images = split.images.to(device)
                split.labels = split.labels.to(device)
            self.on_device = True
            if self.augment_cfg.enabled:
                self._batch_augment = BatchAugment(self.augment_cfg)
            log.info("data kept on %s; augmentation runs there (no worker processes)", device)

    def _fits(self, device: torch.device) -> bool:
        need = sum(math.prod(s.images.shape) for s in self.splits.values())
        free, _ = torch.cuda.mem_get_info(device)
        return need < 0.4 * free

    def identity(self, name: str) -> dict[str, list]:
        """``Split.identity`` of split ``name``, computed once."""
        if name not in self._identities:
            if self.splits is None:
                self.setup("test")
            self._identities[name] = self.splits[name].identity()
        return self._identities[name]

    def state_dict(self) -> dict[str, Any]:
        """Stored in every checkpoint (Lightning's datamodule state): the images of the val and
        test splits, so that ``python -m xray_loss.eval`` tests on exactly those."""
        if self.splits is None:
            return {}
        return {"splits": {name: self.identity(name) for name in ("val", "test")}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed fit goes on with whatever data it finds; a changed split is named."""
        for name, recorded in state.get("splits", {}).items():
            difference = split_difference(recorded, self.identity(name))
            if difference:
                log.warning(
                    "the %s split differs from the one in the checkpoint: %s", name, difference
                )

    @property
    def class_counts(self) -> list[int]:
        """[n_normal, n_pneumonia] of the training split (feeds pos_weight/class_weights auto)."""
        if self.splits is None:
            self.setup("fit")
        return self.splits["train"].class_counts()

    def _loader(self, split: str, train: bool) -> DataLoader:
        transform = None
        if train and not self.on_device:
            transform = sample_augment(self.augment_cfg, self.splits[split].images.shape[-1])
        dataset = ImageTensorDataset(self.splits[split], transform, self.seed)
        workers = 0 if self.on_device else self.num_workers
        on_cuda = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        order = None
        if train:  # shuffled, one shard per DDP rank, resumable mid-epoch
            replicas, rank = (1, 0) if self.trainer is None else self._replicas()
            order = TrainOrder(dataset, self.seed, replicas, rank)
        return (TrainLoader if train else DataLoader)(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=order,
            # a ragged last batch adds a noisy step; drop it unless the split is that small: a
            # split of fewer than 2 batches keeps its short batch, so training never has 0 steps
            drop_last=train and len(dataset) >= 2 * self.batch_size,
            num_workers=workers,
            multiprocessing_context=worker_start_method(workers),
            persistent_workers=workers > 0,
            pin_memory=on_cuda and not self.on_device,
            collate_fn=keep_batch,
            # the workers' base seed, drawn from this generator rather than the global RNG
            # (which dropout draws from); augmentation does not use it (SampleKey)
            generator=torch.Generator().manual_seed(self.seed) if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def _replicas(self) -> tuple[int, int]:
        """(number of DDP ranks, this rank): what Lightning would give a DistributedSampler."""
        kwargs = self.trainer.distributed_sampler_kwargs or {}
        return int(kwargs.get("num_replicas", 1)), int(kwargs.get("rank", 0))

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The carve-out (checkpoint selection), then the threshold's calibration sample when
        it is not the carve-out itself (xray_loss.threshold)."""
        val = self._loader("val", train=False)
        if self.splits and "calibration" in self.splits:
            return [val, self._loader("calibration", train=False)]
        return val

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self._batch_augment is not None and self.trainer is not None and self.trainer.training:
            images, labels, index = batch
            epoch = self.trainer.current_epoch
            seeds = [sample_seed(self.seed, epoch, i) for i in index.tolist()]
            return self._batch_augment(images, seeds), labels, index
        return batch
