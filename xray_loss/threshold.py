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
threshold is a guess: :func:`operating_point` adds bootstrap intervals of the threshold
(re-chosen on each resample) and of the sensitivity and specificity at it, and a warning.
``python -m xray_loss.eval recalibrate=FOLDER`` writes one beside a checkpoint
(:func:`sidecar_path`); eval and predict use it when present.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import binary_roc

from xray_loss.metrics import binary_metrics, youden_threshold

SOURCES = ("carveout", "folder", "auto")
FEW = 20  # fewer images of a class than this: the threshold is a guess, say so
_TARGET = re.compile(r"^(sens|spec)@(0(\.\d+)?|1(\.0+)?)$")


class RuleError(ValueError):
    """A threshold rule that is not one of the documented forms."""


def parse_rule(rule: Any) -> tuple[str, float | None]:
    """``("youden", None)``, ``("sens", 0.95)``, ``("spec", 0.9)`` or ``("fixed", 0.3)``."""
    text = str(rule).strip()
    if text == "youden":
        return "youden", None
    match = _TARGET.match(text)
    if match:
        return match.group(1), float(match.group(2))
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
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
) -> dict[str, Any]:
    """The threshold ``rule`` picks on this sample, with 95% bootstrap intervals.

    ``threshold_ci``: the threshold re-chosen on each resample of the sample (a fixed rule has
    none); ``sensitivity``/``specificity``: [estimate, low, high] at the chosen threshold over the
    resamples. ``warning`` says when the sample is too small to trust.
    """
    probs, labels = probs.float().cpu(), labels.long().cpu()
    kind, _ = parse_rule(rule)
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
    if n == 0:
        return {**point, "warning": "no labeled images: the threshold is the rule's number"}
    at = binary_metrics(probs, labels, value)
    generator = torch.Generator().manual_seed(seed)
    chosen, sens, spec = [], [], []
    for _ in range(n_boot):
        idx = torch.randint(0, n, (n,), generator=generator)
        p, y = probs[idx], labels[idx]
        if y.min() == y.max():
            continue  # one class drawn: no threshold, no sensitivity/specificity pair
        chosen.append(choose(p, y, rule) if kind != "fixed" else value)
        m = binary_metrics(p, y, value)
        sens.append(float(m["sensitivity"]))
        spec.append(float(m["specificity"]))

    def interval(values: list[float]) -> list[float]:
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]

    if chosen:
        point["threshold_ci"] = interval(chosen) if kind != "fixed" else None
        point["sensitivity"] = [float(at["sensitivity"]), *interval(sens)]
        point["specificity"] = [float(at["specificity"]), *interval(spec)]
    if min(n_pos, n - n_pos) < FEW:
        point["warning"] = (
            f"{n - n_pos} normal and {n_pos} pneumonia image(s): with fewer than {FEW} of a "
            f"class the threshold is a guess; read its interval, and label more images."
        )
    return point


def sidecar_path(ckpt_path: str | Path) -> Path:
    """Where a recalibrated operating point of a checkpoint lives: beside it."""
    path = Path(ckpt_path)
    return path.with_name(f"{path.name}.operating_point.json")


def read_sidecar(ckpt_path: str | Path) -> dict[str, Any] | None:
    path = sidecar_path(ckpt_path)
    return json.loads(path.read_text()) if path.exists() else None


def describe(point: dict[str, Any]) -> str:
    """One line: ``0.412 (youden on folder, 16 images; 95% CI 0.21-0.73)``."""
    ci = point.get("threshold_ci")
    interval = f"; 95% CI {ci[0]:.3f}-{ci[1]:.3f}" if ci else ""
    n = point.get("n")
    images = f", {n} images" if n else ""
    return f"{point['value']:.3f} ({point['rule']} on {point['source']}{images}{interval})"
