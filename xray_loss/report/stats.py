"""The report's statistics, each at the right unit, and what each interval covers.

- Seeds (and folds) of one configuration are repetitions: mean and std over them
  (:func:`summarise`, which is also the sweep's ``sweep_aggregate.csv``) and their range
  (lowest, highest): how much training randomness moves a result. The std of one repeat is
  undefined (NaN), not 0.
- The bootstrap CI of test AUROC covers *test sampling* only: each run's model is fixed and
  the test set is resampled, *patients* when the test predictions know them (Kermany: several
  images per child), images otherwise; runs sharing a test set are resampled together, runs on
  different test sets independently. It says nothing about seeds.
- ECE: one definition everywhere (summary, figure): per run over :data:`ECE_BINS` equal-width
  bins of P(pneumonia) (:func:`reliability`), then the mean over the runs.
- Paired differences over seeds (BCE vs CE, ``report.paired`` and ``report.findings``): the
  95% t-interval (:func:`t_interval`, Student's t from scipy.stats at n - 1 degrees of
  freedom), p-values adjusted across the cells of one comparison (:func:`holm`), and
  equivalence within a margin the caller gives (:func:`tost`) where the claim would be "no
  difference". A NaN difference is refused, naming its cell (:func:`finite`): it would give a
  sign-flip p of 0 and a too-narrow interval.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from scipy.stats import t as student_t
from scipy.stats import ttest_1samp
from torchmetrics.functional.classification import binary_auroc

from xray_loss.errors import UserError
from xray_loss.metrics import metric_names
from xray_loss.report.records import completed_records, time_stopped
from xray_loss.report.runs import Run, configurations, confounds, value

ECE_BINS = 10  # the reliability diagram and the ECE use the same bins


def summary_keys() -> tuple[str, ...]:
    """The values a configuration's row averages over its repeats."""
    return ("best_val_auroc", *(f"test_{m}" for m in metric_names()))


def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Test AUROC with torchmetrics, as in training (NaN when one class is missing)."""
    if len(np.unique(labels)) < 2:
        return math.nan
    return float(
        binary_auroc(
            torch.from_numpy(probs).float(), torch.from_numpy(labels).long(), validate_args=False
        )
    )


def reliability(
    labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """Per equal-width bin of P(pneumonia) ([0, 0.1), ..., [0.9, 1]): images (``count``),
    their mean P (``confidence``) and observed pneumonia rate (``frequency``, NaN if empty)."""
    which = np.clip((np.asarray(probs, dtype=float) * bins).astype(int), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, weights=probs, minlength=bins) / count
        frequency = np.bincount(which, weights=labels, minlength=bins) / count
    return {"count": count, "confidence": confidence, "frequency": frequency}


def expected_calibration_error(
    labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of one run's P(pneumonia): sum over the bins of :func:`reliability` of
    n_bin / n * |observed rate - mean P| (torchmetrics' binary calibration error, but for a
    probability of exactly 1, which falls in the last bin here)."""
    if len(labels) == 0:
        return math.nan
    r = reliability(labels, probs, bins)
    full = r["count"] > 0
    gaps = np.abs(r["frequency"][full] - r["confidence"][full])
    return float(np.sum(r["count"][full] / len(labels) * gaps))


def ece_over_runs(runs: list[Run], bins: int = ECE_BINS) -> tuple[float, float, int]:
    """The report's ECE of a set of runs (the table's and the figure's): mean and std over
    the runs of each run's ECE, and how many runs had predictions."""
    predicted = [r for r in runs if r.labels is not None]
    eces = [expected_calibration_error(r.labels, r.probs, bins) for r in predicted]
    mean, std = mean_std(eces)
    return mean, std, len(eces)


def counted_test_set(run: Run) -> dict[str, int | None]:
    """A run's test set: images, pneumonia and normal images, patients (None if not known)."""
    if run.labels is None:
        return {"images": None, "pneumonia": None, "normal": None, "patients": None}
    positives = int(np.sum(run.labels))
    return {
        "images": len(run.labels),
        "pneumonia": positives,
        "normal": len(run.labels) - positives,
        "patients": None if run.patients is None else len(set(run.patients)),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std of the finite values (std NaN for one value: it is undefined)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def _metric(record: dict[str, Any], key: str) -> float:
    raw = (
        record.get(key)
        if key == "best_val_auroc"
        else (record.get("test") or {}).get(f"test/{key[5:]}")
    )
    return math.nan if raw is None else float(raw)


def summarise(records: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per configuration of the completed training records: its columns, n, and
    mean/std of the best val AUROC and every test metric over its repeats (seeds, folds); a
    run with epoch budgets counts as the shorter runs it stands for (a diverged one as those
    it reached, ``report.records.completed_records``). ``stopped_by_max_time``: how many of the
    repeats the trainer's ``max_time`` stopped, ``max_time_epochs`` the epochs they trained."""
    done = [v for r in records for _, v in completed_records(r)]
    cols, groups = configurations(done)
    rows = []
    for head, members in groups:
        stopped = [r for r in members if time_stopped(r)]
        trained = sorted(int(r["epochs_trained"]) for r in stopped if "epochs_trained" in r)
        row: dict[str, Any] = {**head, "n": len(members), "stopped_by_max_time": len(stopped)}
        row["max_time_epochs"] = trained
        for key in summary_keys():
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([_metric(r, key) for r in members])
        rows.append(row)
    return cols, rows


# --- bootstrap ------------------------------------------------------------------------------
def _units(run: Run) -> tuple[list[np.ndarray], str]:
    """Index arrays of what is resampled: the images of each patient when known, else images."""
    if run.patients is not None:
        by_patient: dict[str, list[int]] = defaultdict(list)
        for i, patient in enumerate(run.patients):
            by_patient[patient].append(i)
        return [np.array(v) for v in by_patient.values()], "patients"
    return [np.array([i]) for i in range(len(run.labels))], "images"


def bootstrap_auroc_ci(
    runs: list[Run], n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, str]:
    """95% CI of the runs' mean test AUROC, and the unit resampled (``patients``/``images``).

    Runs on one test set (same labels and patients) share each resample; runs on different
    test sets are resampled independently, so none is silently dropped or reused.
    """
    runs = [r for r in runs if r.labels is not None]
    if not runs:
        return math.nan, math.nan, ""
    test_sets: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        patients = None if r.patients is None else tuple(r.patients)
        test_sets[(r.labels.tobytes(), patients)].append(r)
    prepared = [(members, *_units(members[0])) for members in test_sets.values()]
    unit = "patients" if all(u == "patients" for _, _, u in prepared) else "images"
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        values = []
        for members, units, _ in prepared:
            idx = np.concatenate([units[i] for i in rng.integers(0, len(units), len(units))])
            values += [auroc(r.labels[idx], r.probs[idx]) for r in members]
        if not any(math.isnan(v) for v in values):
            stats.append(float(np.mean(values)))
    if not stats:
        return math.nan, math.nan, unit
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5)), unit


