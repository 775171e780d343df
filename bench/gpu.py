"""GPU throughput of ResNet-18 at 224 px on Kermany-sized data, and the study grid's wall time.

1. ceiling: model-only forward/backward/step on synthetic tensors already on the GPU
   (plain PyTorch, bf16 autocast + channels_last + torch.compile: the best the model can do);
2. the full training step through xray_loss's LightningModule and Trainer (trainer=gpu) with
   fp32 / bf16-mixed / + channels_last / + torch.compile, and the data from
   (a) DataLoader workers decoding JPEGs (data.cache=false),
   (b) the uint8 cache in host memory (workers augment, pinned memory),
   (c) the cache resident on the GPU with augmentation on the GPU (data.on_device=true);
   each as images/second of steady-state training steps and as a share of the ceiling;
3. the study's loss x lr x epochs grid (one seed) through the real command line, at a
   fraction of its epochs, sequentially and as several jobs sharing the GPU (joblib), with the
   full grid's time projected from per-epoch and per-job costs.

One prepared script (about 6 minutes on an H100). It brings its data: --data-root (e.g. a copy
of the Kermany 224 px train split) or, if absent, phantom JPEGs it writes itself.

    python bench/gpu.py --data-root .bench/kermany224
    python bench/gpu.py --tiny          # CPU smoke test at toy sizes (used by the test suite)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import job_costs, machine  # noqa: E402
from xray_loss.config import register_resolvers  # noqa: E402
from xray_loss.data.phantom import generate_phantoms  # noqa: E402

warnings.filterwarnings("ignore")
for name in ("lightning", "lightning.pytorch", "lightning.fabric", "xray_loss"):
    logging.getLogger(name).setLevel(logging.ERROR)


def phantom_folder(root: Path, n: int, size: int) -> Path:
    """A Kermany-layout folder of phantom JPEGs (used when no real data is given)."""
    marker = root / f".complete-{n}-{size}"
    if marker.exists():
        return root
    images, labels = generate_phantoms(n, size, seed=0)
    for i, (image, label) in enumerate(zip(images[:, 0].numpy(), labels.tolist(), strict=True)):
        name = f"person{i // 2}_bacteria_{i}.jpeg" if label else f"IM-{i // 2:04d}-{i:04d}.jpeg"
        path = root / "train" / ("PNEUMONIA" if label else "NORMAL") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=90)
    marker.touch()
    return root


class Throughput(L.Callback):
    """Images/second of training steps after ``skip`` warm-up steps (compilation, cudnn)."""

    def __init__(self, skip: int) -> None:
        self.skip = skip
        self.rate = float("nan")
        self._n = 0
        self._t0 = None

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.skip:
            self._sync()
            self._t0 = time.perf_counter()
            self._n = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is not None:
            self._n += batch[0].shape[0]

    def on_train_end(self, trainer, pl_module) -> None:
        if self._t0 is not None and self._n:
            self._sync()
            self.rate = self._n / (time.perf_counter() - self._t0)


def compose_cfg(overrides: list[str], out: Path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    return cfg


def ceiling(batch: int, size: int, steps: int, compile_model: bool) -> float:
    """Model-only images/second: synthetic GPU tensors, bf16 autocast, channels_last."""
    from xray_loss.backbones import torchvision_backbone
    from xray_loss.heads import BCEHead

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = torchvision_backbone("resnet18")
    model = torch.nn.Sequential(backbone, BCEHead(backbone.out_features)).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 2, (batch,), device=device)
    head = model[1]

    def step(x, y):
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = head.loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    fn = torch.compile(step) if compile_model else step
    for _ in range(max(3, steps // 4)):
        fn(x, y)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn(x, y)
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def train_rate(
    data_root: Path, cache_dir: Path, overrides: list[str], steps: int, skip: int
) -> float:
    """Images/second of the full training step through the project's Trainer."""
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_cfg(
            [
                "data=kermany",
                f"data.root={data_root}",
                "data.test_fraction=0.15",
                f"data.cache_dir={cache_dir}",
                "model=resnet18",
                "epochs=100",
                *overrides,
            ],
            Path(out),
        )
        L.seed_everything(0, verbose=False)
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        module = instantiate(
            cfg.module,
            class_counts=datamodule.class_counts,
            run_config=None,
            _recursive_=False,
            _convert_="all",
        )
        meter = Throughput(skip)
        trainer = instantiate(
            cfg.trainer,
            callbacks=[meter],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            max_steps=skip + steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, datamodule=datamodule)
        return meter.rate


def grid(
    data_root: Path, cache_dir: Path, scale: float, n_jobs: int, extra: list[str], log_dir: Path
) -> tuple[float, list[dict]]:
    """Wall time of the scaled study grid through the real command line, and its job records."""
    command = [
        sys.executable,
        "-m",
        "xray_loss.train",
        "-m",
        "experiment=full_grid",
        "seeds=1",
        f"epochs_scale={scale}",
        "data=kermany",
        f"data.root={data_root}",
        "data.test_fraction=0.15",
        f"data.cache_dir={cache_dir}",
        "model=resnet18",
        f"paths.log_dir={log_dir}",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]
    if n_jobs > 1:
        command += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"grid run failed ({proc.returncode})")
    records = [json.loads(p.read_text()) for p in log_dir.rglob("metrics.json")]
    return wall, records


