"""From runs to the figures and tables of a report.

    python -m xray_loss.report logs/full_grid/multirun/<sweep> [--out DIR] [--compare lr]

Reads every run under the given directories (their ``metrics.json``, TensorBoard events via
TensorBoard's own ``EventAccumulator``, and ``test_predictions.csv``), skips runs that have not
completed (saying which), and writes into ``--out`` (default ``<first dir>/report``):

- ``fig1_loss_compare``: train/val accuracy and loss per epoch, BCE vs CE (2 x 2 panels);
- ``fig2_epochs``: the same curves for epochs 10 / 30 / 100; ``fig2_lr``: for lr 1e-5 / 1e-4 /
  1e-3; ``--compare AXIS`` draws any sweep axis the same way. Seeds are drawn as the mean line
  and a shaded band (min to max); the other axes are held at the study's values when present,
  else at their most common value (named in the figure title);
- ``calibration``: reliability diagram per head (pooled test predictions), with the ECE;
- ``summary.csv`` / ``summary.md``: one row per configuration, test metrics as mean +- std over
  seeds, a 95% bootstrap CI of test AUROC, ECE, the best configuration (by validation AUROC) in
  bold, and paired BCE-vs-CE tests over seeds: is the difference larger than seed noise?

Figures are PNG and PDF. The functions are importable (``load_runs``, ``compare_figure``, ...),
which is how ``notebooks/study.ipynb`` draws them.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from xray_loss.record import read_record  # noqa: E402

log = logging.getLogger(__name__)

AXES = (
    "loss",
    "lr",
    "epochs",
    "batch_size",
    "model",
    "data",
    "optimizer",
    "scheduler",
    "weight_decay",
    "image_size",
)
CURVES = ("train/acc", "val/acc", "train/loss", "val/loss")
TEST_METRICS = ("acc", "auroc", "f1", "sensitivity", "specificity")
# the original study's settings, used to pick the slice of a larger grid each figure shows
STUDY = {
    "fig1_loss_compare": ("loss", {"lr": 1e-5, "epochs": 100}),
    "fig2_epochs": ("epochs", {"loss": "ce", "lr": 1e-5}),
    "fig2_lr": ("lr", {"loss": "bce", "epochs": 100}),
}


@dataclass
class Run:
    """One completed run: its config, per-epoch curves and test predictions."""

    path: Path
    record: dict[str, Any]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None

    @property
    def config(self) -> dict[str, Any]:
        return self.record.get("config", {})

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    def test(self, metric: str) -> float:
        return float(self.record.get("test", {}).get(f"test/{metric}", math.nan))


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values (epoch starting at 1) of the contract's curves, from the events."""
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags().get("scalars", []))
    if "epoch" not in tags:
        return {}
    step_epoch = {e.step: int(round(e.value)) for e in ea.Scalars("epoch")}
    curves = {}
    for tag in CURVES:
        if tag not in tags:
            continue
        by_epoch: dict[int, float] = {}
        for event in ea.Scalars(tag):  # a resumed run may repeat a step: the last one wins
            if event.step in step_epoch:
                by_epoch[step_epoch[event.step] + 1] = event.value
        curves[tag] = sorted(by_epoch.items())
    return curves


def read_predictions(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    path = run_dir / "test_predictions.csv"
    if not path.exists():
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["prob"]) for r in rows])
    return labels, probs


