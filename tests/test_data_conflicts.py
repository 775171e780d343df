"""Data that cannot be trained on as it stands is refused at setup, naming the files: one image
under both labels, a folder beside NORMAL/ and PNEUMONIA/, a study on a folder missing a class."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cli_env
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


@pytest.mark.slow
def test_a_study_on_a_folder_with_an_empty_class_says_so_once_without_a_traceback(tmp_path):
    root = make_kermany(tmp_path / "cx")
    for folder in ("train", "test"):
        for image in (root / folder / "NORMAL").iterdir():
            image.unlink()
    study = [str(ROOT / "studies" / "bce_vs_ce" / "run.sh"), str(root), str(tmp_path / "study")]
    done = subprocess.run(
        ["bash", *study, "epochs_scale=0.01", "hydra.sweeper.params.seed=0"],
        cwd=tmp_path,
        env={**cli_env(tmp_path), "PY": sys.executable, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    # the first job's sentence stops the sweep: every job would hit it alike
    assert done.stderr.count("NORMAL") >= 1 and "every job" in done.stderr + done.stdout
