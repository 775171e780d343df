"""Training augmentation: drawn per image, applied to the batch at once, wherever it lives."""

from __future__ import annotations

import pytest
import torch

from xray_loss.data.augment import AugmentConfig, BatchAugment
from xray_loss.data.phantom import PhantomDataModule


def test_batch_augment_draws_its_parameters_per_image():
    torch.manual_seed(0)
    same = torch.randint(0, 256, (1, 1, 48, 48), dtype=torch.uint8).repeat(6, 1, 1, 1)
    out = BatchAugment(AugmentConfig())(same)
    assert out.shape == same.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    diffs = [(out[0] - out[i]).abs().mean().item() for i in range(1, 6)]
    assert min(diffs) > 1e-3  # six copies of one image come out six different ways


def test_batch_augment_with_nothing_to_do_is_the_identity():
    cfg = AugmentConfig(rotation=0, crop_scale=1.0, brightness=0, contrast=0)
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(BatchAugment(cfg)(images), images.float() / 255, atol=1e-5, rtol=0)


def test_horizontal_flip_is_off_by_default_and_mirrors_when_on():
    # an image that is bright on its left half only: no draw of the default recipe moves the
    # brightness to the right half; with hflip about half the images are mirrored
    image = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    image[..., :16] = 200
    batch = image.repeat(64, 1, 1, 1)
    quiet = {"rotation": 0, "crop_scale": 1.0, "brightness": 0, "contrast": 0}
    seeds = list(range(64))

    def right_heavy(out: torch.Tensor) -> int:
        return int((out[..., 16:].mean((1, 2, 3)) > out[..., :16].mean((1, 2, 3))).sum())

    assert right_heavy(BatchAugment(AugmentConfig(**quiet))(batch, seeds)) == 0
    assert 16 < right_heavy(BatchAugment(AugmentConfig(hflip=True, **quiet))(batch, seeds)) < 48


def test_training_batches_are_augmented_and_evaluation_batches_are_not():
    dm = PhantomDataModule(
        n_train=64, n_val=16, n_test=16, image_size=32, batch_size=64, augment={"enabled": True}
    )
    dm.setup("fit")
    x, _, _ = next(iter(dm.train_dataloader()))
    train = dm.splits["train"].images.float() / 255
    assert x.dtype == torch.float32 and not torch.equal(x.sort(0).values, train.sort(0).values)
    xv, _, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(xv, dm.splits["val"].images)


def test_invalid_augmentation_values_are_named():
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=1.5)
    with pytest.raises(ValueError, match="rotation"):
        AugmentConfig(rotation=-3)


def test_each_image_is_augmented_anew_every_epoch_and_the_same_way_on_a_rerun():
    dm = PhantomDataModule(
        n_train=32, n_val=16, n_test=16, image_size=32, batch_size=32, augment={"enabled": True}
    )
    dm.setup("fit")
    loader = dm.train_dataloader()

    def epoch(e: int) -> torch.Tensor:
        """The epoch's augmented images, in dataset order."""
        loader.sampler.set_epoch(e)
        x, _, index = next(iter(loader))
        return x[index.argsort()]

    first = epoch(0)
    assert torch.equal(epoch(0), first)  # seeded by (seed, epoch, index), not a global RNG
    for e in (1, 2):  # every image differently in every epoch: the epoch is part of its seed
        changed = (epoch(e) - epoch(e - 1)).abs().mean((1, 2, 3))
        assert (changed > 1e-3).all(), (e, changed.min())
