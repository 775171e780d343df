"""The study's numbers, from its committed records alone (``collect`` wrote them): the runs,
the primary measures of each run, differences paired by seed with their tests, and the power.

Every test is the paired t-test of the per-seed differences (``scipy.stats.ttest_1samp``), its
p-values Holm-adjusted across the comparisons of one question (``report.stats.holm``); "no
difference" needs equivalence within the measure's stated margin (``report.stats.tost``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.stats import nct, ttest_1samp
from scipy.stats import t as student_t

from xray_loss.report.records import current_record, read_curves
from xray_loss.report.stats import holm, mean_std, t_interval, tost

# The design, written before the runs (conf/experiment/bce_vs_ce.yaml, run.sh; a test holds
# these to them). The questions: Q1 the homework's BCE vs CE at lr 1e-5, batch 32, 100 epochs
# (primary); Q2 CE at 10/30/100 epochs; Q3 BCE at lr 1e-5/1e-4/1e-3; the grid exploratory.
SEEDS = 10
LOSSES = ("bce", "ce")
LRS = (1e-5, 1e-4, 1e-3)
PRIMARY_LR = 1e-5
BUDGETS = (10, 30, 100)
EPOCHS = 100
ALPHA = 0.05
POWER = 0.80
ACC_LEVEL = 0.95  # "epochs to val accuracy 0.95"
POWER_DIFFERENCE = 0.01  # the test-NLL difference the power is computed for
KINDS = {"best": "best checkpoint", "last": "fixed epoch"}


@dataclass
class StudyRun:
    """One collected run: its record, per-epoch curves and test predictions."""

    sweep: str
    job: str
    record: dict[str, Any]
    curves: dict[str, list[tuple[int, float]]]
    predictions: dict[str, list] = field(default_factory=dict)

    @property
    def loss(self) -> str:
        return str(self.record["config"]["loss"])

    @property
    def lr(self) -> float:
        return float(self.record["config"]["lr"])

    @property
    def seed(self) -> int:
        return int(self.record["config"]["seed"])

    def curve(self, tag: str) -> dict[int, float]:
        return dict(self.curves.get(tag, []))

    def result(self, budget: int, kind: str, metric: str) -> float:
        """A test metric of the best checkpoint within ``budget`` epochs (``best``) or of the
        weights of epoch ``budget`` (``last``); NaN when the record has no such budget."""
        part = (self.record.get("budgets") or {}).get(str(budget)) or {}
        value = (part.get("test" if kind == "best" else "last_test") or {}).get(f"test/{metric}")
        return math.nan if value is None else float(value)

    def tested_epoch(self, budget: int, kind: str) -> int:
        part = self.record["budgets"][str(budget)]
        return int(part["best_epoch"] if kind == "best" else part["epochs_trained"])


def read_predictions(path: Path) -> dict[str, list]:
    """``predictions.csv`` of ``collect``: labels, patients and each tested epoch's probs."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list] = {"labels": [int(r["label"]) for r in rows]}
    out["patients"] = [r["patient"] for r in rows]
    for column in (c for c in (rows[0] if rows else {}) if c.startswith("epoch")):
        out[column] = [float(r[column]) for r in rows]
    return out


def load(folder: Path) -> list[StudyRun]:
    """The runs under ``folder/runs/<sweep>/<job>/``, in path order."""
    runs = []
    for path in sorted((folder / "runs").glob("*/*/metrics.json")):
        record = current_record(json.loads(path.read_text()))
        predictions = path.parent / "predictions.csv"
        run = StudyRun(path.parent.parent.name, path.parent.name, record, read_curves(path.parent))
        if predictions.exists():
            run.predictions = read_predictions(predictions)
        runs.append(run)
    return runs


def cell(runs: list[StudyRun], loss: str, lr: float) -> dict[int, StudyRun]:
    """seed -> run of one (loss, lr)."""
    return {r.seed: r for r in runs if r.loss == loss and math.isclose(r.lr, lr, rel_tol=1e-9)}


# --- per-run measures ---------------------------------------------------------------------
def epochs_to(curve: dict[int, float], level: float) -> float:
    """The first epoch whose value is at least ``level``; NaN if none (never reached)."""
    return next((float(e) for e, v in sorted(curve.items()) if v >= level), math.nan)


def area(curve: dict[int, float], last: int) -> float:
    """Trapezoid area under the curve over epochs 1..last (NaN when an epoch is missing)."""
    epochs = range(1, last + 1)
    if any(e not in curve for e in epochs):
        return math.nan
    values = np.array([curve[e] for e in epochs])
    return float(np.sum((values[1:] + values[:-1]) / 2))


@dataclass(frozen=True)
class Measure:
    """A number per run, with the margin within which a difference counts as none (TOST),
    stated in the design before the runs, and how many decimals the page shows."""

    name: str
    of: Callable[[StudyRun], float]
    margin: float
    digits: int = 4


