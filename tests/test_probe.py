"""The shortcut probe: it finds a planted file-level shortcut, stays near chance without one,
keeps patients within one fold, and its command line prints a table, JSON and clean errors."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import assert_ok, run_cli
from tests.fixtures import make_kermany
from xray_loss.data.base import DataError
from xray_loss.data.kermany_layout import find_root, scan
from xray_loss.probe import PROBES, make_folds, run_probe


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))


def _plant_file_shortcut(root: Path) -> None:
    """PNEUMONIA re-saved small, wide and at JPEG quality 40; NORMAL square at quality 95."""
    for path in _images(root):
        with Image.open(path) as pil:
            grey = pil.convert("L")
        size, quality = ((150, 110), 40) if path.parent.name == "PNEUMONIA" else ((128, 128), 95)
        grey.resize(size).save(path, format="JPEG", quality=quality)


def _make_alike(root: Path, seed: int = 0) -> None:
    """Every file the same size, mode and quality, its pixels drawn from a random file of
    either class: nothing about a file, not even its content, depends on its label."""
    paths = _images(root)
    pixels = []
    for path in paths:
        with Image.open(path) as pil:
            pixels.append(pil.convert("L").resize((128, 128)))
    random.Random(seed).shuffle(pixels)
    for path, image in zip(paths, pixels, strict=True):
        image.save(path, format="JPEG", quality=90)


def test_folds_keep_every_patient_and_duplicate_in_one_fold(tmp_path):
    root = make_kermany(tmp_path / "chest_xray", n_normal=30, n_pneumonia=45)
    files = scan(find_root(root))
    hashes = [hashlib.sha1(f.path.read_bytes()).hexdigest() for f in files]
    groups, folds = make_folds(files, hashes, k=4, seed=0)
    assert set(folds) == {0, 1, 2, 3}
    for key in (groups, [f.patient for f in files], hashes):
        seen: dict[object, set[int]] = defaultdict(set)
        for value, fold in zip(key, folds, strict=True):
            seen[value].add(fold)
        assert all(len(f) == 1 for f in seen.values()), "a group/patient/file spans two folds"
    assert len(set(hashes)) < len(hashes)  # the fixture's duplicates were really merged
    for k in range(4):  # stratified: every test fold holds both classes
        assert {f.label for f, fold in zip(files, folds, strict=True) if fold == k} == {0, 1}


def test_empty_or_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        run_probe(tmp_path / "nowhere")
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no .jpeg/.jpg/.png images"):
        run_probe(tmp_path, workers=0)


@pytest.mark.slow
def test_file_probe_finds_a_planted_shortcut_and_leaves_the_rng_alone(tmp_path):
    root = make_kermany(tmp_path / "chest_xray", n_normal=30, n_pneumonia=45, test=False)
    _plant_file_shortcut(root)
    state = torch.get_rng_state()
    result = run_probe(root, folds=4, seed=0, workers=1)
    assert torch.equal(torch.get_rng_state(), state), "the probe drew from the global RNG"
    file = result["probes"]["file"]
    assert file["auroc"] > 0.9, result
    assert file["verdict"] == "carries label information"


@pytest.mark.slow
def test_file_probe_is_near_chance_when_files_do_not_depend_on_the_label(tmp_path):
    root = make_kermany(tmp_path / "chest_xray", n_normal=30, n_pneumonia=45)
    _make_alike(root)
    result = run_probe(root, folds=4, seed=0, workers=0)
    # a probe that saw the label (or a fold leak) would reach AUROC ~1 here; chance-level
    # AUROCs of ~80 images scatter by about +-0.1, so the bounds leave room for that
    for name in PROBES:
        probe = result["probes"][name]
        assert 0.25 < probe["auroc"] < 0.75, (name, probe)
        assert probe["verdict"] != "carries label information", (name, probe)
    assert result["probes"]["file"]["ci95"][0] < 0.5  # not distinguishable from chance


@pytest.mark.slow
def test_cli_prints_the_table_and_writes_json(workdir):
    root = make_kermany(workdir / "chest_xray")
    (root / "train" / "NORMAL" / "IM-0900-0001.jpeg").write_bytes(b"not a jpeg")
    out = workdir / "probe.json"
    proc = run_cli(
        str(root), "--folds", "3", "--workers", "1", "--out", str(out),
        cwd=workdir, module="xray_loss.probe",
    )  # fmt: skip
    assert_ok(proc)
    result = json.loads(out.read_text())
    assert result["images"] == len(scan(root)) - 1 and result["folds"] == 3
    assert "skipped 1 unreadable file(s)" in proc.stdout and len(result["unreadable"]) == 1
    assert "machine: " in proc.stdout and f"images: {result['images']} " in proc.stdout
    assert "How to read it" in proc.stdout
    for name in PROBES:
        probe = result["probes"][name]
        low, high = probe["ci95"]
        assert 0.0 <= low <= probe["auroc"] <= high <= 1.0
        row = next(line for line in proc.stdout.splitlines() if line.startswith(name + " "))
        assert f"{probe['auroc']:.3f}" in row and probe["verdict"] in row
    assert result["probes"]["file"]["features"] == 7


@pytest.mark.slow
def test_cli_missing_root_is_one_message_without_a_traceback(workdir):
    proc = run_cli(str(workdir / "nowhere"), cwd=workdir, module="xray_loss.probe")
    assert proc.returncode != 0
    assert "does not exist or is not a folder" in proc.stderr
    assert "Expected layout" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
