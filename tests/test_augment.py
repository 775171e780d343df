"""Training augmentation: per image, both on the CPU path and the batched (GPU) path."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from xray_loss.data.augment import AugmentConfig, BatchAugment, sample_augment
from xray_loss.data.phantom import PhantomDataModule


def test_sample_augment_is_torchvision_v2_without_flip_by_default():
    assert sample_augment(AugmentConfig(enabled=False), 32) is None
    plain = sample_augment(AugmentConfig(), 32)
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in plain.transforms)
    flipped = sample_augment(AugmentConfig(hflip=True), 32)
    assert any(isinstance(t, v2.RandomHorizontalFlip) for t in flipped.transforms)
    image = torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8)
    out = plain(image)
    assert out.shape == image.shape and out.dtype == torch.uint8


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


def test_training_batches_are_augmented_and_evaluation_batches_are_not():
    dm = PhantomDataModule(
        n_train=64, n_val=16, n_test=16, image_size=32, batch_size=64, augment={"enabled": True}
    )
    dm.setup("fit")
    x, _, _ = next(iter(dm.train_dataloader()))
    assert not torch.equal(x.sort(0).values, dm.splits["train"].images.sort(0).values)
    xv, _, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(xv, dm.splits["val"].images)


def test_invalid_augmentation_values_are_named():
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=1.5)
    with pytest.raises(ValueError, match="rotation"):
        AugmentConfig(rotation=-3)
