"""Shortcut probe: does a Kermany-layout folder carry the class outside the anatomy?

NORMAL and PNEUMONIA originals differ in size, aspect ratio and JPEG quality, and resizing every
image alike does not remove all of it (squashing turns aspect ratio into distortion, resolution
survives as blur and JPEG texture), so a CNN can learn the source instead of the lungs. Three
deliberately blind linear probes (L2 logistic regression, patient-grouped stratified K-fold)
measure it: ``file`` (metadata only, no pixels), ``thumbnail`` (8x8, decoded as the project
does) and ``border`` (the outer frame of the 64 px image: markers, collimation, text, padding).

    python -m xray_loss.probe ROOT [--folds 5] [--seed 0] [--workers 2] [--resize squash|crop]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.classification import binary_auroc

from xray_loss.data.base import DataError
from xray_loss.data.images import RESIZE_MODES, decode
from xray_loss.data.kermany_layout import LAYOUT, ImageFile, find_root, scan
from xray_loss.data.splits import connected_groups, grouped_folds

FILE_FEATURES = ("log_bytes", "width", "height", "aspect", "bits_per_pixel", "rgb", "jpeg_qtable")
PROBES = ("file", "thumbnail", "border")
THUMB = 8  # thumbnail side: 64 features
BORDER, BLOCK, FRAME_BLOCKS = 64, 4, 2  # 64 px image, 4x4 pooling, an 8 px frame: 112 features
WEIGHT_DECAY = 1e-2  # L2 on standardised features, per mean log-loss
BOOTSTRAP = 1000
SIGNAL = 0.6  # an interval entirely above this AUROC "carries label information"

EXPLANATION = """How to read it: each probe is a linear model that sees one thing and never the
lungs' detail; AUROC 0.5 is chance, 1.0 a perfect shortcut. The 95% interval resamples patient
groups; verdict: lower end > 0.6 "carries label information", > 0.5 "weak", else "near chance".
- file high: the files themselves (size, shape, quality, bytes) carry the class. Any resize mode
  passes some of it to a CNN: squashing turns aspect ratio into distortion, and resolution and
  compression survive as blur and JPEG texture. Where size and quality are the same for every
  file, only the byte count varies; it also reflects content, so read it as texture, not proof.
- border high: the frame (markers, collimation, text, padding) predicts the class: cues outside
  the lungs a CNN can use; consider cropping or masking and compare models with and without.
- thumbnail high is expected to a degree (pneumonia changes global density): a reference for
  what a trivial image model gets, not proof of a shortcut. Far above it, suspect geometry
  (field of view, positioning, squash distortion) that differs between the classes' sources."""


def file_features(path: Path, data: bytes | None = None) -> list[float]:
    """Metadata of one file without decoding its pixels (PIL reads the header lazily)."""
    data = Path(path).read_bytes() if data is None else data
    with Image.open(io.BytesIO(data)) as pil:
        width, height = pil.size
        tables = getattr(pil, "quantization", None) or {}
        table = list(tables.get(0, [])) if pil.format == "JPEG" else []
        width, height, rgb = float(width), float(height), float(len(pil.getbands()) > 1)
    n, area = max(len(data), 1), max(width * height, 1)
    quality = sum(table) / len(table) if table else 0.0  # mean quantiser: lower = higher quality
    return [math.log(n), width, height, width / max(height, 1), 8.0 * n / area, rgb, quality]


def border_features(image: torch.Tensor) -> torch.Tensor:
    """The outer frame of a (1, S, S) image, average-pooled to BLOCK x BLOCK blocks."""
    pooled = F.avg_pool2d(image.float()[None] / 255.0, BLOCK)[0, 0]
    n = pooled.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[FRAME_BLOCKS : n - FRAME_BLOCKS, FRAME_BLOCKS : n - FRAME_BLOCKS] = False
    return pooled[mask]


