"""The report's statistics, each at the right unit.

- Seeds (and folds) of one configuration are repetitions: mean and std over them
  (:func:`summarise`, which is also the sweep's ``sweep_aggregate.csv``); the std of one
  repeat is undefined (NaN), not 0.
- The bootstrap CI of test AUROC resamples *patients* when the test predictions know them
  (Kermany: several images per child), images otherwise; runs sharing a test set are resampled
  together, runs on different test sets independently.
- BCE vs CE: differences paired by seed and fold at otherwise equal settings. The pooled test
  first averages each seed's differences over the settings, since differences that share a
  seed (same initialisation and data order) are not independent. Sign-flip permutation test:
  exact up to 16 pairs, else Monte Carlo with p = (k + 1) / (N + 1), never 0.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error

from xray_loss.metrics import METRICS, REPEATS
from xray_loss.report.records import completed_records, time_stopped
from xray_loss.report.runs import Run, columns, configurations, confounds, sort_key, value

ECE_BINS = 10  # the reliability diagram and the ECE in its legend use the same bins
SUMMARY_KEYS = ("best_val_auroc", *(f"test_{m}" for m in METRICS))


def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Test AUROC with torchmetrics, as in training (NaN when one class is missing)."""
    if len(np.unique(labels)) < 2:
        return math.nan
    return float(
        binary_auroc(
            torch.from_numpy(probs).float(), torch.from_numpy(labels).long(), validate_args=False
        )
    )


def expected_calibration_error(
    labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of P(pneumonia) over equal-width bins (torchmetrics' binary calibration error)."""
    return float(
        binary_calibration_error(
            torch.from_numpy(probs).float(), torch.from_numpy(labels).long(), n_bins=bins
        )
    )


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
        for key in SUMMARY_KEYS:
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
    AUROC bootstrap CI, the ECE, the values of the settings that vary only together with the
    columns (``report.runs.confounds``), and the best configuration by validation AUROC
    (choosing by test would be optimistic)."""
    cols, groups = configurations(runs, record_of=lambda r: r.record)
    _, summary = summarise([r.record for r in runs])
    confounded = confounds([r.record for r in runs])
    rows = []
    for row, (_, members) in zip(summary, groups, strict=True):
        row.update({key: value(members[0].record, key) for key in confounded})
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = row.pop(f"test_{m}_mean"), row.pop(f"test_{m}_std")
        row["val_auroc_mean"], _ = row.pop("best_val_auroc_mean"), row.pop("best_val_auroc_std")
        row["auroc_ci_low"], row["auroc_ci_high"], row["auroc_ci_unit"] = bootstrap_auroc_ci(
            members, n_boot
        )
        eces = [
            expected_calibration_error(r.labels, r.probs) for r in members if r.labels is not None
        ]
        row["ece_mean"] = float(np.mean(eces)) if eces else math.nan
        rows.append(row)
    if rows:
        scores = [-1.0 if math.isnan(r["val_auroc_mean"]) else r["val_auroc_mean"] for r in rows]
        best = int(np.argmax(scores))
        for i, row in enumerate(rows):
            row["best"] = i == best
    return cols, rows


# --- paired tests ---------------------------------------------------------------------------
def sign_flip_test(differences: list[float], n_random: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of a paired sign-flip permutation test.

    Exact (all 2^n sign patterns) for n <= 16; otherwise ``n_random`` random patterns with the
    observed one counted in, p = (k + 1) / (N + 1), so a Monte Carlo p is never 0.
    """
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    if n <= 16:
        flips = np.array(list(itertools.product((-1, 1), repeat=n)))
        return float((np.abs((flips * d).mean(1)) >= observed - 1e-12).mean())
    flips = np.random.default_rng(seed).choice((-1, 1), size=(n_random, n))
    k = int((np.abs((flips * d).mean(1)) >= observed - 1e-12).sum())
    return (k + 1) / (n_random + 1)


def smallest_p(n: int) -> float:
    """The smallest two-sided p an exact sign-flip test over n pairs can reach."""
    return 2.0 / 2**n if n <= 16 else 0.0


def _cell(run: Run) -> tuple:
    """A run's settings without the head (the loss group) and without its repeats."""
    return tuple(
        sorted(
            (k, str(v))
            for k, v in run.settings.items()
            if k != "loss" and not k.startswith("loss.") and k not in REPEATS
        )
    )


def paired_loss_tests(runs: list[Run]) -> list[dict[str, Any]]:
    """BCE vs CE test AUROC (CE - BCE) at equal settings, paired by seed and fold.

    Within a cell (the settings without the loss group) the ``loss=bce`` and ``loss=ce`` runs
    of each (seed, fold) form a pair. A cell where several runs of one head share a seed and
    fold (e.g. a swept ``loss.pos_weight``) is not paired, and says so. The pooled row averages
    each (seed, fold)'s differences over the cells, then tests those means.
    """
    plain = [r for r in runs if r.config.get("loss") in ("bce", "ce")]
    cols = [c for c in columns([r.record for r in plain]) if c != "loss" and c[:5] != "loss."]
    cells: dict[tuple, dict[tuple, dict[str, list[Run]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in plain:
        cells[_cell(r)][(r.seed, str(r.fold))][r.config["loss"]].append(r)
    results, by_repeat = [], defaultdict(list)
    for slots in cells.values():
        first = next(r for slot in slots.values() for group in slot.values() for r in group)
        setting = {c: value(first.record, c) for c in cols}
        paired = {k: s for k, s in slots.items() if s["bce"] and s["ce"]}
        if not paired:
            continue
        if any(len(s["bce"]) > 1 or len(s["ce"]) > 1 for s in paired.values()):
            note = "not paired: several runs of one head share a seed and fold"
            results.append({"setting": setting, "n": 0, "verdict": note})
            continue
        diffs = {k: s["ce"][0].test("auroc") - s["bce"][0].test("auroc") for k, s in paired.items()}
        for k, d in diffs.items():
            by_repeat[k].append(d)
        results.append(_test_row(setting, list(diffs.values())))
    results.sort(key=lambda t: [sort_key(t["setting"][c]) for c in cols])
    tested = [t for t in results if t["n"]]
    if len(tested) > 1:
        means = [float(np.mean(v)) for v in by_repeat.values()]
        row = _test_row({"all settings pooled": ""}, means)
        row["pairs"] = f"{sum(t['n'] for t in tested)} pairs from {len(means)} seed(s)"
        results.append(row)
    return results


def _test_row(setting: dict[str, Any], diffs: list[float]) -> dict[str, Any]:
    p = sign_flip_test(diffs)
    n = len(diffs)
    if smallest_p(n) > 0.05:
        verdict = f"undecidable with {n} seed(s): smallest possible p is {smallest_p(n):.2f}"
    elif p < 0.05:
        verdict = "larger than seed noise (p < 0.05)"
    else:
        verdict = "within seed noise"
    mean, std = mean_std(diffs)
    return {
        "setting": setting,
        "n": n,
        "pairs": f"{n} pair(s)",
        "mean_diff": mean,
        "std_diff": std,
        "p": p,
        "verdict": verdict,
    }
