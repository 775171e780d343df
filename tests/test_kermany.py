"""The Kermany folder datamodule on fixture folders in the real format."""

from __future__ import annotations

import csv
import hashlib
import logging
import shutil
from pathlib import Path

import pytest
import torch

from tests.fixtures import kermany_datamodule, kermany_setup_error, make_kermany
from xray_loss.data.kermany_layout import patient_id


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1_bacteria_1.jpeg", "person1"),
        ("person1234_virus_2093.jpeg", "person1234"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0429-0001-0002.jpeg", "IM-0429"),
        ("NORMAL2-IM-0383-0001.jpeg", "NORMAL2-IM-0383"),
        ("BACTERIA-1008087-0001.jpeg", "v3-1008087"),
        ("scan.png", None),
    ],
)
def test_patient_ids_from_file_names(name, patient):
    assert patient_id(name) == patient


def _split_rows(tmp_path: Path) -> list[dict]:
    with open(tmp_path / "split.csv") as f:
        return list(csv.DictReader(f))


def test_splits_are_patient_grouped_stratified_and_audited(tmp_path):
    root = make_kermany(tmp_path / "chest_xray", test=False)
    dm = kermany_datamodule(root, tmp_path, test_fraction=0.25, val_fraction=0.2)
    dm.setup("fit")
    rows = _split_rows(tmp_path)
    assert len(rows) == 24 + 36 + 2  # .DS_Store ignored, .JPG counted
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    patients = {}
    for r in rows:
        patients.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(s) == 1 for s in patients.values()), "a patient straddles two splits"
    copies = ("person999_virus_999.jpeg", "person998_virus_998.JPG")
    dup = [r for r in rows if r["file"].endswith(copies)]
    first = [r for r in rows if r["patient"] == "train/person0"]
    assert {r["split"] for r in dup} == {first[0]["split"]}, "duplicates split apart"
    assert dm.report["duplicate_files"] == 2
    for name in ("train", "val", "test"):
        assert set(dm.splits[name].labels.tolist()) == {0, 1}
    assert dm.class_counts == dm.splits["train"].class_counts()
    x, y, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.uint8
    # deterministic
    dm2 = kermany_datamodule(root, tmp_path, test_fraction=0.25, val_fraction=0.2)
    dm2.split_csv = str(tmp_path / "split2.csv")
    dm2.setup("fit")
    assert (tmp_path / "split.csv").read_text() == (tmp_path / "split2.csv").read_text()


def test_official_test_folder_nested_download_and_case_insensitive_classes(tmp_path):
    root = make_kermany(tmp_path / "dl" / "chest_xray" / "chest_xray")
    (root / "test" / "NORMAL").rename(root / "test" / "normal")
    (tmp_path / "dl" / "__MACOSX" / "chest_xray").mkdir(parents=True)
    dm = kermany_datamodule(tmp_path / "dl", tmp_path)
    dm.setup("fit")
    rows = _split_rows(tmp_path)
    assert {r["split"] for r in rows if r["file"].startswith("test/")} == {"test"}
    assert len(dm.splits["test"]) == int(24 * 0.34) + int(36 * 0.34)


def test_kfold_validation_is_one_fold(tmp_path):
    root = make_kermany(tmp_path / "cx")
    sizes = []
    for fold in range(3):
        dm = kermany_datamodule(root, tmp_path, folds=3, fold=fold)
        dm.setup("fit")
        sizes.append(len(dm.splits["val"]))
    assert sum(sizes) == 24 + 36 + 2


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_root", "does not exist"),
        ("empty_root", "has no train/ folder"),
        ("no_pneumonia", "holds only NORMAL images"),
        ("no_test", "has no test/ folder"),
        ("one_class_test", "test/ holds only PNEUMONIA images"),
    ],
)
def test_bad_folders_print_the_expected_tree(tmp_path, damage, message):
    root = tmp_path / "cx"
    if damage != "missing_root":
        root.mkdir()
    if damage in ("no_pneumonia", "no_test", "one_class_test"):
        make_kermany(root)
    if damage == "no_pneumonia":
        shutil.rmtree(root / "train" / "PNEUMONIA")
    if damage == "no_test":
        shutil.rmtree(root / "test")
    if damage == "one_class_test":
        shutil.rmtree(root / "test" / "NORMAL")
    text = kermany_setup_error(root, tmp_path)
    assert message in text
    assert "train/NORMAL/*.jpeg" in text  # the expected layout is shown


def test_unreadable_images_are_all_listed_or_skipped(tmp_path, caplog):
    root = make_kermany(tmp_path / "cx")
    bad1 = root / "train" / "NORMAL" / "IM-0100-0001.jpeg"
    bad1.write_bytes(bad1.read_bytes()[:200])  # truncated
    bad2 = root / "train" / "PNEUMONIA" / "person1_bacteria_3.jpeg"
    bad2.write_text("not an image")
    text = kermany_setup_error(root, tmp_path)
    assert "2 image file(s) could not be read" in text
    assert str(bad1) in text and str(bad2) in text and "skip_bad_files=true" in text
    with caplog.at_level(logging.WARNING):
        dm = kermany_datamodule(root, tmp_path, skip_bad_files=True)
        dm.setup("fit")
    assert sum(len(dm.splits[s]) for s in ("train", "val")) == 24 + 36 + 2 - 2
    assert str(bad1) in caplog.text and str(bad2) in caplog.text


def test_decode_per_access_matches_the_cache(tmp_path):
    root = make_kermany(tmp_path / "cx")
    cached = kermany_datamodule(root, tmp_path)
    cached.setup("fit")
    lazy = kermany_datamodule(root, tmp_path, cache=False)
    lazy.setup("fit")
    idx = torch.arange(len(cached.splits["val"]))
    assert torch.equal(cached.splits["val"].images[idx], lazy.splits["val"].images[idx])
    assert not list((tmp_path / "cache").glob("*.tmp*"))


def test_train_copies_of_test_images_are_dropped_and_no_hash_spans_two_splits(tmp_path, caplog):
    root = make_kermany(tmp_path / "cx")
    test_files = sorted((root / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]
    test_files += sorted((root / "test" / "NORMAL").glob("*.jpeg"))[:1]
    for i, src in enumerate(test_files):  # the train/ folders hold copies under other names
        cls = src.parent.name
        name = (
            f"person{500 + i}_virus_{900 + i}.jpeg"
            if cls == "PNEUMONIA"
            else f"IM-0{900 + i}-0001.jpeg"
        )
        shutil.copy(src, root / "train" / cls / name)
    with caplog.at_level(logging.WARNING):
        dm = kermany_datamodule(root, tmp_path)
        dm.setup("fit")
    assert dm.report["dropped_cross_split_duplicates"] == 3
    assert "dropped 3 file(s)" in caplog.text and "test/" in caplog.text
    rows = _split_rows(tmp_path)
    dropped = [r for r in rows if r["split"] == "dropped"]
    assert len(dropped) == 3 and all("same contents as test/" in r["note"] for r in dropped)
    digests: dict[str, set[str]] = {}
    for r in rows:
        if r["split"] != "dropped":
            data = hashlib.sha1((root / r["file"]).read_bytes()).hexdigest()
            digests.setdefault(data, set()).add(r["split"])
    assert all(len(splits) == 1 for splits in digests.values()), "a file's contents span splits"
    total = sum(len(dm.splits[s]) for s in ("train", "val", "test"))
    assert total == len(rows) - 3
