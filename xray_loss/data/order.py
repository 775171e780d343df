"""The order of the training split, resumable at any batch: the sampler and DataLoader that
``XrayDataModule.train_dataloader`` builds (``xray_loss.data.base``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class TrainOrder(DistributedSampler):
    """The order of the training split, epoch by epoch, resumable at any batch.

    One process: the order ``DataLoader(shuffle=True, generator=manual_seed(seed))`` gave before
    (a permutation per epoch from one generator, after the draw that loader took for its workers'
    base seed: every epoch, or only the first when workers persist), so runs are unchanged.
    DDP: ``DistributedSampler``'s order (``seed + epoch``), the one Lightning injected before; a
    DistributedSampler already, it is left in place.

    ``state_dict(consumed)`` says where the epoch stands; after ``load_state_dict`` the next
    iteration draws the same permutation and skips what was consumed. An epoch's order depends
    on the epoch number alone (Lightning sets it), so a run resumed at an epoch's end, where
    Lightning restores no loader state, gets the next epoch's order as well. (The global RNG
    states, for augmentation and dropout, are the checkpoint's too: ``ResumeCheckpoint``.)
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.persistent_workers = persistent_workers
        self.generator = torch.Generator().manual_seed(int(seed))
        self._drawn = 0  # permutations drawn (one process)
        self._before = self.generator.get_state()  # the generator before the last one was drawn
        self._skip: tuple[int, int] | None = None  # (epoch, samples to skip) after a resume

    def _draw(self) -> list[int]:
        self._before = self.generator.get_state()
        if self._drawn == 0 or not self.persistent_workers:
            # the int64 a DataLoader draws from its generator as its workers' base seed
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        self._drawn += 1
        return torch.randperm(len(self.dataset), generator=self.generator).tolist()

    def __iter__(self) -> Iterator[int]:
        if self._skip is not None and self._skip[1] >= self.num_samples:
            if self._skip[0] == self.epoch:  # resumed at the end of this epoch: nothing left
                self._skip = None
                return
            self._skip = None
        if self.num_replicas > 1:
            order, epoch = list(super().__iter__()), self.epoch
        else:
            # at least one new permutation per iteration (also without set_epoch), and up to the
            # epoch Lightning set
            order = self._draw()
            while self._drawn <= self.epoch:
                order = self._draw()
            epoch = self._drawn - 1
        skip = self._skip[1] if self._skip is not None and self._skip[0] == epoch else 0
        self._skip = None
        yield from order[skip:]
        if self.num_replicas == 1:
            # read past its end, RandomSampler drew one more (empty) permutation slice
            torch.randperm(len(self.dataset), generator=self.generator)

    def state_dict(self, consumed: int) -> dict[str, Any]:
        """Where the current epoch stands after ``consumed`` of its samples."""
        state: dict[str, Any] = {"epoch": self.epoch, "consumed": consumed}
        if self.num_replicas == 1:
            state["epoch"] = self._drawn - 1
            state["generator"] = self._before  # to draw this epoch's permutation again
            state["generator_after"] = self.generator.get_state()  # to go on with the next
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        done = consumed >= self.num_samples
        if self.num_replicas == 1 and epoch >= 0:
            self.generator.set_state(state["generator_after" if done else "generator"])
            self._drawn = epoch + 1 if done else epoch
        self._skip = (epoch, min(consumed, self.num_samples)) if consumed > 0 else None


class TrainLoader(DataLoader):
    """The training DataLoader, stateful for Lightning: a checkpoint taken within an epoch
    stores how far it got (batches handed to the training loop), and a fit resumed from it goes
    on with the next batch (see ``TrainOrder``)."""

    _consumed = 0

    def __iter__(self) -> Iterator[Any]:
        self._consumed = 0
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        if not isinstance(sampler, TrainOrder):  # replaced by Lightning (overfit_batches)
            return {}
        done = self._consumed >= len(self)
        consumed = sampler.num_samples if done else self._consumed * int(self.batch_size)
        return {"order": sampler.state_dict(consumed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.sampler, TrainOrder) and "order" in state:
            self.sampler.load_state_dict(state["order"])