def curve_measures() -> list[Measure]:
    """The learning-curve measures of the 100-epoch runs."""
    out = [
        Measure(
            f"epochs to val accuracy ≥ {ACC_LEVEL:g}",
            lambda r: epochs_to(r.curve("val/acc"), ACC_LEVEL),
            margin=5,
            digits=1,
        )
    ]
    for e in BUDGETS:
        out.append(
            Measure(
                f"train NLL at epoch {e}",
                lambda r, e=e: r.curve("train/nll").get(e, math.nan),
                margin=0.02,
            )
        )
    out.append(
        Measure(
            f"area under the val NLL curve (epochs 1-{EPOCHS})",
            lambda r: area(r.curve("val/nll"), EPOCHS),
            margin=2.0,
            digits=2,
        )
    )
    return out


RESULT_METRICS = {
    "nll": ("test NLL", 0.01),
    "auroc": ("test AUROC", 0.01),
    "acc": ("test accuracy at the carve-out threshold", 0.02),
}


def result_measures(budget: int) -> list[Measure]:
    """The test measures at one budget: best checkpoint within it, and the weights of its epoch."""
    return [
        Measure(
            f"{label}, {KINDS[kind]} ({budget} epochs)",
            lambda r, m=m, k=kind: r.result(budget, k, m),
            margin=margin,
        )
        for kind in KINDS
        for m, (label, margin) in RESULT_METRICS.items()
    ]


# --- paired comparisons -------------------------------------------------------------------
@dataclass
class Comparison:
    """``b`` minus ``a`` of one measure, paired by seed, with its tests."""

    measure: Measure
    what: str
    diffs: list[float]
    missing: int  # seeds present in both whose value is NaN (e.g. a level never reached)
    mean: float = math.nan
    sd: float = math.nan
    low: float = math.nan
    high: float = math.nan
    p: float = math.nan
    p_holm: float = math.nan
    p_tost: float = math.nan

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def tested(self) -> bool:
        return self.n >= 2 and not self.missing


def compare(
    a: dict[int, StudyRun], b: dict[int, StudyRun], measure: Measure, what: str
) -> Comparison:
    """``measure`` of ``b`` minus ``a`` over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    return paired([(measure.of(a[s]), measure.of(b[s])) for s in seeds], measure, what)


def within(
    runs: dict[int, StudyRun], first: Measure, second: Measure, measure: Measure, what: str
) -> Comparison:
    """``second`` minus ``first`` of the same runs (e.g. 30 against 10 epochs), per seed."""
    return paired([(first.of(r), second.of(r)) for _, r in sorted(runs.items())], measure, what)


def paired(values: list[tuple[float, float]], measure: Measure, what: str) -> Comparison:
    """The second minus the first of each pair: mean, SD, 95% t-interval, t-test p and TOST p
    within ``measure.margin``; a pair with a NaN (a level never reached) is counted, not
    tested."""
    missing = sum(1 for x, y in values if math.isnan(x) or math.isnan(y))
    c = Comparison(measure, what, [y - x for x, y in values], missing)
    if c.missing:
        return c
    c.mean, c.sd = mean_std(c.diffs)
    if c.n >= 2:
        where = f"{what}: {measure.name}"
        c.low, c.high = t_interval(c.diffs, where)
        c.p = float(ttest_1samp(c.diffs, 0.0).pvalue) if c.sd > 0 else float(c.mean == 0)
        c.p_tost = tost(c.diffs, measure.margin, where)
    return c


def family(comparisons: list[Comparison]) -> list[Comparison]:
    """Holm-adjust the p-values of one question's tested comparisons (in place)."""
    tested = [c for c in comparisons if c.tested]
    for c, adjusted in zip(tested, holm([c.p for c in tested]) if tested else [], strict=True):
        c.p_holm = adjusted
    return comparisons


# --- power --------------------------------------------------------------------------------
def pilot_sd(pilot: Path, lr: float = PRIMARY_LR, budget: int = EPOCHS) -> tuple[float, int]:
    """The seed SD of the paired CE - BCE difference of test objective at (lr, budget) in the
    pilot's records (the 2026-11-28 grid: plain BCE and CE, so the objective is the NLL), and
    the number of pairs it is from."""
    runs = []
    for path in sorted(pilot.rglob("metrics.json")):
        record = current_record(json.loads(path.read_text()))
        runs.append(StudyRun(path.parent.parent.name, path.parent.name, record, {}))
    measure = Measure("test objective", lambda r: r.result(budget, "best", "objective"), 0.01)
    c = compare(cell(runs, "bce", lr), cell(runs, "ce", lr), measure, "pilot")
    return c.sd, c.n


def power(n: int, difference: float, sd: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test over ``n`` seeds (noncentral t, df n - 1)."""
    df, nc = n - 1, difference / (sd / math.sqrt(n))
    crit = student_t.ppf(1 - alpha / 2, df)
    # the lower tail as the upper tail of -nc: nct.cdf(-crit, df, nc) is NaN far out
    return float(nct.sf(crit, df, nc) + nct.sf(crit, df, -nc))


def seeds_needed(difference: float, sd: float, target: float = POWER, alpha: float = ALPHA) -> int:
    """The fewest seeds whose paired t-test reaches ``target`` power for ``difference``."""
    n = 2
    while power(n, difference, sd, alpha) < target:
        n += 1
    return n


def detectable(n: int, sd: float, target: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest difference ``n`` seeds detect with ``target`` power (NaN below 2 seeds)."""
    if n < 2 or not sd > 0:
        return math.nan
    return float(brentq(lambda d: power(n, d, sd, alpha) - target, 1e-12, 40 * sd))
