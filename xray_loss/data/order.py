"""The training split's order and augmentation draws, as pure functions of (seed, epoch, image).

Nothing here depends on worker processes, their number, or what ran before in the process: the
permutation of epoch ``e`` is drawn from a generator seeded by ``(seed, e)``, and every sample
is handed to the dataset as a :class:`SampleKey` ``(index, epoch)``, from which the dataset
seeds that image's augmentation (:func:`sample_seed`). So a run resumed anywhere, a run with
``data.num_workers=0`` and one with ``2`` see the same batches, augmented the same way.

``XrayDataModule`` (``xray_loss.data.base``) builds its loaders from these: the dataset, the
training sampler and the training loader.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from xray_loss.data.augment import BatchAugment
from xray_loss.data.splits import Split

_MASK = (1 << 64) - 1


def sample_seed(*values: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64 over each), well spread for nearby inputs:
    ``sample_seed(seed, epoch)`` and ``sample_seed(seed, epoch, index)`` never collide in
    practice, unlike ``seed + epoch`` (seed 1 epoch 0 = seed 0 epoch 1)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        state = (state ^ (state >> 27)) * 0x94D049BB133111EB & _MASK
        state ^= state >> 31
    return state >> 1


class SampleKey(NamedTuple):
    """One training sample as the sampler hands it out: the dataset index and the epoch."""

    index: int
    epoch: int


class ImageTensorDataset(Dataset):
    """Indexes a ``Split``; fetches a whole batch at once through ``__getitems__``.

    A batch is (images, labels, indices): the dataset indices let evaluation count every image
    exactly once when a distributed sampler pads the split with repeats. The training sampler
    hands out ``SampleKey(index, epoch)``: each image is augmented under its own seed,
    ``sample_seed(seed, epoch, index)``, the same in any worker process or on the GPU.
    """

    def __init__(self, split: Split, augment: BatchAugment | None = None, seed: int = 0) -> None:
        self.split = split
        self.augment = augment
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
        if self.augment is not None:
            seeds = None  # a sampler Lightning put in place (overfit_batches): the global RNG
            if all(isinstance(k, SampleKey) for k in keys):
                seeds = [sample_seed(self.seed, k.epoch, k.index) for k in keys]
            images = self.augment(images, seeds)
        return images, self.split.labels[index], index


def keep_batch(batch):
    """collate_fn for datasets that already return a batch from ``__getitems__``."""
    return batch


class TrainOrder(DistributedSampler):
    """The order of the training split, epoch by epoch, one shard per DDP rank, resumable at
    any batch.

    Epoch ``e`` is ``randperm(n)`` from a generator seeded by ``sample_seed(seed, e)``, padded to
    a multiple of the ranks and dealt out ``rank::num_replicas`` (as ``DistributedSampler``
    does). Lightning calls ``set_epoch``. ``state_dict(consumed)`` records the epoch and how many
    of its samples this rank has consumed, counted from the epoch's start even across several
    resumes within it; after ``load_state_dict`` the next iteration skips them. (A
    ``DistributedSampler`` by class, so that Lightning leaves it in place under DDP.)
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.size = len(dataset)
        self.start = 0  # samples of the epoch skipped by the iteration under way (a resume)
        self._skip: tuple[int, int] | None = None  # (epoch, samples to skip) after a resume

    def permutation(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``, in order."""
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        total = self.num_samples * self.num_replicas
        order += (order * math.ceil(total / self.size))[: total - self.size]  # DDP padding
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = self.epoch
        skip = self._skip[1] if self._skip is not None and self._skip[0] == epoch else 0
        self._skip = None
        self.start = skip
        if skip >= self.num_samples:  # resumed at the end of this very epoch: nothing left
            return
        for index in self.permutation(epoch)[skip:]:
            yield SampleKey(index, epoch)

    def state_dict(self, consumed: int) -> dict[str, Any]:
        """Where the epoch stands after ``consumed`` of its samples, from the epoch's start."""
        return {"epoch": self.epoch, "consumed": min(int(consumed), self.num_samples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        # a complete epoch skips everything if Lightning enters that epoch again, and nothing
        # of the next one
        self._skip = (epoch, consumed) if consumed > 0 else None


class TrainLoader(DataLoader):
    """The training DataLoader, stateful for Lightning: a checkpoint taken within an epoch
    stores how far the epoch got (samples handed to the training loop since the epoch began),
    and a fit resumed from it goes on with the next batch (see ``TrainOrder``)."""

    _consumed = 0  # batches handed out by the current iteration

    def __iter__(self) -> Iterator[Any]:
        self._consumed = 0
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        if not isinstance(sampler, TrainOrder):  # replaced by Lightning (overfit_batches)
            return {}
        batches = sampler.start // int(self.batch_size) + self._consumed
        done = batches >= len(self)  # (a dropped ragged batch counts as consumed)
        consumed = sampler.num_samples if done else batches * int(self.batch_size)
        return {"order": sampler.state_dict(consumed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.sampler, TrainOrder) and "order" in state:
            self.sampler.load_state_dict(state["order"])
