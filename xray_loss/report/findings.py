"""The numbers of the results page (``report.page``): BCE vs CE paired by seed, the matched
controls, the winners and the overfitting epochs, each from the runs' records and curves.

One rule judges every difference on the page: its 95% t-interval over the seeds excludes 0
(:func:`differs`); so the page says the same thing whoever reruns it on the same runs, and
something else when the numbers say something else.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from xray_loss.report.paired import sign_flip_test
from xray_loss.report.runs import Run
from xray_loss.report.stats import mean_std, t_interval

HEADS = {"bce": "BCE", "ce": "CE", "bce_matched": "BCE matched to CE", "ce_matched": "CE matched"}


def _key(run: Run) -> tuple[str, float, int]:
    return str(run.config["loss"]), float(run.config["lr"]), int(run.config["epochs"])


def cells_of(runs: list[Run]) -> dict[tuple[str, float, int], dict[int, Run]]:
    """(head, lr, epochs) -> seed -> run."""
    cells: dict[tuple[str, float, int], dict[int, Run]] = defaultdict(dict)
    for r in runs:
        cells[_key(r)][r.seed] = r
    return cells


def paired(cells: dict, a: str, b: str, lr: float, epochs: int, metric: str) -> dict[str, Any]:
    """Test ``metric`` of head ``b`` minus head ``a`` at (lr, epochs), paired by seed: mean,
    std, 95% t-interval over the seeds and the sign-flip p."""
    x, y = cells.get((a, lr, epochs), {}), cells.get((b, lr, epochs), {})
    diffs = [y[s].test(metric) - x[s].test(metric) for s in sorted(set(x) & set(y))]
    cell = f"{HEADS.get(b, b)} minus {HEADS.get(a, a)}, test {metric} at lr={lr}, {epochs} epochs"
    low, high = t_interval(diffs, cell)  # (refuses a NaN difference, naming the cell)
    mean, std = mean_std(diffs)
    return {"n": len(diffs), "mean": mean, "std": std, "low": low, "high": high,
            "p": sign_flip_test(diffs, cell=cell)}  # fmt: skip


def diff_text(d: dict[str, Any]) -> str:
    """``-0.0127 [-0.0310, +0.0056]``: the mean difference and its 95% interval over seeds."""
    if not d["n"]:
        return "-"
    if d["n"] < 2:
        return f"{d['mean']:+.4f} (1 seed: no interval)"
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def differs(d: dict[str, Any]) -> bool:
    """The rule of every "differ" on the page: the 95% interval over seeds excludes 0."""
    return d["n"] > 1 and (d["low"] > 0 or d["high"] < 0)


def overfitting(runs: list[Run]) -> list[dict[str, Any]]:
    """Per (head, lr) of the longest runs: the epoch of the lowest mean validation loss, the
    mean val loss there and at the end, and the mean train loss at the end."""
    longest = max(int(r.config["epochs"]) for r in runs)
    groups: dict[tuple[str, float], list[Run]] = defaultdict(list)
    for r in runs:
        if int(r.config["epochs"]) == longest and r.curves.get("val/objective"):
            groups[(str(r.config["loss"]), float(r.config["lr"]))].append(r)
    rows = []
    for (head, lr), members in sorted(groups.items()):
        n = min(len(r.curves["val/objective"]) for r in members)
        val = np.mean([[v for _, v in r.curves["val/objective"][:n]] for r in members], axis=0)
        train = np.mean([r.curves["train/objective"][n - 1][1] for r in members])
        low = int(np.argmin(val))
        epochs = [e for e, _ in members[0].curves["val/loss"][:n]]
        rows.append(
            {
                "head": head,
                "lr": lr,
                "epochs": epochs[-1],
                "min_epoch": epochs[low],
                "min_val": val[low],
                "end_val": val[-1],
                "end_train": float(train),
            }  # fmt: skip
        )
    return rows


def seed_std(cells: dict, head: str, metric: str) -> float:
    """The median over configurations of the seed-to-seed std of test ``metric``."""
    stds = [
        float(np.std([r.test(metric) for r in seeds.values()], ddof=1))
        for (h, _, _), seeds in cells.items()
        if h == head and len(seeds) > 1
    ]
    return float(np.median(stds)) if stds else math.nan


def best(cells: dict, score) -> tuple[tuple[str, float, int], float]:
    means = {
        key: float(np.mean([score(r) for r in seeds.values()]))
        for key, seeds in cells.items()
        if key[0] in ("bce", "ce")
    }
    key = max(means, key=means.get)
    return key, means[key]