def load_runs(paths: list[Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Completed runs under ``paths`` (run or sweep directories) and the skipped ones."""
    runs, skipped = [], []
    found = sorted({p.parent for root in paths for p in Path(root).rglob("metrics.json")})
    for run_dir in found:
        record = read_record(run_dir)
        status = (record or {}).get("status", "unreadable")
        if status != "completed":
            skipped.append((run_dir, status))
            continue
        run = Run(run_dir, record, read_curves(run_dir))
        predictions = read_predictions(run_dir)
        if predictions is not None:
            run.labels, run.probs = predictions
        runs.append(run)
    return runs, skipped


# --- grouping -------------------------------------------------------------------------------
def varying_axes(runs: list[Run]) -> list[str]:
    """Config axes (other than the seed) that take more than one value in these runs."""
    return [a for a in AXES if len({str(r.config.get(a)) for r in runs}) > 1]


def _same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def slice_for(runs: list[Run], axis: str, prefer: dict[str, Any]) -> tuple[list[Run], dict]:
    """Runs varying along ``axis`` only: every other varying axis is held at ``prefer``'s value
    if present, else at its most common value."""
    fixed = {}
    for other in varying_axes(runs):
        if other == axis:
            continue
        values = [r.config.get(other) for r in runs]
        wanted = prefer.get(other)
        if wanted is not None and any(_same(v, wanted) for v in values):
            fixed[other] = wanted
        else:
            fixed[other] = Counter(str(v) for v in values).most_common(1)[0][0]
    chosen = [r for r in runs if all(_same(r.config.get(k), v) for k, v in fixed.items())]
    return chosen, fixed


def _label(axis: str, value: Any) -> str:
    if axis == "lr":
        return f"lr={float(value):g}"
    return f"{axis}={value}" if axis != "loss" else str(value).upper()


def _sort_key(value: Any):
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def mean_band(runs: list[Run], tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean, min and max over runs (seeds) of one curve, on the epochs all runs have."""
    series = [dict(r.curves.get(tag, [])) for r in runs]
    series = [s for s in series if s]
    if not series:
        return (np.array([]),) * 4
    epochs = sorted(set.intersection(*(set(s) for s in series)))
    values = np.array([[s[e] for e in epochs] for s in series])
    return np.array(epochs), values.mean(0), values.min(0), values.max(0)


def compare_figure(
    runs: list[Run], axis: str, prefer: dict[str, Any] | None = None, title: str | None = None
):
    """2 x 2 panels (accuracy / loss x train / val), one mean line + seed band per value of
    ``axis``. Returns (figure, data) where data maps panel -> label -> (epochs, mean)."""
    chosen, fixed = slice_for(runs, axis, prefer or {})
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in chosen:
        groups[str(r.config.get(axis))].append(r)
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), dpi=110, sharex="col")
    data: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for panel, tag in zip(axes.flat, CURVES, strict=True):
        data[tag] = {}
        for i, value in enumerate(sorted(groups, key=_sort_key)):
            epochs, mean, low, high = mean_band(groups[value], tag)
            if not len(epochs):
                continue
            label = _label(axis, value)
            n = len(groups[value])
            # dashes keep curves visible where they coincide (an epoch budget is a prefix)
            panel.plot(
                epochs,
                mean,
                color=colors[i % len(colors)],
                label=f"{label} (n={n})",
                lw=1.6,
                ls=("-", "--", ":", "-.")[i % 4],
            )
            if n > 1:
                panel.fill_between(epochs, low, high, color=colors[i % len(colors)], alpha=0.2)
            data[tag][label] = (epochs.tolist(), mean.tolist())
        split, metric = tag.split("/")
        panel.set_title(f"{split} {'accuracy' if metric == 'acc' else 'loss'}")
        panel.grid(alpha=0.3)
        panel.set_xlabel("epoch")
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].legend(fontsize=8)
    held = ", ".join(f"{k}={v}" for k, v in fixed.items())
    fig.suptitle(title or f"{axis} compared" + (f" ({held})" if held else ""), fontsize=11)
    fig.tight_layout()
    return fig, data


