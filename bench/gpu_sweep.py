"""The study's sweep at GPU speed: a measured slice of the loss x lr x epochs grid, run with
today's settings and with the sweep-level levers, side by side, projected to 3 seeds.

Each mode runs one seed of the grid through the real command line (``python -m
xray_loss.train -m ...``), on the same data, at ``--scale`` of its epochs (0.1: epochs
{10, 30, 100} -> {1, 3, 10}), and prints jobs, epochs, images trained, wall time, images per
second over the whole sweep, that rate as a share of the model-only ceiling (ResNet-18, batch
256, bf16, channels_last: bench/gpu.py), and the projection to the full grid x 3 seeds
(per-job start-up + per-epoch cost fitted on the slice's jobs, divided by the concurrency the
slice reached).

- ``today``: experiment=full_grid (18 jobs, 840 epochs per seed), last.ckpt every epoch,
  validation and test at the training batch (32), one job at a time.
- ``fast``: experiment=full_grid_budgets (6 jobs, 600 epochs per seed: the 10/30-epoch runs
  are the first epochs of the 100-epoch run, tested at their own best checkpoints; the
  report reads them as the same runs), last.ckpt at the end only, validation and test at
  batch 256, ``--jobs`` jobs sharing the GPU (joblib launcher, one process each).

Both produce the same runs (tests/test_report.py: full_grid_budgets == full_grid; eval batch
size and checkpoint cadence change no number: tests/test_train_cli.py, tests/test_resume.py).

    python bench/gpu_sweep.py --data-root .bench/kermany224            # on a GPU, ~10 min
    python bench/gpu_sweep.py --tiny                                    # CPU smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import job_costs, machine  # noqa: E402
from bench.gpu import ceiling, phantom_folder  # noqa: E402

FULL_JOBS = {"today": 18, "fast": 6}  # per seed
FULL_EPOCHS = {"today": 2 * 3 * (10 + 30 + 100), "fast": 2 * 3 * 100}
SEEDS = 3


def modes(jobs: int) -> dict[str, list[str]]:
    return {
        "today": ["experiment=full_grid"],
        "fast": [
            "experiment=full_grid_budgets",
            "checkpoint_every_n_epochs=100000",  # last.ckpt when training ends only
            "data.eval_batch_size=256",
            *(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []),
        ],
    }


def run_sweep(args: list[str], log_dir: Path) -> tuple[float, list[tuple[Path, dict]]]:
    """Wall time from the command to its last metrics.json, and the jobs' records."""
    command = [sys.executable, "-m", "xray_loss.train", "-m", *args, f"paths.log_dir={log_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"sweep failed ({proc.returncode}): {' '.join(args)}")
    found = [(p.parent, json.loads(p.read_text())) for p in log_dir.rglob("metrics.json")]
    return wall, found


def n_train(run_dir: Path) -> int:
    with open(run_dir / "split.csv") as f:
        return sum(row["split"] == "train" for row in csv.DictReader(f))


def project(jobs: list[dict], wall: float, mode: str) -> tuple[float, float, float, float]:
    """(per-job s, per-epoch s, concurrency, projected minutes for the full grid x 3 seeds):
    wall = a + b * epochs fitted over the slice's jobs."""
    a, b = job_costs(jobs)
    concurrency = sum(r["wall_time_s"] for r in jobs) / wall
    full = SEEDS * (a * FULL_JOBS[mode] + b * FULL_EPOCHS[mode]) / concurrency
    return a, b, concurrency, full / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=".bench/kermany224")
    parser.add_argument("--scale", type=float, default=0.1, help="epochs_scale of the slice")
    parser.add_argument("--jobs", type=int, default=3, help="jobs sharing the GPU (fast mode)")
    parser.add_argument("--modes", default="today,fast")
    parser.add_argument(
        "--slice", nargs="*", default=[], help="hold grid axes, e.g. --slice lr=1e-4 loss=ce"
    )
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test at toy sizes")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix="xray_gpu_sweep_"))
    data_root = Path(args.data_root)
    if args.tiny:
        size, n_images, args.scale, args.jobs = 32, 96, 0.05, 1  # joblib: test_sweeps
        args.slice = ["lr=1e-3", "loss=ce"]
        data_root = phantom_folder(work / "phantom", n_images, size)
        source = f"phantom JPEGs ({n_images} x {size} px)"
        # the smoke test checks the plumbing, not the numbers: a small CNN on the CPU
        model = ["model=small_cnn", f"data.image_size={size}", "trainer=cpu"]
    else:
        size = 224
        if not (data_root / "train").exists():
            data_root = phantom_folder(work / "phantom", 5216, size)
        source = f"{data_root} ({sum(1 for _ in data_root.rglob('*.jpeg'))} JPEGs)"
        model = ["model=resnet18", "trainer=gpu" if cuda else "trainer=cpu"]
    print(machine(), flush=True)
    common = [
        "seeds=1",
        f"epochs_scale={args.scale}",
        "data=kermany",
        f"data.root={data_root}",
        "data.test_fraction=0.15",
        f"data.cache_dir={work / 'cache'}",
        "callbacks.progress_bar.refresh_rate=0",
        *model,
        *args.slice,
    ]
    top = ceiling(256 if not args.tiny else 8, size, 40 if not args.tiny else 3, cuda)
    print(
        f"data: {source}; slice: one seed {' '.join(args.slice)} at "
        f"epochs_scale={args.scale}; ceiling (model only, "
        f"batch {256 if not args.tiny else 8}, bf16 + channels_last"
        f"{' + compile' if cuda else ''}): {top:.0f} img/s\n",
        flush=True,
    )
    header = (
        f"{'mode':6s} {'jobs':>4s} {'epochs':>6s} {'images':>9s} {'wall s':>7s} {'img/s':>7s} "
        f"{'of ceiling':>10s} {'s/job':>6s} {'s/epoch':>7s} {'concurrency':>11s} "
        f"{'full grid x3 seeds':>18s}"
    )
    print(header)
    for mode, extra in modes(args.jobs).items():
        if mode not in args.modes.split(","):
            continue
        wall, found = run_sweep([*common, *extra], work / mode)
        records = [r for _, r in found]
        images = sum(r["epochs_trained"] * n_train(d) for d, r in found)
        epochs = sum(r["epochs_trained"] for r in records)
        a, b, concurrency, minutes = project(records, wall, mode)
        rate = images / wall
        print(
            f"{mode:6s} {len(records):4d} {epochs:6d} {images:9d} {wall:7.1f} {rate:7.0f} "
            f"{rate / top:10.0%} {a:6.1f} {b:7.2f} {concurrency:11.2f} {minutes:14.1f} min",
            flush=True,
        )


if __name__ == "__main__":
    main()
