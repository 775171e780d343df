"""A synthetic logs folder of the BCE vs CE study (the record format of a real run:
metrics.json, TensorBoard events, test predictions per tested epoch, split.csv), small and
fast, for tests of ``studies/bce_vs_ce`` (collect, page)."""

from __future__ import annotations

import csv
import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

FILES = [
    (f"train/NORMAL/IM-{i:04d}.jpeg", "NORMAL", "train" if i % 5 else "val") for i in range(30)
]
FILES += [
    (f"train/PNEUMONIA/person{i}_bacteria.jpeg", "PNEUMONIA", "train" if i % 5 else "val")
    for i in range(40)
]
FILES += [(f"test/NORMAL/IM-{i:04d}.jpeg", "NORMAL", "test") for i in range(200, 216)]
FILES += [(f"test/PNEUMONIA/person{i}_virus.jpeg", "PNEUMONIA", "test") for i in range(100, 124)]


def patient(file: str) -> str:
    folder, _, name = file.split("/")
    return f"{folder}/{name.split('_')[0].rsplit('-', 0)[0].removesuffix('.jpeg')}"


def manifest_rows() -> list[dict[str, str]]:
    return [
        {
            "file": f,
            "label": y,
            "patient": patient(f),
            "split": s,
            "note": "",
            "sha1": hashlib.sha1(f.encode()).hexdigest(),
        }
        for f, y, s in FILES
    ]


def digests() -> dict[str, dict]:
    out = {}
    for split in ("train", "val", "test"):
        rows = sorted(
            (r["file"], int(r["label"] == "PNEUMONIA"), r["sha1"])
            for r in manifest_rows()
            if r["split"] == split
        )
        digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
        out[split] = {"n": len(rows), "digest": digest}
    return out


def make_run(
    run_dir: Path,
    loss: str,
    lr: float,
    seed: int,
    shift: float = 0.0,
    epochs: int = 100,
    budgets: tuple[int, ...] = (10, 30, 100),
) -> Path:
    """One completed run; ``shift`` moves its test NLL (and its curves) by that much."""
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(zlib.crc32(f"{loss} {lr} {seed}".encode()))
    run_dir.mkdir(parents=True)
    writer = SummaryWriter(str(run_dir))
    e = np.arange(1, epochs + 1)
    speed = (1.0 if loss == "bce" else 1.2) * (1 + 0.05 * rng.standard_normal())
    train_nll = 0.6 * np.exp(-speed * e / 20) + 0.02 + shift
    val_nll = 0.5 * np.exp(-speed * e / 25) + 0.1 + 0.0005 * e + shift
    val_acc = np.minimum(0.99, 0.7 + 0.3 * (1 - np.exp(-speed * e / 15))) - 0.01 * rng.random()
    for i, epoch in enumerate(e):
        for tag, value in (
            ("train/objective", train_nll[i]),
            ("train/nll", train_nll[i]),
            ("train/brier", train_nll[i] / 3),
            ("train/acc", 1 - train_nll[i] / 2),
            ("train/lr", lr),
            ("val/objective", val_nll[i]),
            ("val/nll", val_nll[i]),
            ("val/brier", val_nll[i] / 3),
            ("val/acc", val_acc[i]),
            ("val/auroc", 0.9 + 0.09 * val_acc[i] / 0.99),
        ):
            writer.add_scalar(tag, float(value), int(epoch))
    writer.close()
    test_rows = [r for r in manifest_rows() if r["split"] == "test"]
    labels = np.array([int(r["label"] == "PNEUMONIA") for r in test_rows])
    record_budgets = {}

    def scores(epoch: int) -> dict[str, float]:
        return {
            "test/objective": float(val_nll[epoch - 1] + 0.01 * rng.standard_normal()),
            "test/nll": float(val_nll[epoch - 1]),
            "test/auroc": 0.95 + 0.0001 * epoch + 0.002 * rng.standard_normal(),
            "test/acc": 0.85 + 0.001 * epoch / 10 + 0.005 * rng.standard_normal(),
        }

    def predictions(name: str, epoch: int) -> None:
        probs = np.clip(labels * 0.6 + 0.2 + 0.1 * np.sin(np.arange(len(labels)) + epoch), 0, 1)
        with open(run_dir / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "label", "prob", "file", "patient"])
            for i, (r, p) in enumerate(zip(test_rows, probs, strict=True)):
                w.writerow([i, labels[i], f"{p:.8f}", r["file"], r["patient"]])

    for n in budgets:
        best = int(np.argmax(val_acc[:n])) + 1
        record_budgets[str(n)] = {
            "epochs_trained": n,
            "best_epoch": best,
            "best_val_auroc": 0.95,
            "test": scores(best),
            "last_test": scores(n),
        }
        predictions(f"test_predictions_epoch{n:03d}.csv", best)
        predictions(f"test_predictions_epoch{n:03d}_last.csv", n)
    best = record_budgets[str(budgets[-1])]["best_epoch"]
    predictions("test_predictions.csv", best)
    record = {
        "status": "completed",
        "started": f"2026-12-07T10:{seed:02d}:00+00:00",
        "finished": f"2026-12-07T11:{seed:02d}:00+00:00",
        "commit": "abc1234",
        "machine": {
            "host": "trainer",
            "cpu": "Some CPU",
            "cores": 2,
            "gpu": None,
            "python": "3.11.7",
            "torch": "2.14",
        },
        "config": {
            "loss": loss,
            "lr": lr,
            "epochs": epochs,
            "max_epochs": epochs,
            "batch_size": 32,
            "model": "small_cnn",
            "seed": seed,
        },
        "splits": digests(),
        "best_epoch": best,
        "best_val_auroc": 0.95,
        "epochs_trained": epochs,
        "threshold": 0.5,
        "budgets": record_budgets,
        "test": record_budgets[str(budgets[-1])]["test"],
        "wall_time_s": 3600.0,
    }
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    with open(run_dir / "split.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(manifest_rows()[0]))
        w.writeheader()
        w.writerows(manifest_rows())
    return run_dir


def make_logs(root: Path, seeds: int = 3, lrs: tuple[float, ...] = (1e-5, 1e-4)) -> Path:
    """``root/{primary,lr_grid}/loss=..,seed=..`` as studies/bce_vs_ce/run.sh lays them out."""
    for lr in lrs:
        sweep = "primary" if lr == 1e-5 else "lr_grid"
        for seed in range(seeds):
            for loss in ("bce", "ce"):
                name = f"loss={loss},seed={seed}" + ("" if sweep == "primary" else f",lr={lr:g}")
                make_run(root / sweep / name, loss, lr, seed)
    return root
