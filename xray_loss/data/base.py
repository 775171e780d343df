"""What every data source shares: uint8 image tensors in memory, fed to Lightning.

A source subclasses ``XrayDataModule`` and implements ``load_splits``, returning the train,
val and test splits as uint8 tensors (N, 1, S, S) with int64 labels (1 = pneumonia). Everything
downstream (batching, augmentation, moving the data to the GPU) is here, so every source trains
the same way. Images stay uint8 until they reach the model, which scales and normalises them
(augmented training batches arrive as float in [0, 1]).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from xray_loss.data.augment import AugmentConfig, BatchAugment
from xray_loss.data.images import worker_start_method
from xray_loss.data.order import (
    ImageTensorDataset,
    TrainLoader,
    TrainOrder,
    keep_batch,
)
from xray_loss.data.splits import DataError, Split, split_difference

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label 0, label 1


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

    def manifest(self) -> dict[str, dict[str, Any]]:
        """Each split's size and a digest of its images (names, labels, contents): metrics.json
        records it, so a results page can say which data every run saw."""
        out = {}
        for name in self.splits or {}:
            identity = self.identity(name)
            rows = sorted(zip(*(identity[k] for k in ("files", "labels", "hashes")), strict=True))
            digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
            out[name] = {"n": len(rows), "digest": digest}
        return out

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
        augment = BatchAugment(self.augment_cfg) if train and self.augment_cfg.enabled else None
        dataset = ImageTensorDataset(self.splits[split], augment, self.seed)
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
            # every new iterator draws its workers' base seed from this generator, not from the
            # global RNG that dropout and stochastic depth draw from: with persistent workers a
            # val/test loader makes one iterator per process, without them one per validation,
            # so drawing from the global RNG would make workers and resumes change the weights.
            # Augmentation does not use it (SampleKey).
            generator=torch.Generator().manual_seed(self.seed),
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
