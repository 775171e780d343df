"""The training order and augmentation are pure functions of (seed, epoch, image): resumes,
however many within an epoch, and worker processes cannot change a batch."""

from __future__ import annotations

import torch

from xray_loss.data.order import TrainOrder, sample_seed
from xray_loss.data.phantom import PhantomDataModule

AUGMENT = {"enabled": True, "hflip": True}


def datamodule(num_workers: int = 0, seed: int = 3) -> PhantomDataModule:
    dm = PhantomDataModule(
        n_train=96,
        n_val=16,
        n_test=16,
        image_size=32,
        batch_size=8,
        num_workers=num_workers,
        augment=AUGMENT,
        seed=seed,
    )
    dm.setup("fit")
    return dm


def batches(loader, epoch: int, n: int | None = None) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)
    out = []
    for images, _, index in loader:
        out.append(torch.cat([images.flatten(1).float(), index[:, None].float()], 1))
        if n is not None and len(out) == n:
            break
    return out


def test_two_resumes_in_one_epoch_continue_where_the_epoch_stands():
    dm = datamodule()
    want = batches(dm.train_dataloader(), epoch=1)  # 12 batches
    first = dm.train_dataloader()
    got = batches(first, epoch=1, n=3)
    state = first.state_dict()
    assert state["order"] == {"epoch": 1, "consumed": 24}
    second = dm.train_dataloader()  # a new process: resumed at batch 3
    second.load_state_dict(state)
    got += batches(second, epoch=1, n=4)
    state = second.state_dict()
    assert state["order"] == {"epoch": 1, "consumed": 56}  # from the epoch's start, not 32
    third = dm.train_dataloader()  # resumed again, at batch 7
    third.load_state_dict(state)
    got += batches(third, epoch=1)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    # the epoch's end: the next epoch is whole
    assert third.state_dict()["order"] == {"epoch": 1, "consumed": 96}
    assert len(batches(third, epoch=2)) == 12


def test_augmentation_does_not_depend_on_workers_or_on_the_global_rng():
    torch.manual_seed(0)
    plain = batches(datamodule(num_workers=0).train_dataloader(), epoch=4)
    torch.manual_seed(1)  # another global RNG state: the same batches
    again = batches(datamodule(num_workers=0).train_dataloader(), epoch=4)
    workers = batches(datamodule(num_workers=2).train_dataloader(), epoch=4)
    assert len(plain) == len(workers) == 12
    for a, b, c in zip(plain, again, workers, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    # and it is augmentation: another epoch or seed draws other transforms of the same images
    other = batches(datamodule(seed=4).train_dataloader(), epoch=4)
    assert not torch.equal(torch.cat(other).sort(0).values, torch.cat(plain).sort(0).values)


def test_augmenting_leaves_the_global_rng_alone():
    dm = datamodule()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    batches(dm.train_dataloader(), epoch=0)
    assert torch.equal(torch.get_rng_state(), before)  # dropout's draws are not shifted


def test_batch_augment_on_device_is_keyed_by_sample_too():
    from xray_loss.data.augment import AugmentConfig, BatchAugment

    augment = BatchAugment(AugmentConfig(**AUGMENT))
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    seeds = [sample_seed(0, 2, i) for i in range(4)]
    torch.manual_seed(0)
    a = augment(images, seeds)
    torch.manual_seed(1)
    b = augment(images, seeds)
    assert torch.equal(a, b)
    # each image's draws are its own: the same image in another batch comes out the same
    assert torch.equal(augment(images[2:3], seeds[2:3]), a[2:3])


def test_orders_of_neighbouring_seeds_and_epochs_are_not_shifted_copies():
    data = list(range(64))
    zero, one = TrainOrder(data, seed=0), TrainOrder(data, seed=1)
    assert zero.permutation(1) != one.permutation(0)  # seed + epoch would make them equal
    assert zero.permutation(0) != zero.permutation(1)
    assert sorted(zero.permutation(3)) == data


def test_ddp_ranks_share_one_permutation_between_them():
    data = list(range(10))
    ranks = [TrainOrder(data, seed=0, num_replicas=3, rank=r).permutation(2) for r in range(3)]
    assert all(len(r) == 4 for r in ranks)  # padded to 12
    dealt = [ranks[i % 3][i // 3] for i in range(12)]  # rank::3 of one padded permutation
    assert sorted(dealt[:10]) == data and dealt[10:] == dealt[:2]