class _Features(Dataset):
    """One file -> (index, {probe: features}, content hash, error); errors are returned."""

    def __init__(self, paths: Sequence[Path], resize: str) -> None:
        self.paths, self.resize = list(paths), resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            data = path.read_bytes()
            feats = {
                "file": torch.tensor(file_features(path, data), dtype=torch.float64),
                "thumbnail": decode(path, THUMB, self.resize, data).flatten().double() / 255.0,
                "border": border_features(decode(path, BORDER, self.resize, data)).double(),
            }
            return i, feats, hashlib.sha1(data).hexdigest(), None
        except Exception as err:  # reported per file, the probe runs on the rest
            return i, None, None, f"{type(err).__name__}: {err}"


def extract(
    paths: Sequence[Path], resize: str, workers: int
) -> tuple[list[int], dict[str, torch.Tensor], list[str], list[tuple[Path, str]]]:
    """Features of every file, decoded in parallel by a DataLoader.

    Returns the positions of the readable files, {probe: (N, F) features}, their content hashes
    (duplicates must share a fold) and the unreadable files with their errors.
    """
    loader = DataLoader(
        _Features(paths, resize),
        batch_size=32,
        num_workers=workers,
        collate_fn=list,
        generator=torch.Generator(),  # the loader's base seed must not come from the global RNG
    )
    done = [item for batch in loader for item in batch]  # in file order (no shuffling)
    ok = [item for item in done if item[3] is None]
    bad = [(paths[i], error) for i, _, _, error in done if error is not None]
    features = {p: torch.stack([feats[p] for _, feats, _, _ in ok]) for p in PROBES} if ok else {}
    return [i for i, *_ in ok], features, [digest for _, _, digest, _ in ok], bad


def make_folds(
    files: Sequence[ImageFile], hashes: Sequence[str], k: int, seed: int
) -> tuple[list[int], list[int]]:
    """(group, fold) per file: a patient, or a set of identical files, lies in one fold only,
    so no test fold shares a child (or a duplicate) with its training folds."""
    groups = connected_groups([f.patient for f in files], list(hashes))
    return groups, grouped_folds([f.label for f in files], groups, k, seed=seed)


def fit_predict(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor) -> torch.Tensor:
    """Logit of an L2 logistic regression, standardised on the training rows, fit by LBFGS."""
    mean, std = x_train.mean(0), x_train.std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features stay inert
    xt, xs = (x_train - mean) / std, (x_test - mean) / std
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")
    y = y_train.double()
    # class-balanced, so that the intercept does not carry each training fold's class ratio
    # into the pooled ranking (which biases out-of-fold AUROC below 0.5 on label-free data)
    weight = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w + b, y, weight=weight)
        loss = loss + 0.5 * WEIGHT_DECAY * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (xs @ w + b).detach()


def bootstrap_auroc(
    scores: torch.Tensor, labels: torch.Tensor, groups: Sequence[int], n: int, seed: int
) -> tuple[float, float, float]:
    """Pooled AUROC and a 95% percentile interval resampling whole patient groups."""
    auroc = float(binary_auroc(scores, labels))
    g = torch.as_tensor(groups)
    order = torch.argsort(g, stable=True)
    counts = torch.bincount(g)
    starts = torch.cumsum(counts, 0) - counts
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n):
        pick = torch.randint(len(counts), (len(counts),), generator=gen)
        c = counts[pick]
        offsets = torch.arange(int(c.sum())) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
        idx = order[torch.repeat_interleave(starts[pick], c) + offsets]
        if 0 < int(labels[idx].sum()) < len(idx):
            values.append(float(binary_auroc(scores[idx], labels[idx], validate_args=False)))
    low, high = torch.tensor(values).quantile(torch.tensor([0.025, 0.975])).tolist()
    return auroc, low, high


def cross_validate(
    x: torch.Tensor, labels: torch.Tensor, groups: list[int], fold: list[int], seed: int
) -> dict:
    """Out-of-fold scores of one probe, pooled over the folds, and their AUROC."""
    fold_t, scores = torch.tensor(fold), torch.zeros(len(labels), dtype=torch.float64)
    for k in sorted(set(fold)):
        test = fold_t == k
        scores[test] = fit_predict(x[~test], labels[~test], x[test])
    auroc, low, high = bootstrap_auroc(scores, labels, groups, BOOTSTRAP, seed)
    ci = [round(low, 4), round(high, 4)]
    return {"features": x.shape[1], "auroc": round(auroc, 4), "ci95": ci, "verdict": verdict(low)}