def summary_rows(runs: list[Run], n_boot: int = 1000) -> tuple[list[str], list[dict[str, Any]]]:
    """The report's table: per configuration the test metrics (mean, std over repeats), the
    AUROC's range over repeats and test-sampling bootstrap CI, the ECE (:func:`ece_over_runs`),
    the test set's size, the values of the settings that vary only together with the columns
    (``report.runs.confounds``), and the best configuration by validation AUROC (choosing by
    test would be optimistic)."""
    cols, groups = configurations(runs, record_of=lambda r: r.record)
    _, summary = summarise([r.record for r in runs])
    confounded = confounds([r.record for r in runs])
    rows = []
    for row, (_, members) in zip(summary, groups, strict=True):
        row.update({key: value(members[0].record, key) for key in confounded})
        for m in metric_names():
            row[f"{m}_mean"], row[f"{m}_std"] = row.pop(f"test_{m}_mean"), row.pop(f"test_{m}_std")
        row["val_auroc_mean"], _ = row.pop("best_val_auroc_mean"), row.pop("best_val_auroc_std")
        aurocs = [a for a in (r.test("auroc") for r in members) if not math.isnan(a)]
        row["auroc_seed_min"] = min(aurocs) if aurocs else math.nan
        row["auroc_seed_max"] = max(aurocs) if aurocs else math.nan
        row["auroc_ci_low"], row["auroc_ci_high"], row["auroc_ci_unit"] = bootstrap_auroc_ci(
            members, n_boot
        )
        row["ece_mean"], row["ece_std"], _ = ece_over_runs(members)
        sizes = [counted_test_set(r) for r in members if r.labels is not None]
        for key in ("images", "pneumonia", "patients"):
            found = {s[key] for s in sizes}
            row[f"test_{key}"] = found.pop() if len(found) == 1 else None
        rows.append(row)
    if rows:
        scores = [-1.0 if math.isnan(r["val_auroc_mean"]) else r["val_auroc_mean"] for r in rows]
        best = int(np.argmax(scores))
        for i, row in enumerate(rows):
            row["best"] = i == best
    return cols, rows


# --- paired differences over seeds ----------------------------------------------------------
class StatsError(UserError, ValueError):
    """Numbers a statistic cannot honestly be computed from; the message names them."""


def finite(differences: list[float], cell: str) -> np.ndarray:
    """The differences of ``cell`` as an array, refused when one is NaN (or infinite)."""
    d = np.asarray(differences, dtype=float)
    bad = int(np.sum(~np.isfinite(d)))
    if bad:
        raise StatsError(
            f"{cell}: {bad} of {len(d)} paired difference(s) are NaN (a run without that "
            f"metric): rerun or remove the run, since a NaN would give p = 0 and a too-narrow "
            f"interval."
        )
    return d


def t_quantile(n: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t for the mean of ``n`` values."""
    return float(student_t.ppf(0.5 + level / 2, n - 1))


def t_interval(differences: list[float], cell: str, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` t-interval of the mean difference over seeds (NaN, NaN below 2 seeds)."""
    d = finite(differences, cell)
    if len(d) < 2:
        return math.nan, math.nan
    half = t_quantile(len(d), level) * float(np.std(d, ddof=1)) / math.sqrt(len(d))
    return float(d.mean()) - half, float(d.mean()) + half


def holm(p_values: list[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the order given: the i-th smallest p
    times (m - i + 1), made non-decreasing in that order, capped at 1. They control the chance
    of any false "differs" across the m cells of one comparison, whatever their dependence.
    (scipy.stats.false_discovery_control does Benjamini-Hochberg, a weaker guarantee.)"""
    p = finite(p_values, "the p-values to adjust")
    order = np.argsort(p, kind="stable")
    stepped = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(stepped), 1.0)
    return adjusted.tolist()


def tost(differences: list[float], margin: float, cell: str) -> float:
    """The p-value of equivalence within +-``margin`` (two one-sided t-tests on the paired
    differences: mean <= -margin and mean >= margin are both rejected at p). Small p: the
    mean difference lies inside the margin, which a non-significant difference alone never
    shows. NaN below 2 seeds."""
    if not margin > 0:
        raise StatsError(f"{cell}: the equivalence margin must be positive, not {margin}.")
    d = finite(differences, cell)
    if len(d) < 2:
        return math.nan
    above = ttest_1samp(d, -margin, alternative="greater").pvalue
    below = ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(above, below))
