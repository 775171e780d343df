"""The embedded phantom data set: deterministic, shaped like the contract, really informative."""

from __future__ import annotations

import torch

from xray_loss.data.phantom import PhantomDataModule, generate_phantoms


def test_phantoms_are_deterministic_by_seed_and_differ_across_seeds():
    a_img, a_lab = generate_phantoms(40, 32, seed=7)
    b_img, b_lab = generate_phantoms(40, 32, seed=7)
    c_img, _ = generate_phantoms(40, 32, seed=8)
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    assert not torch.equal(a_img, c_img)


def test_shapes_dtype_and_class_ratio():
    images, labels = generate_phantoms(300, 48, pneumonia_fraction=0.73, seed=0)
    assert images.shape == (300, 1, 48, 48) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and set(labels.tolist()) == {0, 1}
    assert labels.sum().item() == round(300 * 0.73)
    assert images.float().std() > 20  # not blank: anatomy and contrast


def test_opacities_brighten_the_lung_fields():
    """Same anatomy with and without pneumonia: the only difference is extra density."""
    images, labels = generate_phantoms(600, 64, seed=1)
    lungs = images[:, 0, 20:44, 8:56].float().mean(dim=(1, 2))
    assert lungs[labels == 1].mean() > lungs[labels == 0].mean() + 2


def test_difficulty_makes_opacities_fainter():
    easy_img, labels = generate_phantoms(400, 48, seed=2, difficulty=0.5)
    hard_img, labels2 = generate_phantoms(400, 48, seed=2, difficulty=3.0)
    assert torch.equal(labels, labels2)
    gap = lambda im: (im[labels == 1].float().mean() - im[labels == 0].float().mean()).item()  # noqa: E731
    assert gap(easy_img) > gap(hard_img)


def test_datamodule_splits_and_loaders():
    dm = PhantomDataModule(n_train=50, n_val=20, n_test=30, image_size=32, batch_size=16)
    dm.setup("fit")
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [50, 20, 30]
    assert sum(dm.class_counts) == 50
    x, y, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 32, 32) and x.dtype == torch.uint8 and y.shape == (16,)
    # splits are generated from different seeds: no image is shared
    assert not torch.equal(dm.splits["train"].images[:20], dm.splits["val"].images)
