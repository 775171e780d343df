"""Data that cannot be trained on as it stands is refused at setup, naming the files: one image
under both labels, a folder beside NORMAL/ and PNEUMONIA/, a study on a folder missing a class."""

from __future__ import annotations

import shutil

import pytest

from tests.fixtures import kermany_setup_error, make_kermany


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_same_image_under_both_labels_is_a_label_conflict(tmp_path, split):
    root = make_kermany(tmp_path / "cx")
    normal = sorted((root / "train" / "NORMAL").glob("*.jpeg"))[0]
    copy = root / split / "PNEUMONIA" / "person99_virus_99.jpeg"
    shutil.copy(normal, copy)
    text = kermany_setup_error(root, tmp_path)
    assert "label conflict" in text and str(normal) in text and str(copy) in text
    assert "delete the copy whose label is wrong" in text


@pytest.mark.parametrize(
    "stray", ["train/COVID/covid1.jpeg", "test/Bacteria/b1.jpeg", "train/IM-0999-0001.jpeg"]
)
def test_what_sits_beside_the_class_folders_is_named_not_ignored(tmp_path, stray):
    root = make_kermany(tmp_path / "cx")
    image = sorted((root / "train" / "NORMAL").glob("*.jpeg"))[1]
    (root / stray).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(image, root / stray)
    text = kermany_setup_error(root, tmp_path)
    first = root / stray.split("/")[0] / stray.split("/")[1]
    assert text.startswith(f"{first} is not a class folder") and "NORMAL/ and" in text


def test_hidden_files_and_macos_debris_beside_the_classes_are_still_ignored(tmp_path):
    from tests.fixtures import kermany_datamodule

    root = make_kermany(tmp_path / "cx")
    (root / "train" / "__MACOSX").mkdir()
    (root / "train" / ".DS_Store").write_text("")
    (root / "train" / "notes.txt").write_text("")
    kermany_datamodule(root, tmp_path).setup("fit")


def test_a_study_on_a_folder_with_an_empty_class_says_so_once_without_a_traceback(tmp_path, capsys):
    from xray_loss.study import main

    root = make_kermany(tmp_path / "cx")
    for folder in ("train", "test"):
        for image in (root / folder / "NORMAL").iterdir():
            image.unlink()
    with pytest.raises(SystemExit) as stop:
        main([str(root), "--out", str(tmp_path / "study"), "--page", str(tmp_path / "page")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert f"{root}/train/ holds only PNEUMONIA images" in err
    assert not (tmp_path / "study").exists()  # nothing started: no probe, no sweep
