"""Operating points: the decision threshold, chosen by a rule on a labeled sample, and how sure
it is.

A classifier's ranking (AUROC) usually survives a move to new data; its threshold often does
not. So the checkpoint is chosen on the patient-grouped carve-out (``val/auroc``), and the
threshold on a named *source*: ``carveout`` (the same split), ``folder`` (the layout's ``val/``
folder), ``auto`` (the folder when there is one) or a path to any labeled folder
(``NORMAL/``, ``PNEUMONIA/``). Rules:

- ``youden``: the threshold maximising sensitivity + specificity - 1;
- ``sens@0.95``: the highest threshold that keeps sensitivity >= 0.95;
- ``spec@0.90``: the lowest threshold that keeps specificity >= 0.90;
- a number in [0, 1]: that threshold (no data needed).

Decisions follow ``xray_loss.metrics.decide`` (``P >= threshold``). With a small sample a
threshold is a guess, and the sensitivity and specificity read off the sample it was tuned on
flatter it: :func:`operating_point` re-chooses the threshold on each bootstrap resample (of
patients, when they are known) and reports optimism-corrected sensitivity and specificity with
95% intervals whose coverage was measured by simulation, the threshold's own interval, and a
warning.
``python -m xray_loss.eval recalibrate=FOLDER`` writes one beside a checkpoint
(:func:`sidecar_path`), bound to the weights it was chosen for
(``xray_loss.inference.weights_digest``); eval and predict use it when present and refuse it
for any other weights (a checkpoint overwritten
since, e.g. ``last.ckpt`` by ``resume=true``, or the file copied beside another checkpoint).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import binary_roc

from xray_loss.errors import UserError
from xray_loss.metrics import youden_threshold

SOURCES = ("carveout", "folder", "auto")
FEW = 20  # fewer images of a class than this: the threshold is a guess, say so
_TARGET = re.compile(r"^(sens|spec)@(0(\.\d+)?|1(\.0+)?)$")


class RuleError(UserError, ValueError):
    """A threshold rule that is not one of the documented forms."""


def probability(value: Any) -> float | None:
    """``value`` as a fixed threshold: a number in [0, 1], else None. The one check of a
    threshold number, from the command line or from a file: a bool is no number (JSON's
    ``true`` would read as 1.0, calling every image normal), nor is NaN."""
    if isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if 0.0 <= number <= 1.0 else None


def parse_rule(rule: Any) -> tuple[str, float | None]:
    """``("youden", None)``, ``("sens", 0.95)``, ``("spec", 0.9)`` or ``("fixed", 0.3)``."""
    text = str(rule).strip()
    if text == "youden":
        return "youden", None
    match = _TARGET.match(text)
    if match:
        return match.group(1), float(match.group(2))
    value = probability(rule)
    if value is None:
        raise RuleError(
            f"threshold rule {rule!r} is not valid: use a probability in [0, 1], youden, "
            f"sens@0.95 (a target sensitivity) or spec@0.90 (a target specificity)."
        )
    return "fixed", value


def choose(probs: torch.Tensor, labels: torch.Tensor, rule: Any) -> float:
    """The threshold ``rule`` picks on this labeled sample."""
    kind, target = parse_rule(rule)
    if kind == "fixed":
        return float(target)
    labels = labels.long()
    if labels.numel() == 0 or labels.min() == labels.max():
        raise RuleError(
            f"threshold rule {rule} needs both classes in its sample; it holds "
            f"{int(labels.numel())} image(s) of one class."
        )
    if kind == "youden":
        return youden_threshold(probs, labels)
    fpr, tpr, thresholds = binary_roc(probs.float(), labels)  # thresholds high to low, p >= t
    if kind == "sens":  # the first (highest) threshold that reaches the sensitivity
        index = int(torch.nonzero(tpr[1:] >= target - 1e-12)[0]) + 1
        return float(thresholds[index])
    ok = torch.nonzero(fpr[1:] <= 1 - target + 1e-12).flatten() + 1
    if len(ok):  # the lowest threshold that keeps the specificity
        return float(thresholds[ok[-1]])
    # not even the highest score: a threshold just above it calls nothing pneumonia
    return float(np.nextafter(np.float32(probs.max()), np.float32(np.inf)))


def operating_point(
    probs: torch.Tensor,
    labels: torch.Tensor,
    rule: Any,
    source: str,
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """The threshold ``rule`` picks on this sample, and what it gives, with 95% intervals.

    A threshold tuned on a sample flatters itself there: the sensitivity and specificity read
    off the sample it was chosen on (``apparent``) overstate what it gives on new images, the
    more so the smaller the sample. So each bootstrap resample re-chooses the threshold, and
    the gap between that threshold's sensitivity (specificity) on the whole sample and on the
    resample it was chosen on measures the optimism (Harrell's optimism bootstrap):

    - ``sensitivity``/``specificity``: [estimate, low, high] for the chosen threshold on the
      population the sample stands for. The estimate is the apparent value plus the mean gap
      (``"estimate": "optimism-corrected"``); the interval puts the gap's 2.5% and 97.5%
      points around it, widened where needed to the Wilson score interval of the estimate (a
      bootstrap cannot see binomial noise the sample does not show, e.g. at 8 of 8). A fixed
      rule is not tuned: its estimate is the apparent value (``"estimate": "in-sample"``), and
      the same interval applies (the gaps are then resampling noise only).
    - ``threshold_ci``: the 2.5% and 97.5% points of the re-chosen thresholds (None for a
      fixed rule).
    - ``groups``: one patient id per image, where known. The bootstrap then draws patients
      with all their images (``"resampled": "patients"``), and the Wilson interval counts
      patients, not images: images of one patient are not independent evidence.
    - ``warning``: the sample is too small to trust, and what its intervals were measured to
      be worth at that size.

    How well the intervals cover, measured by simulation: docs/data.md ("The operating point").
    """
    probs, labels = probs.float().cpu(), labels.long().cpu()
    kind, target = parse_rule(rule)
    value = choose(probs, labels, rule)
    n_pos, n = int(labels.sum()), int(labels.numel())
    point: dict[str, Any] = {
        "value": value,
        "rule": str(rule),
        "source": str(source),
        "n": n,
        "n_normal": n - n_pos,
        "n_pneumonia": n_pos,
    }
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups names {len(groups)} patient(s) for {n} image(s): one per image")
    if n == 0:
        return {**point, "warning": "no labeled images: the threshold is the rule's number"}
    p = probs.numpy().astype(np.float32)
    y = labels.numpy().astype(np.int64)
    if groups is None:
        unit = np.arange(n)
    else:
        unit = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
        point["n_patients"] = int(unit.max()) + 1
    point["resampled"] = "images" if groups is None else "patients"
    at = p >= np.float32(value)  # decide(): P >= threshold is pneumonia
    apparent = np.array([at[y == 1].mean(), (~at[y == 0]).mean()]) if 0 < n_pos < n else None
    rng = np.random.default_rng(seed)
    chosen, gaps = [], []
    chunk = max(1, _CELLS // n)  # resamples at a time: bounded memory
    for start in range(0, n_boot if apparent is not None else 0, chunk):
        counts = _resample_counts(rng, min(chunk, n_boot - start), unit)
        if kind == "fixed":
            t = np.full(len(counts), np.float32(value))
            ok = ((counts * y).sum(1) > 0) & ((counts * (1 - y)).sum(1) > 0)
        else:
            t, ok = _choose_many(p, y, counts, kind, target)
        t, counts = t[ok], counts[ok]  # a resample of one class has no threshold: skipped
        pred = p[None, :] >= t[:, None]
        whole = np.stack([pred[:, y == 1].mean(1), (~pred[:, y == 0]).mean(1)], 1)
        w_pos, w_neg = counts * (y == 1), counts * (y == 0)
        drawn = np.stack(
            [(w_pos * pred).sum(1) / w_pos.sum(1), (w_neg * ~pred).sum(1) / w_neg.sum(1)], 1
        )
        chosen.append(t)
        gaps.append(whole - drawn)
    if sum(len(t) for t in chosen):
        gap = np.concatenate(gaps)
        if kind != "fixed":
            point["threshold_ci"] = _percentiles(np.concatenate(chosen).astype(np.float64))
            estimate = np.clip(apparent + gap.mean(0), 0.0, 1.0)
        else:
            point["threshold_ci"] = None
            estimate = apparent
        # patients of each class, or images: the units of evidence the Wilson interval counts
        sizes = [len(np.unique(unit[y == c])) for c in (1, 0)]
        for j, name in enumerate(("sensitivity", "specificity")):
            low, high = np.percentile(gap[:, j], [2.5, 97.5]) - gap[:, j].mean()
            w_low, w_high = _wilson(float(estimate[j]), sizes[j])
            point[name] = [
                float(estimate[j]),
                float(np.clip(min(estimate[j] + low, w_low), 0.0, 1.0)),
                float(np.clip(max(estimate[j] + high, w_high), 0.0, 1.0)),
            ]
        point["estimate"] = "in-sample" if kind == "fixed" else "optimism-corrected"
        point["apparent"] = {"sensitivity": float(apparent[0]), "specificity": float(apparent[1])}
    if min(n_pos, n - n_pos) < FEW:
        point["warning"] = (
            f"{n - n_pos} normal and {n_pos} pneumonia image(s): with fewer than {FEW} of a "
            f"class the threshold is a guess and its intervals are wide (in simulation at "
            f"8 + 8 images, AUROC 0.80, the 95% intervals covered the true sensitivity "
            f"{SMALL_SAMPLE_COVERAGE[0]:.0%} and specificity {SMALL_SAMPLE_COVERAGE[1]:.0%} "
            f"of the time and were about {SMALL_SAMPLE_WIDTH:.1f} wide); label more images."
        )
    return point


# measured: AUROC 0.80, rule youden, 8 + 8 images, n_boot 1000, 1000 samples (the docstring)
SMALL_SAMPLE_COVERAGE = (0.95, 0.98)
SMALL_SAMPLE_WIDTH = 0.5
_CELLS = 1 << 19  # resample x image cells per chunk of the bootstrap (bounds its memory)


def _resample_counts(rng: np.random.Generator, n_boot: int, unit: np.ndarray) -> np.ndarray:
    """(n_boot, n): how often each image is drawn, when units (images, or patients with all
    their images; ``unit`` numbers each image's) are drawn with replacement, as many as there
    are."""
    n_units = int(unit.max()) + 1
    drawn = rng.integers(0, n_units, (n_boot, n_units))
    rows = np.repeat(np.arange(n_boot), n_units)
    per_unit = np.bincount(rows * n_units + drawn.ravel(), minlength=n_boot * n_units)
    return per_unit.reshape(n_boot, n_units)[:, unit]


def _choose_many(
    p: np.ndarray, y: np.ndarray, counts: np.ndarray, kind: str, target: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`choose` on many resamples at once (``counts``: (B, n) draws of each image).

    Returns float32 thresholds (B,) and whether each resample holds both classes. Candidates
    are the distinct scores drawn, as in ``binary_roc``: the draws of each distinct score are
    summed over one descending sort, and each resample's ROC is a cumulative sum of them.
    """
    order = np.argsort(-p, kind="stable")
    ps, ys, w = p[order], y[order], counts[:, order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    scores = ps[starts]  # distinct, high to low
    pos = np.add.reduceat(w * ys, starts, axis=1)
    neg = np.add.reduceat(w * (1 - ys), starts, axis=1)
    tp, fp = np.cumsum(pos, 1), np.cumsum(neg, 1)  # p >= score
    n_pos, n_neg = tp[:, -1:], fp[:, -1:]
    drawn = (pos + neg) > 0
    ok = (n_pos[:, 0] > 0) & (n_neg[:, 0] > 0)
    if kind == "youden":  # tpr - fpr, times n_pos * n_neg: exact integers, first (highest) max
        j = np.where(drawn, tp * n_neg - fp * n_pos, np.iinfo(np.int64).min)
        return scores[np.argmax(j, 1)], ok
    if kind == "sens":  # the highest threshold that reaches the sensitivity
        hit = drawn & (tp >= (target - 1e-12) * n_pos)
        return scores[np.argmax(hit, 1)], ok
    hit = drawn & (fp <= (1 - target + 1e-12) * n_neg)  # the lowest that keeps the specificity
    last = hit.shape[1] - 1 - np.argmax(hit[:, ::-1], 1)
    above = np.nextafter(scores[np.argmax(drawn, 1)], np.float32(np.inf))  # none: call none
    return np.where(hit.any(1), scores[last], above).astype(np.float32), ok


def _percentiles(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def _wilson(rate: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion ``rate`` of ``n``."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def sidecar_path(ckpt_path: str | Path) -> Path:
    """Where a recalibrated operating point of a checkpoint lives: beside it."""
    path = Path(ckpt_path)
    return path.with_name(f"{path.name}.operating_point.json")


def describe(point: dict[str, Any]) -> str:
    """One line: ``0.412 (youden on folder, 16 images; 95% CI 0.21-0.73)``."""
    ci = point.get("threshold_ci")
    interval = f"; 95% CI {ci[0]:.3f}-{ci[1]:.3f}" if ci else ""
    n = point.get("n")
    images = f", {n} images" if n else ""
    return f"{point['value']:.3f} ({point['rule']} on {point['source']}{images}{interval})"