def verdict(low: float) -> str:
    """From the interval's lower end: chance-level AUROCs scatter around 0.5."""
    if low > SIGNAL:
        return "carries label information"
    return "weak label information" if low > 0.5 else "near chance"


def run_probe(
    root: str | Path, folds: int = 5, seed: int = 0, workers: int = 2, resize: str = "squash"
) -> dict:
    """Every probe's out-of-fold AUROC with its interval, plus what the data and run were."""
    if resize not in RESIZE_MODES:
        raise DataError(f"--resize {resize!r} is not valid; valid: {list(RESIZE_MODES)}.")
    started = time.time()
    root = find_root(root)
    files = scan(root)
    if not files:
        raise DataError(f"data.root={root} holds no .jpeg/.jpg/.png images.\n{LAYOUT}")
    keep, features, hashes, bad = extract([f.path for f in files], resize, workers)
    files = [files[i] for i in keep]
    labels = torch.tensor([f.label for f in files])
    groups, fold = make_folds(files, hashes, folds, seed) if files else ([], [])
    group_class = list(dict(zip(groups, labels.tolist(), strict=True)).values())
    per_class = [group_class.count(c) for c in (0, 1)]
    if min(per_class) < folds:
        raise DataError(
            f"{root}: {per_class[0]} NORMAL and {per_class[1]} PNEUMONIA patient group(s) "
            f"readable; the probe needs at least --folds={folds} of each class.\n{LAYOUT}"
        )
    decoded = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fits are tiny: more threads cost more than they save
    try:
        probes = {p: cross_validate(features[p], labels, groups, fold, seed) for p in PROBES}
    finally:
        torch.set_num_threads(threads)
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s)"
    return dict(
        root=str(root), resize=resize, folders=sorted({f.folder for f in files}),
        images=len(files), normal=int((labels == 0).sum()), pneumonia=int(labels.sum()),
        patients=len({f.patient for f in files}), groups=len(set(groups)), folds=folds,
        seed=seed, unreadable=[[str(p), e] for p, e in bad],
        machine=f"{machine}, torch {torch.__version__}", file_features=FILE_FEATURES,
        seconds={"decode": round(decoded - started, 1), "total": round(time.time() - started, 1)},
        probes=probes,
    )  # fmt: skip


def format_report(r: dict) -> str:
    """The table and how to read it."""
    lines = [
        f"shortcut probe: {r['root']} (folders {', '.join(r['folders'])}, resize={r['resize']})",
        f"images: {r['images']} (NORMAL {r['normal']}, PNEUMONIA {r['pneumonia']}), "
        f"patients: {r['patients']} ({r['groups']} groups, identical files merged), "
        f"folds: {r['folds']} (patient-grouped, class-stratified, seed {r['seed']})",
        f"machine: {r['machine']}; {r['seconds']['total']:.1f} s "
        f"({r['seconds']['decode']:.1f} s reading/decoding)",
    ]
    if r["unreadable"]:
        first = ": ".join(r["unreadable"][0])
        lines.append(f"skipped {len(r['unreadable'])} unreadable file(s), e.g. {first}")
    lines += ["", f"{'probe':<10} {'features':>8}  {'AUROC':>5}  {'95% CI':<14}  verdict"]
    for name, p in r["probes"].items():
        ci = f"[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]"
        lines.append(f"{name:<10} {p['features']:>8}  {p['auroc']:.3f}  {ci:<14}  {p['verdict']}")
    return "\n".join(lines + ["", EXPLANATION])


def main(argv: Sequence[str] | None = None) -> int:
    about = __doc__.split("\n")[0]
    parser = argparse.ArgumentParser("python -m xray_loss.probe", description=about)
    parser.add_argument("root", help="the chest_xray folder (ROOT/{train,val,test}/{NORMAL,...})")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (>= 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and the bootstrap")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (0 = inline)")
    parser.add_argument("--resize", default="squash", choices=RESIZE_MODES)
    parser.add_argument("--out", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.folds < 2 or args.workers < 0:
        parser.error("--folds must be >= 2 and --workers >= 0")
    try:
        result = run_probe(args.root, args.folds, args.seed, args.workers, args.resize)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