# --- statistics -----------------------------------------------------------------------------
def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Test AUROC with torchmetrics, as in training (NaN when one class is missing)."""
    if len(np.unique(labels)) < 2:
        return math.nan
    return float(
        binary_auroc(
            torch.from_numpy(probs).float(), torch.from_numpy(labels).long(), validate_args=False
        )
    )


def bootstrap_auroc_ci(runs: list[Run], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% CI of the seeds' mean test AUROC, resampling test images (same draw for all seeds)."""
    runs = [r for r in runs if r.labels is not None]
    if not runs:
        return math.nan, math.nan
    labels = runs[0].labels
    if any(len(r.labels) != len(labels) or not np.array_equal(r.labels, labels) for r in runs):
        runs = runs[:1]  # different test sets: fall back to the first run's
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        values = [auroc(labels[idx], r.probs[idx]) for r in runs]
        if not any(math.isnan(v) for v in values):
            stats.append(float(np.mean(values)))
    if not stats:
        return math.nan, math.nan
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE of P(pneumonia) over equal-width bins (torchmetrics' binary calibration error)."""
    return float(
        binary_calibration_error(
            torch.from_numpy(probs).float(), torch.from_numpy(labels).long(), n_bins=bins
        )
    )


def sign_flip_test(differences: list[float], n_random: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of a paired sign-flip permutation test (exact for n <= 16)."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    if n <= 16:
        flips = np.array(list(itertools.product((-1, 1), repeat=n)))
    else:
        flips = np.random.default_rng(seed).choice((-1, 1), size=(n_random, n))
    means = np.abs((flips * d).mean(1))
    return float((means >= observed - 1e-12).mean())


def configurations(runs: list[Run]) -> dict[tuple, list[Run]]:
    """Runs grouped by their varying axes (seeds, folds and other repeats pooled)."""
    axes = varying_axes(runs)
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        groups[tuple(str(r.config.get(a)) for a in axes)].append(r)
    return groups


def summary_rows(runs: list[Run], n_boot: int = 1000) -> tuple[list[str], list[dict[str, Any]]]:
    axes = varying_axes(runs)
    rows = []
    for key, members in sorted(
        configurations(runs).items(), key=lambda kv: [_sort_key(v) for v in kv[0]]
    ):
        row: dict[str, Any] = dict(zip(axes, key, strict=True))
        row["n"] = len(members)
        for m in TEST_METRICS:
            values = [r.test(m) for r in members]
            row[f"{m}_mean"] = float(np.mean(values))
            row[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        row["auroc_ci_low"], row["auroc_ci_high"] = bootstrap_auroc_ci(members, n_boot)
        eces = [
            expected_calibration_error(r.labels, r.probs) for r in members if r.labels is not None
        ]
        row["ece_mean"] = float(np.mean(eces)) if eces else math.nan
        vals = [r.record.get("best_val_auroc") or math.nan for r in members]
        row["val_auroc_mean"] = float(np.mean(vals))
        rows.append(row)
    if rows:
        best = max(
            range(len(rows)),
            key=lambda i: (
                -1 if math.isnan(rows[i]["val_auroc_mean"]) else rows[i]["val_auroc_mean"]
            ),
        )
        for i, row in enumerate(rows):
            row["best"] = i == best
    return axes, rows


def paired_loss_tests(runs: list[Run]) -> list[dict[str, Any]]:
    """BCE vs CE at equal settings, paired by seed: mean AUROC difference and its p-value."""
    others = [a for a in varying_axes(runs) if a != "loss"]
    cells: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        loss = str(r.config.get("loss"))
        if loss in ("bce", "ce"):
            cells[tuple(str(r.config.get(a)) for a in others)][loss][r.seed] = r.test("auroc")
    results, pooled = [], []
    for key, by_loss in sorted(cells.items()):
        seeds = sorted(set(by_loss["bce"]) & set(by_loss["ce"]))
        if not seeds:
            continue
        diffs = [by_loss["ce"][s] - by_loss["bce"][s] for s in seeds]
        pooled += diffs
        results.append(_test_row(dict(zip(others, key, strict=True)), diffs))
    if len(results) > 1:
        results.append(_test_row({"all settings pooled": ""}, pooled))
    return results


def _test_row(setting: dict[str, Any], diffs: list[float]) -> dict[str, Any]:
    p = sign_flip_test(diffs)
    n = len(diffs)
    reachable = 2.0 / 2**n if n <= 16 else 0.0
    if reachable > 0.05:
        verdict = f"undecidable with {n} seed(s): smallest possible p is {reachable:.2f}"
    elif p < 0.05:
        verdict = "larger than seed noise (p < 0.05)"
    else:
        verdict = "within seed noise"
    return {
        "setting": setting,
        "n": n,
        "mean_diff": float(np.mean(diffs)),
        "std_diff": float(np.std(diffs, ddof=1)) if n > 1 else 0.0,
        "p": p,
        "verdict": verdict,
    }


def calibration_figure(runs: list[Run], bins: int = 10):
    """Reliability diagram per head, test predictions pooled over the given runs."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=110)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    by_head: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if r.labels is not None:
            by_head[str(r.config.get("loss"))].append(r)
    data = {}
    edges = np.linspace(0, 1, bins + 1)
    for head, members in sorted(by_head.items()):
        labels = np.concatenate([r.labels for r in members])
        probs = np.concatenate([r.probs for r in members])
        which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
        xs, ys = [], []
        for b in range(bins):
            mask = which == b
            if mask.any():
                xs.append(float(probs[mask].mean()))
                ys.append(float(labels[mask].mean()))
        ece = expected_calibration_error(labels, probs)
        ax.plot(xs, ys, marker="o", lw=1.4, label=f"{head.upper()} (ECE {ece:.3f})")
        data[head] = {"confidence": xs, "frequency": ys, "ece": ece}
    ax.set_xlabel("predicted P(pneumonia)")
    ax.set_ylabel("observed pneumonia rate")
    ax.set_title("Reliability on the test split")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, data


# --- output ---------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def write_summary(
    out: Path,
    axes: list[str],
    rows: list[dict[str, Any]],
    tests: list[dict[str, Any]],
    skipped: list[tuple[Path, str]],
) -> None:
    columns = (
        [*axes, "n"]
        + [f"{m}_{s}" for m in TEST_METRICS for s in ("mean", "std")]
        + ["auroc_ci_low", "auroc_ci_high", "ece_mean", "val_auroc_mean", "best"]
    )
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k), 6) for k in columns})
    lines = [
        "# Summary",
        "",
        "Test metrics as mean ± std over seeds; AUROC with a 95% bootstrap CI (test images "
        "resampled). **Bold**: the best configuration by mean validation AUROC (choosing by "
        "test would be optimistic).",
        "",
    ]
    header = [
        *axes,
        "n",
        "accuracy",
        "AUROC [95% CI]",
        "F1",
        "sensitivity",
        "specificity",
        "ECE",
        "val AUROC",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[a]) for a in axes] + [str(row["n"])]
        cells += [
            f"{row['acc_mean']:.3f} ± {row['acc_std']:.3f}",
            f"{row['auroc_mean']:.3f} ± {row['auroc_std']:.3f} "
            f"[{_fmt(row['auroc_ci_low'], 3)}, {_fmt(row['auroc_ci_high'], 3)}]",
        ]
        cells += [
            f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}"
            for m in ("f1", "sensitivity", "specificity")
        ]
        cells += [_fmt(row["ece_mean"], 3), _fmt(row["val_auroc_mean"], 3)]
        if row.get("best"):
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if tests:
        lines += [
            "",
            "## BCE vs CE at equal settings",
            "",
            "Test AUROC difference CE − BCE paired by seed; two-sided sign-flip "
            "permutation test over seeds (is the difference larger than seed noise?).",
            "",
            "| setting | seeds | mean diff | std | p | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for t in tests:
            setting = ", ".join(f"{k}={v}" if v != "" else k for k, v in t["setting"].items())
            lines.append(
                f"| {setting or '-'} | {t['n']} | {t['mean_diff']:+.4f} | "
                f"{t['std_diff']:.4f} | {t['p']:.3f} | {t['verdict']} |"
            )
    if skipped:
        lines += ["", "## Skipped runs (not completed)", ""]
        lines += [f"- `{p}`: {status}" for p, status in skipped]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def save(fig, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return paths


def make_report(
    paths: list[Path], out: Path, compare: list[str] | None = None, n_boot: int = 1000
) -> dict[str, Any]:
    """Write every figure and the summary; return what was written and the figures' data."""
    runs, skipped = load_runs(paths)
    for run_dir, status in skipped:
        print(f"skipped {run_dir}: {status}")
    if not runs:
        raise SystemExit(f"No completed runs under {', '.join(map(str, paths))}.")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"figures": {}, "skipped": skipped, "runs": len(runs)}
    jobs = {name: (axis, prefer) for name, (axis, prefer) in STUDY.items()}
    for axis in compare or []:
        jobs[f"compare_{axis}"] = (axis, {})
    axes_present = varying_axes(runs)
    for name, (axis, prefer) in jobs.items():
        if axis not in axes_present:
            continue
        fig, data = compare_figure(runs, axis, prefer)
        written["figures"][name] = {"files": save(fig, out, name), "data": data}
    loss_runs, _ = slice_for(runs, "loss", STUDY["fig1_loss_compare"][1])
    fig, data = calibration_figure(loss_runs)
    written["figures"]["calibration"] = {"files": save(fig, out, "calibration"), "data": data}
    axes, rows = summary_rows(runs, n_boot)
    tests = paired_loss_tests(runs)
    write_summary(out, axes, rows, tests, skipped)
    written.update(summary=rows, tests=tests)
    print(
        f"{len(runs)} run(s); wrote {len(written['figures'])} figure(s), summary.md and "
        f"summary.csv to {out}"
    )
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m xray_loss.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="multirun or run directories")
    parser.add_argument("--out", type=Path, help="output folder (default: <first dir>/report)")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        help=f"another axis to compare, e.g. --compare lr ({', '.join(AXES)})",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    for d in args.dirs:
        if not d.exists():
            parser.error(f"{d} does not exist")
    bad = [a for a in args.compare if a not in AXES]
    if bad:
        parser.error(f"unknown --compare axis {bad}; valid: {', '.join(AXES)}")
    make_report(args.dirs, args.out or args.dirs[0] / "report", args.compare, args.bootstrap)


if __name__ == "__main__":
    random.seed(0)
    main()
