"""eval and predict on the checkpoints of a real (tiny) sweep."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import assert_ok, metrics, run_cli, run_dirs
from tests.fixtures import kermany_cli, make_kermany, make_labeled_folder
from xray_loss.data.phantom import generate_phantoms

pytestmark = pytest.mark.slow
NAMES = ["objective", "nll", "brier", "acc", "auroc", "f1", "sensitivity", "specificity"]


def _best_checkpoint(sweep: Path) -> tuple[Path, Path]:
    run = sweep / "epochs=100,loss=ce,lr=0.001,seed=1"
    return run, next((run / "checkpoints").glob("best-*.ckpt"))


def test_eval_reproduces_the_recorded_test_metrics(study_sweep, tmp_path):
    run, ckpt = _best_checkpoint(study_sweep)
    proc = run_cli(f"ckpt_path={ckpt}", module="xray_loss.eval", cwd=tmp_path)
    assert_ok(proc)
    (out,) = [p.parent for p in (tmp_path / "logs" / "eval").rglob("metrics.json")]
    assert "ckpt_path" not in out.name  # run names leave long paths out
    recorded, again = metrics(run)["test"], metrics(out)["test"]
    for name in NAMES:
        assert again[f"test/{name}"] == pytest.approx(recorded[f"test/{name}"], abs=1e-5), name
    for name in ("confusion_matrix.png", "roc.png", "test_predictions.csv"):
        assert (out / name).exists()
    assert metrics(run)["threshold"] == metrics(out)["threshold"]


def test_checkpoint_errors_are_clear(study_sweep, tmp_path):
    _, ckpt = _best_checkpoint(study_sweep)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, foreign)
    for path in (truncated, foreign, tmp_path / "missing.ckpt"):
        proc = run_cli(f"ckpt_path={path}", module="xray_loss.eval", cwd=tmp_path)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert str(path) in proc.stderr and "xray_loss" in proc.stderr


def test_predict_classifies_a_folder_of_mixed_images(study_sweep, tmp_path):
    _, ckpt = _best_checkpoint(study_sweep)
    folder = tmp_path / "scans"
    folder.mkdir()
    images, _ = generate_phantoms(4, 96, seed=5)
    for i, image in enumerate(images[:, 0].numpy()):
        pil = Image.fromarray(image).resize((80 + 40 * i, 100 + 10 * i))
        if i % 2:
            pil = pil.convert("RGB")
        pil.save(folder / f"scan{i}.{'png' if i == 3 else 'jpeg'}")
    (folder / "notes.txt").write_text("not an image")
    proc = run_cli(
        f"ckpt_path={ckpt}",
        f"inputs={folder}",
        "cam=true",
        "threshold=youden",
        module="xray_loss.predict",
        cwd=tmp_path,
    )
    assert_ok(proc)
    assert "notes.txt" in proc.stderr + proc.stdout
    (out,) = [p.parent for p in (tmp_path / "logs" / "predict").rglob("predictions.csv")]
    with open(out / "predictions.csv") as f:
        listed = list(csv.DictReader(f))
    rows = [r for r in listed if r["status"] == "ok"]
    assert [r["status"] for r in listed if Path(r["file"]).name == "notes.txt"][0].startswith(
        "skipped"
    )
    assert sorted(Path(r["file"]).name for r in rows) == [
        "scan0.jpeg",
        "scan1.jpeg",
        "scan2.jpeg",
        "scan3.png",
    ]
    for row in rows:
        prob, threshold = float(row["prob_pneumonia"]), float(row["threshold"])
        assert 0 <= prob <= 1
        assert row["label"] == ("PNEUMONIA" if prob >= threshold else "NORMAL")
    youden = torch.load(ckpt, weights_only=True)["state_dict"]["youden_threshold"].item()
    assert float(rows[0]["threshold"]) == pytest.approx(youden, abs=1e-6)
    cams = sorted((out / "cam").glob("*.png"))
    assert len(cams) == 4 and all(p.stat().st_size > 2000 for p in cams)


def test_eval_on_a_folder_thresholded_run_scores_val_and_refuses_an_altered_image(workdir):
    # val/ chooses the threshold (source auto, as experiment=kermany_cpu sets): the datamodule
    # then has two validation loaders (the carve-out and val/); split=val scores the carve-out
    root = make_kermany(workdir / "chest_xray", test=False)
    make_labeled_folder(root / "val", n_normal=4, n_pneumonia=4)
    small = ["model.backbone.widths=[8,16]", "batch_size=16", "epochs=2"]
    source = ["threshold.rule=youden", "threshold.source=auto"]
    quiet = ["callbacks.progress_bar.refresh_rate=0"]
    assert_ok(run_cli(*kermany_cli(root), *small, *source, *quiet, cwd=workdir))
    (run,) = run_dirs(workdir / "logs" / "train")
    record = metrics(run)
    assert record["operating_point"]["source"] == "auto" and record["operating_point"]["n"] == 8
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))
    assert_ok(run_cli(f"ckpt_path={ckpt}", "split=val", module="xray_loss.eval", cwd=workdir))
    (out,) = run_dirs(workdir / "logs" / "eval")
    assert metrics(out)["split"] == "val"
    for name in ("auroc", "acc", "sensitivity", "specificity"):  # the carve-out, not val/
        assert metrics(out)["test"][f"test/{name}"] == pytest.approx(
            record["val"][f"val/{name}"], abs=1e-6
        ), name
    # a test image altered under its own name (no copy of any other file: nothing drops it):
    # only its content digest tells it from the one the run was tested on
    with open(run / "split.csv") as f:
        tested = [r["file"] for r in csv.DictReader(f) if r["split"] == "test"]
    victim = root / tested[0]
    with Image.open(victim) as image:
        altered = image.convert("L").rotate(7)
    altered.save(victim, "JPEG")
    refused = run_cli(f"ckpt_path={ckpt}", module="xray_loss.eval", cwd=workdir)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "is not the one" in refused.stderr and "other contents" in refused.stderr
    assert tested[0] in refused.stderr