def project(records: list[dict], scale_epochs: dict[int, int]) -> tuple[float, float, float]:
    """Fit wall = a + b * epochs over the jobs; project the unscaled grid's sequential time."""
    a, b = job_costs(records)
    n = len(records)
    nominal = sum(scale_epochs.get(r["config"]["epochs"], r["config"]["epochs"]) for r in records)
    return a, b, a * n + b * nominal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=".bench/kermany224")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test at toy sizes")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per configuration")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--grid-scale", type=float, default=0.05)
    parser.add_argument("--grid-jobs", type=int, default=3)
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument(
        "--deadline",
        type=float,
        default=330,
        help="seconds after which the parallel grid run is skipped",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    register_resolvers()
    cuda = torch.cuda.is_available()
    if args.tiny:
        args.steps, args.batch_size, size, n_images = 3, 8, 32, 96
    else:
        size, n_images = 224, 5216
    print(machine(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="xray_gpu_bench_"))
    data_root = Path(args.data_root)
    if args.tiny or not (data_root / "train").exists():
        data_root = phantom_folder(work / "phantom", n_images, size)
        source = f"phantom JPEGs ({n_images} x {size} px)"
    else:
        source = f"{data_root} ({sum(1 for _ in data_root.rglob('*.jpeg'))} JPEGs)"
    cache = work / "cache"
    print(
        f"data: {source}; ResNet-18 at {size} px, batch {args.batch_size}, "
        f"{args.steps} timed steps per row",
        flush=True,
    )

    can_compile = cuda  # compiling on a CPU smoke test would take longer than the test
    top = ceiling(args.batch_size, size, args.steps, compile_model=can_compile)
    print(
        f"\nceiling (model only, synthetic, bf16 + channels_last"
        f"{' + compile' if can_compile else ''}): {top:9.0f} img/s",
        flush=True,
    )

    common = [f"batch_size={args.batch_size}", f"data.image_size={size}"]
    device = ["trainer=gpu"] if cuda else ["trainer=cpu"]
    precision = {
        "fp32": ["trainer.precision=32-true", "channels_last=false"],
        "bf16-mixed": ["trainer.precision=bf16-mixed", "channels_last=false"],
        "bf16 + channels_last": ["trainer.precision=bf16-mixed", "channels_last=true"],
        "bf16 + channels_last + compile": [
            "trainer.precision=bf16-mixed",
            "channels_last=true",
            "compile=true",
        ],
    }
    if not can_compile:
        precision.pop("bf16 + channels_last + compile")
    workers = min(16, os.cpu_count() or 2)
    paths = {
        "(c) cache on GPU, GPU augment": ["data.on_device=true", "data.num_workers=0"],
        "(b) uint8 cache in host memory": ["data.on_device=false", f"data.num_workers={workers}"],
        "(a) workers decoding JPEGs": [
            "data.on_device=false",
            "data.cache=false",
            f"data.num_workers={workers}",
        ],
    }
    print(f"\n{'data path':34s} {'precision':32s} {'img/s':>9s} {'of ceiling':>10s}")
    best = ("", 0.0)
    for path_name, path_args in paths.items():
        # every precision on the GPU-resident path; bf16 + channels_last on the others
        options = list(precision) if path_name.startswith("(c)") else ["bf16 + channels_last"]
        if args.tiny:  # the smoke test checks each data path once, not CPU bf16 speed
            options = ["fp32"]
        for prec in options:
            skip = 1 if args.tiny else (12 if "compile" in prec else 5)
            try:
                rate = train_rate(
                    data_root,
                    cache,
                    [*device, *common, *path_args, *precision[prec]],
                    args.steps,
                    skip,
                )
            except Exception as err:  # keep the other rows of a scarce GPU session
                print(f"{path_name:34s} {prec:32s} failed: {type(err).__name__}: {err}")
                continue
            print(f"{path_name:34s} {prec:32s} {rate:9.0f} {rate / top:9.0%}", flush=True)
            if rate > best[1]:
                best = (f"{path_name}, {prec}", rate)
    print(
        f"\nbest: {best[0]}: {best[1]:.0f} img/s = {best[1] / top:.0%} of the ceiling", flush=True
    )

    if args.skip_grid:
        return
    scale = 0.05 if args.tiny else args.grid_scale
    # the smoke test swaps in the small CNN: it checks the plumbing, not the numbers
    extra = (
        ["model=small_cnn", "data.image_size=32", "batch_size=16"] if args.tiny else ["trainer=gpu"]
    )
    scaled = {e: max(1, round(e * scale)) for e in (10, 30, 100)}
    print(
        f"\nstudy grid, one seed: 2 losses x 3 lr x epochs {{10, 30, 100}} scaled by {scale} "
        f"to {sorted(scaled.values())} (18 jobs)",
        flush=True,
    )
    rows = []
    for jobs in (1, args.grid_jobs) if not args.tiny else (1,):
        if rows and time.perf_counter() - started > args.deadline:
            print(f"  skipped {jobs} jobs at a time: past the {args.deadline} s deadline")
            break
        wall, records = grid(data_root, cache, scale, jobs, extra, work / f"grid{jobs}")
        a, b, seq_full = project(records, {v: k for k, v in scaled.items()})
        rows.append((jobs, wall, a, b, seq_full))
        print(
            f"  {jobs} job(s) at a time: {wall:7.1f} s wall for the scaled grid; per job "
            f"{a:.1f} s + {b:.2f} s/epoch",
            flush=True,
        )
    seq = rows[0]
    print(
        f"  projected full grid (840 epochs, one seed), sequential: {seq[4] / 60:.1f} min",
        flush=True,
    )
    for jobs, wall, *_ in rows[1:]:
        speedup = seq[1] / wall
        print(
            f"  projected with {jobs} jobs sharing the GPU (x{speedup:.2f} measured on the "
            f"scaled grid): {seq[4] / speedup / 60:.1f} min",
            flush=True,
        )


if __name__ == "__main__":
    main()
