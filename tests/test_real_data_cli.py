"""Training on real-format data through the command line (fixture folders, tiny sizes)."""

from __future__ import annotations

import csv
import hashlib
import shutil

import pytest
import torch

from tests.conftest import assert_ok, metrics, run_cli, run_dirs
from tests.fixtures import kermany_cli, make_kermany, make_labeled_folder, make_pneumoniamnist

pytestmark = pytest.mark.slow

SMALL = [
    "model.backbone.widths=[8,16]",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.enable_model_summary=false",
    "batch_size=16",
]


def test_kermany_run_logs_splits_writes_csv_and_hits_the_cache_next_time(workdir):
    root = make_kermany(workdir / "chest_xray", test=False)
    args = [
        *kermany_cli(root),
        "epochs=2",
        "loss.pos_weight=auto",
        *SMALL,
    ]
    first = run_cli(*args, cwd=workdir)
    assert_ok(first)
    log = first.stdout + first.stderr
    assert "decoding 62 images once into the cache" in log
    assert "train split:" in log and "val split:" in log and "test split:" in log
    assert "2 exact duplicate file(s)" in log
    (run,) = run_dirs(workdir / "logs")
    assert metrics(run)["status"] == "completed"
    with open(run / "split.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 62 and set(rows[0]) == {"file", "label", "patient", "split", "note", "sha1"}
    # each row names its file's content: the manifest a results page keeps
    assert all(hashlib.sha1((root / r["file"]).read_bytes()).hexdigest() == r["sha1"] for r in rows)
    splits_of = {}
    for r in rows:
        splits_of.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())

    second = run_cli(*args, "seed=1", cwd=workdir)
    assert_ok(second)
    assert "image cache hit" in second.stdout + second.stderr


def test_missing_kermany_root_is_one_clear_message(workdir):
    proc = run_cli("data=kermany", f"data.root={workdir / 'nowhere'}", *SMALL, cwd=workdir)
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr and "train/NORMAL/*.jpeg" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_pneumoniamnist_run(workdir):
    make_pneumoniamnist(workdir / "npz", 28)
    proc = run_cli(
        "data=pneumoniamnist",
        f"data.root={workdir / 'npz'}",
        "data.size=28",
        "epochs=1",
        *SMALL,
        cwd=workdir,
    )
    assert_ok(proc)
    (run,) = run_dirs(workdir / "logs")
    assert metrics(run)["config"]["image_size"] == 28


def _weights(run) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_cold_and_warm_cache_runs_end_identical_and_matched_twins_agree_on_a_cold_cache(workdir):
    """Building the decode cache must not move the global RNG: with CPU augmentation in the
    main process (num_workers=0), a cold-cache and a warm-cache run end with the same weights."""
    root = make_kermany(workdir / "chest_xray", test=False)
    args = [
        *kermany_cli(root),
        "epochs=2",
        "lr=3e-3",
        *SMALL,
    ]
    runs = {}
    for name, loss, cache in (
        ("cold", "bce", "a"),
        ("warm", "bce", "a"),
        ("twin", "ce_matched", "b"),
    ):
        proc = run_cli(
            *args, f"loss={loss}", f"data.cache_dir={workdir / cache}", f"name={name}", cwd=workdir
        )
        assert_ok(proc)
        hit = "image cache hit" in proc.stdout + proc.stderr
        assert hit == (name == "warm")
        (runs[name],) = run_dirs(workdir / "logs" / name)
    cold, warm = _weights(runs["cold"]), _weights(runs["warm"])
    assert cold.keys() == warm.keys()
    assert all(torch.equal(cold[k], warm[k]) for k in cold)
    with open(runs["cold"] / "test_predictions.csv") as f:
        a = [float(r["prob"]) for r in csv.DictReader(f)]
    with open(runs["twin"] / "test_predictions.csv") as f:
        b = [float(r["prob"]) for r in csv.DictReader(f)]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 2e-5


def test_eval_scores_exactly_the_runs_test_images_and_refuses_others(workdir):
    # val/ chooses the threshold (threshold.source=folder), and train/ holds copies of two of
    # its images, which the run drops; the test split is carved out of train/
    root = make_kermany(workdir / "chest_xray", test=False)
    make_labeled_folder(root / "val", n_normal=4, n_pneumonia=4)
    for i, copy in enumerate(sorted((root / "val" / "PNEUMONIA").iterdir())[:2]):
        shutil.copy(copy, root / "train" / "PNEUMONIA" / f"person{700 + i}_virus_{700 + i}.jpeg")
    args = [
        *kermany_cli(root),
        "threshold.source=folder",
        "threshold.rule=youden",
        "epochs=2",
        *SMALL,
    ]
    assert_ok(run_cli(*args, cwd=workdir))
    (run,) = run_dirs(workdir / "logs" / "train")
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))
    evaluated = run_cli(f"ckpt_path={ckpt}", module="xray_loss.eval", cwd=workdir)
    assert_ok(evaluated)
    (out,) = [p.parent for p in (workdir / "logs" / "eval").rglob("metrics.json")]
    recorded, again = metrics(run)["test"], metrics(out)["test"]
    for name, value in recorded.items():
        if not name.startswith("test/confusion"):
            assert again[name] == pytest.approx(value, abs=1e-6), name
    with open(run / "test_predictions.csv") as f:
        trained_rows = list(csv.DictReader(f))
    with open(out / "test_predictions.csv") as f:
        eval_rows = list(csv.DictReader(f))
    assert [r["file"] for r in eval_rows] == [r["file"] for r in trained_rows]
    for a, b in zip(eval_rows, trained_rows, strict=True):
        assert a["label"] == b["label"]
        assert float(a["prob"]) == pytest.approx(float(b["prob"]), abs=1e-6)
    # the data on disk changes: one test image is replaced by another picture
    with open(run / "split.csv") as f:
        tested = [r["file"] for r in csv.DictReader(f) if r["split"] == "test"]
    victim = root / tested[0]
    other = sorted((root / "val" / "NORMAL").iterdir())[0]
    shutil.copy(other, victim)
    refused = run_cli(f"ckpt_path={ckpt}", module="xray_loss.eval", cwd=workdir)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "is not the one" in refused.stderr and tested[0] in refused.stderr
